/**
 * The one path for everything that changes or reads a chat's meter, shared by
 * socket handlers and HTTP routes: a chat started over HTTP or over a socket goes
 * through the same code.
 */
import type { ChatView, MeterSnapshot, TimeRecordView } from '../../client-sdk/src/protocol.js';
import type { Accounts } from '../accounts.js';
import type { Clock } from '../clock.js';
import { DomainError } from '../errors.js';
import type { PresenceStore } from './presence.js';
import type { TimeRecords } from './records.js';
import type { Command } from './rules.js';
import type { SettlementService } from './settlement.js';
import type { Ticker } from './ticker.js';

/** A chat with its live meter. */
export interface ChatWithMeter {
  chat: ChatView;
  meter: MeterSnapshot;
}

/** Commands, presence changes and reads of meters. */
export class MeterService {
  constructor(
    private readonly accounts: Accounts,
    private readonly engine: SettlementService,
    private readonly records: TimeRecords,
    private readonly presence: PresenceStore,
    private readonly ticker: Ticker,
    private readonly clock: Clock,
  ) {}

  /**
   * Applies a state command (initializing time tracking first, rule 7), settles
   * the chat up to now, publishes the change and returns the chat and its meter.
   * @throws NotFoundError, ConflictError
   */
  async command(chatId: string, cmd: Command, allowed?: (chat: ChatView) => void): Promise<ChatWithMeter> {
    const chat = await this.open(chatId, allowed);
    const outcome = await this.ticker.settleCommand(chatId, cmd);
    if (!outcome) throw new DomainError('internal', `no outcome for chat ${chatId}`);
    if (!outcome.ok) throw outcome.error;
    return { chat: { ...chat, ...outcome.chat }, meter: outcome.meter };
  }

  /**
   * The chat, with its time record created on first use (rule 7), in one read when
   * the record exists. `allowed` throws to refuse the caller before anything is written.
   * @throws NotFoundError, and whatever `allowed` throws
   */
  async open(chatId: string, allowed?: (chat: ChatView) => void): Promise<ChatView> {
    const { chat, tracked } = await this.accounts.getChatTracking(chatId);
    allowed?.(chat);
    if (!tracked) await this.engine.createRecord(chat.userId, chat.advisorId, chatId);
    return chat;
  }

  /**
   * The chat as it stands after `meter` was taken: `chat` when the meter agrees with
   * its status (no read), else read again (the chat started or ended meanwhile).
   */
  async current(chat: ChatView, meter: MeterSnapshot | null): Promise<ChatView> {
    if (!meter) return chat;
    const status = meter.state === 'pending' ? 'pending' : meter.state === 'ended' ? 'ended' : 'active';
    return status === chat.status ? chat : this.accounts.getChat(chat.id);
  }

  /**
   * Settles a chat whose presence changed (joined, came back, left) so the meter
   * stops or starts at that moment and its new state goes out at once.
   */
  async presenceChanged(chatId: string): Promise<MeterSnapshot | null> {
    // if this settlement fails, the next tick settles the chat with the presence of then, however idle it was
    const retry = () => {
      if (this.ticker.tracks(chatId)) this.ticker.wake([chatId]);
    };
    try {
      const outcome = await this.ticker.settleSoon(chatId);
      if (outcome?.ok) return outcome.meter;
    } catch (err) {
      retry();
      throw err;
    }
    retry();
    return null;
  }

  /**
   * Call before a join or heartbeat that may start a new presence span: the engine
   * sees only the latest span, so the seconds of a lapsed one are settled first.
   */
  async settleLapsedPresence(chatId: string): Promise<void> {
    if (!this.ticker.tracks(chatId)) return;
    const now = this.clock.now();
    const span = await this.presence.span(chatId, now);
    if (span && span.until <= now) await this.ticker.settleSoon(chatId);
  }

  /**
   * After a balance change not caused by a tick (top-up, refund): new snapshots of the
   * user's metered chats, so paused and away meters show the new balance too.
   */
  async balanceChanged(userId: string): Promise<void> {
    const chatIds = await this.accounts.activeChatIds(userId);
    if (chatIds.length) await this.ticker.settleNow(chatIds.map((chatId) => ({ chatId, refresh: true })));
  }

  /** The advisor's pending and active chats with their meters (null before a chat's time record exists), for a dashboard. */
  async advisorChats(advisorId: string): Promise<Array<{ chat: ChatView; meter: MeterSnapshot | null }>> {
    const chats = await this.accounts.openChatsOfAdvisor(advisorId);
    const now = this.clock.now();
    const spans = await this.presence.spans(chats.map((c) => c.id), now);
    // one read for all of them (the engine gathers the meter reads of one turn)
    const meters = await Promise.all(chats.map((c) => this.engine.readMeter(c.id, spans.get(c.id) ?? null, now)));
    return chats.map((chat, i) => ({ chat, meter: meters[i]! }));
  }

  /** The chat's meter without settling; null before its time record exists. */
  async meter(chatId: string): Promise<MeterSnapshot | null> {
    const now = this.clock.now();
    return this.engine.readMeter(chatId, await this.presence.span(chatId, now), now);
  }

  /** The chat, its record and its meter (record and meter null before the first join). */
  async chatDetails(chatId: string): Promise<{ chat: ChatView; record: TimeRecordView | null; meter: MeterSnapshot | null }> {
    const chat = await this.accounts.getChat(chatId);
    const [record, meter] = await Promise.all([this.records.ofChat(chatId), this.meter(chatId)]);
    return { chat, record, meter };
  }
}
