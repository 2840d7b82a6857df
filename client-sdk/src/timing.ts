/**
 * Full-jitter exponential backoff: attempt n waits a random time in [0, min(cap, base * 2^n)),
 * so clients dropped together by a deploy don't come back together.
 */
export class Backoff {
  #attempt = 0;
  constructor(
    private readonly baseMs = 500,
    private readonly capMs = 20_000,
    private readonly random: () => number = Math.random,
  ) {}

  /** The wait before the next attempt; each call widens the window until the cap. */
  next(): number {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 30);
    return Math.floor(this.random() * ceiling);
  }

  reset(): void {
    this.#attempt = 0;
  }
}

/**
 * The server clock's offset from ours, from request/answer pairs that carry the server's time:
 * offset = serverTime - (sent + received) / 2, keeping the sample of the shortest round trip
 * among the recent ones (the one whose midpoint guess is tightest), as NTP clients do.
 */
export class ServerClock {
  #samples: Array<{ rttMs: number; offsetMs: number }> = [];
  constructor(private readonly now: () => number) {}

  /** Records one round trip: our clock at send and at receipt, and the server time it answered. */
  sample(sentAt: number, receivedAt: number, serverTime: string): void {
    const server = Date.parse(serverTime);
    if (!Number.isFinite(server) || receivedAt < sentAt) return;
    this.#samples.push({ rttMs: receivedAt - sentAt, offsetMs: server - (sentAt + receivedAt) / 2 });
    if (this.#samples.length > 8) this.#samples.shift();
  }

  /** Server time minus ours, in ms; 0 before any sample. */
  get offsetMs(): number {
    let best: { rttMs: number; offsetMs: number } | undefined;
    for (const s of this.#samples) if (!best || s.rttMs < best.rttMs) best = s;
    return best?.offsetMs ?? 0;
  }

  /** The server's time now, as a ms timestamp. */
  serverNow(): number {
    return this.now() + this.offsetMs;
  }
}
