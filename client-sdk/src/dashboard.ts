import { Emitter } from './emitter.js';
import type { ChatView, ChatWithMeter, MeterSnapshot } from './protocol.js';
import { ChatmeterError } from './errors.js';
import { chatAsOf } from './session.js';

/** The wait before a background reload refused for a passing reason is tried again. */
const RELOAD_RETRY_MS = 1000;

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
  #queued: Promise<void> | null = null;
  #loaded = false;
  #stopped = false;
  #retry: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly fetchList: () => Promise<ChatWithMeter[]>) {
    super();
  }

  /** True once a list was read. */
  get loaded(): boolean {
    return this.#loaded;
  }

  /**
   * @internal Reads the list again; rejects when the read fails. Asked for while a read runs, it
   * runs once more after it (that read may predate what prompted this one), however often asked.
   */
  refresh(): Promise<void> {
    if (this.#refreshing) {
      this.#queued ??= this.#refreshing.catch(() => undefined).then(() => {
        this.#queued = null;
        return this.refresh();
      });
      return this.#queued;
    }
    this.#refreshing = (async () => {
      try {
        const pushesBefore = this.#pushes;
        this.load(await this.fetchList(), pushesBefore);
      } finally {
        this.#refreshing = null;
      }
    })();
    return this.#refreshing;
  }

  /**
   * @internal A reload in the background (after a reconnect, or a push of an unknown chat): a read
   * refused for a passing reason (rate limited, timeout) is tried again a second later.
   */
  reload(): void {
    if (this.#stopped) return;
    clearTimeout(this.#retry);
    this.refresh().catch((err: unknown) => {
      if (this.#stopped || (err instanceof ChatmeterError && (err.code === 'disconnected' || err.code === 'forbidden'))) return;
      this.#retry = setTimeout(() => this.reload(), RELOAD_RETRY_MS);
    });
  }

  /** @internal No more reloads (the client closed). */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#retry);
  }

  /** @internal The whole list, as read when `pushes` pushes had been seen. */
  load(list: ChatWithMeter[], pushes = this.#pushes): void {
    this.#loaded = true;
    const listed = new Set<string>();
    for (const { chat, meter } of list) {
      if (this.#gone.has(chat.id)) continue;
      listed.add(chat.id);
      const prev = this.chats.get(chat.id);
      const newer = prev?.meter && (!meter || prev.meter.seq > meter.seq) ? prev.meter : meter;
      // a list read before a push is older than the push's meter: the chat as that meter shows it
      const current = newer && newer !== meter ? chatAsOf(chat, newer) : chat;
      if (prev && prev.meter === newer && sameChat(prev.chat, current)) continue;
      this.#set(chat.id, { chat: current, meter: newer });
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
    if (!entry) return this.reload();
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
