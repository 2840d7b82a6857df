import { Emitter } from './emitter.js';
import type { ChatView, ChatWithMeter, MeterSnapshot } from './protocol.js';
import { chatAsOf } from './session.js';

/** A chat on an advisor's dashboard: the chat, and its latest meter (null before its time record exists). */
export interface DashboardEntry {
  chat: ChatView;
  meter: MeterSnapshot | null;
}

type DashboardEvents = {
  /** A chat appeared or changed (`entry`), or left the dashboard (`entry` null). */
  change: (chatId: string, entry: DashboardEntry | null) => void;
};

/**
 * An advisor's pending and active chats, kept current by pushes: `chat:created` adds one,
 * meters update it, an end removes it; a reconnect reloads the whole list.
 */
export class Dashboard extends Emitter<DashboardEvents> {
  /** chatId → entry, for every pending and active chat of the advisor. */
  readonly chats = new Map<string, DashboardEntry>();
  /** Ended chats never come back, even in a list read before they ended. */
  readonly #gone = new Set<string>();
  /** Pushes seen: a list read before a push must not undo it. */
  #pushes = 0;
  readonly #pushedAt = new Map<string, number>();
  #refreshing: Promise<void> | null = null;
  #again = false;

  constructor(private readonly fetchList: () => Promise<ChatWithMeter[]>) {
    super();
  }

  /** @internal Reloads the list; a reload asked for while one runs runs once after it. */
  refresh(): Promise<void> {
    if (this.#refreshing) {
      this.#again = true;
      return this.#refreshing;
    }
    const pushesBefore = this.#pushes;
    this.#refreshing = this.fetchList()
      .then((list) => this.load(list, pushesBefore))
      .catch(() => undefined) // the next reconnect or change reloads it
      .finally(() => {
        this.#refreshing = null;
        if (this.#again) {
          this.#again = false;
          void this.refresh();
        }
      });
    return this.#refreshing;
  }

  /** @internal The whole list, as read when `pushes` pushes had been seen. */
  load(list: ChatWithMeter[], pushes = this.#pushes): void {
    const listed = new Set<string>();
    for (const { chat, meter } of list) {
      if (this.#gone.has(chat.id)) continue;
      listed.add(chat.id);
      const prev = this.chats.get(chat.id);
      const newer = prev?.meter && (!meter || prev.meter.seq > meter.seq) ? prev.meter : meter;
      if (prev && prev.meter === newer && sameChat(prev.chat, chat)) continue;
      this.#set(chat.id, { chat, meter: newer });
    }
    for (const chatId of [...this.chats.keys()]) {
      if (!listed.has(chatId) && (this.#pushedAt.get(chatId) ?? -1) < pushes) this.#remove(chatId);
    }
  }

  /** @internal `chat:created`. */
  created(chat: ChatView): void {
    if (this.#gone.has(chat.id) || this.chats.has(chat.id)) return;
    this.#pushedAt.set(chat.id, ++this.#pushes);
    this.#set(chat.id, { chat, meter: null });
  }

  /** @internal A meter of one of the advisor's chats. */
  meter(meter: MeterSnapshot): void {
    if (this.#gone.has(meter.chatId)) return;
    if (meter.state === 'ended') return this.ended(meter.chatId);
    const entry = this.chats.get(meter.chatId);
    // a chat this dashboard hasn't heard of (created while reconnecting): read the list again
    if (!entry) return void this.refresh();
    if (entry.meter && meter.seq <= entry.meter.seq) return;
    this.#pushedAt.set(meter.chatId, ++this.#pushes);
    this.#set(meter.chatId, { chat: chatAsOf(entry.chat, meter), meter });
  }

  /** @internal The chat ended: it leaves the dashboard. */
  ended(chatId: string): void {
    this.#gone.add(chatId);
    this.#pushedAt.delete(chatId);
    this.#remove(chatId);
  }

  #set(chatId: string, entry: DashboardEntry): void {
    this.chats.set(chatId, entry);
    this.emit('change', chatId, entry);
  }

  #remove(chatId: string): void {
    if (this.chats.delete(chatId)) this.emit('change', chatId, null);
  }
}

function sameChat(a: ChatView, b: ChatView): boolean {
  return a.status === b.status && a.startedAt === b.startedAt && a.endedAt === b.endedAt;
}
