import { Advisor } from './advisor.js';
import { Chat } from './chat.js';
import { ClusterNode } from './cluster-node.js';
import { ClusterSetting } from './cluster-setting.js';
import { ConversationTimeRecord } from './conversation-time-record.js';
import { FreeTimeAllowance } from './free-time-allowance.js';
import { LedgerEntry } from './ledger-entry.js';
import { SettlementShard } from './settlement-shard.js';
import { User } from './user.js';
import { WebhookEvent } from './webhook-event.js';

export { Advisor, Chat, ClusterNode, ClusterSetting, ConversationTimeRecord, FreeTimeAllowance, LedgerEntry, SettlementShard, User, WebhookEvent };

/** Every entity, listed explicitly so the same data source works from `.ts` and built `.js`. */
export const entities = [User, Advisor, Chat, FreeTimeAllowance, ConversationTimeRecord, LedgerEntry, ClusterSetting, ClusterNode, SettlementShard, WebhookEvent];
