/** HTTP responses not yet finished; `drained()` resolves when none is left. */
export class InFlight {
  readonly #open = new Set<object>();
  #waiters: Array<() => void> = [];

  get size(): number {
    return this.#open.size;
  }

  add(res: { once(event: 'close', fn: () => void): unknown }): void {
    this.#open.add(res);
    res.once('close', () => {
      this.#open.delete(res);
      if (this.#open.size === 0) for (const wake of this.#waiters.splice(0)) wake();
    });
  }

  drained(): Promise<void> {
    return this.#open.size === 0 ? Promise.resolve() : new Promise((resolve) => this.#waiters.push(resolve));
  }
}
