/** A minimal typed event emitter whose `on` returns the function that removes the listener. */
export class Emitter<Events extends Record<string, (...args: never[]) => void>> {
  #listeners = new Map<keyof Events, Set<Events[keyof Events]>>();

  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => void set.delete(listener);
  }

  /** Calls every listener of `event`; a listener that throws is reported, not allowed to stop the others. */
  protected emit<E extends keyof Events>(event: E, ...args: Parameters<Events[E]>): void {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        (listener as (...a: Parameters<Events[E]>) => void)(...args);
      } catch (err) {
        // an integrator's bug must not break the SDK's own bookkeeping; surface it like an unhandled error
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
