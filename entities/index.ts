import { Advisor } from './advisor.js';
import { Chat } from './chat.js';
import { ConversationTimeRecord } from './conversation-time-record.js';
import { FreeTimeAllowance } from './free-time-allowance.js';
import { LedgerEntry } from './ledger-entry.js';
import { User } from './user.js';

export { Advisor, Chat, ConversationTimeRecord, FreeTimeAllowance, LedgerEntry, User };

/** Every entity, listed explicitly so the same data source works from `.ts` and built `.js`. */
export const entities = [User, Advisor, Chat, FreeTimeAllowance, ConversationTimeRecord, LedgerEntry];
