/** A tiny typed event emitter; listeners that throw do not break the emitter. */

/**
 * Maps event names to their listener argument tuples. A closed map: an
 * interface without an index signature, so `on('typo')` does not compile.
 */
export type EventMap<E> = { [K in keyof E]: unknown[] };

/** A listener of event `K`. */
export type Listener<E extends EventMap<E>, K extends keyof E> = (...args: E[K]) => void;

/**
 * Calls `fn`, and reports an exception it throws the way a browser reports
 * an exception of an event listener: asynchronously, without unwinding the
 * caller (the client's own bookkeeping must not be cut short by app code).
 */
export function callSafely<A extends unknown[]>(fn: (...args: A) => void, ...args: A): void {
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => {
      throw err;
    }, 0);
  }
}

/** Base class with `on` / `off` / `once` and a protected `emit`. */
export class Emitter<E extends EventMap<E>> {
  private readonly listeners = new Map<keyof E, Set<Listener<E, keyof E>>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(event: K, listener: Listener<E, K>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as Listener<E, keyof E>);
    return () => this.off(event, listener);
  }

  /** Adds a listener that is removed after its first call. */
  once<K extends keyof E>(event: K, listener: Listener<E, K>): () => void {
    const off = this.on(event, (...args) => {
      off();
      listener(...args);
    });
    return off;
  }

  /** Removes a listener. */
  off<K extends keyof E>(event: K, listener: Listener<E, K>): void {
    this.listeners.get(event)?.delete(listener as Listener<E, keyof E>);
  }

  /** Number of listeners of `event`. */
  protected listenerCount(event: keyof E): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  /** Calls every listener of `event` with `args`. */
  protected emit<K extends keyof E>(event: K, ...args: E[K]): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) callSafely(listener, ...args);
  }
}
