/**
 * {@link FerryState}: the current value of every key of a topic, kept up to
 * date. It subscribes `from: 'snapshot'`: the gateway sends the latest
 * record of every key, then `snapshot_end` (`ready` resolves), then live
 * records. A record whose value is `null` (a tombstone) deletes its key.
 *
 * A reconnect after `snapshot_end` resumes from the positions the snapshot
 * ended at (the subscription's, moved on by live records): no snapshot
 * again, nothing missed. A connection lost before `snapshot_end` starts
 * over: the store is cleared (`clear` event) and the snapshot comes again.
 *
 * Not part of the browser bundles (`dist/browser/`): import it from the
 * npm package.
 */

import { toBase64 } from './base64.js';
import type { FerryClient } from './client.js';
import { Emitter } from './emitter.js';
import type { FerryError } from './errors.js';
import type { FerryMessage } from './frames.js';
import type { Subscription } from './subscription.js';

/** Options of {@link createState}. */
export interface StateOptions {
  /** At most one update per key per this many ms, always the newest (capability `throttle`). */
  throttleMs?: number;
  /** Gateway-side filter, in its wire form; applies to the snapshot and the live records. */
  filter?: unknown;
  /** Called when the gateway refuses or ends the subscription; default: the client's `error` event. */
  onError?: (error: FerryError) => void;
}

/** Events of {@link FerryState}, with their listener arguments. */
export interface FerryStateEvents<T> {
  /** A key got a value (from the snapshot or a live record). */
  set: [key: string, value: T | Uint8Array, message: FerryMessage<T>];
  /** A key was deleted (a record with value `null`: a tombstone). */
  delete: [key: string, message: FerryMessage<T>];
  /** Every key was dropped: a connection was lost before `snapshot_end`, and the snapshot comes again. */
  clear: [];
}

/**
 * The store key of a record: its key as text, or the base64 of a key that
 * is not UTF-8 (as the gateway's `key_b64`); `undefined` for a record
 * without a key.
 */
export function stateKey(key: FerryMessage['key']): string | undefined {
  if (key === null) return undefined;
  return typeof key === 'string' ? key : toBase64(key);
}

/** A keyed, live view of a topic: Map-like reads and change events. */
export class FerryState<T = unknown> extends Emitter<FerryStateEvents<T>> implements Iterable<[string, T | Uint8Array]> {
  /**
   * Resolves at the first `snapshot_end` (the store holds the whole topic);
   * rejects as the subscription's `ready` does (refused, `unsupported`, `timeout`).
   */
  readonly ready: Promise<void>;
  /** The underlying subscription (positions, unsubscribe). */
  readonly subscription: Subscription;
  private readonly map = new Map<string, T | Uint8Array>();
  /** Whether the snapshot under way is complete. */
  private synced = false;

  /** Use {@link createState}. */
  constructor(client: FerryClient, topic: string, options: StateOptions = {}) {
    super();
    let resolve!: () => void;
    let reject!: (err: FerryError) => void;
    this.ready = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.ready.catch(() => undefined);
    const { throttleMs, filter, onError } = options;
    this.subscription = client.subscribe<T>(topic, (message) => this.apply(message), {
      from: 'snapshot',
      ...(throttleMs === undefined ? {} : { throttleMs }),
      ...(filter === undefined ? {} : { filter }),
      ...(onError === undefined ? {} : { onError }),
      onSnapshot: (starting) => {
        this.synced = !starting;
        if (!starting) return resolve();
        if (this.map.size === 0) return;
        this.map.clear();
        this.emit('clear');
      },
    });
    this.subscription.ready.catch(reject);
  }

  /** Whether the snapshot is complete and live records are being applied. */
  get live(): boolean {
    return this.synced;
  }

  get size(): number {
    return this.map.size;
  }

  get(key: string): T | Uint8Array | undefined {
    return this.map.get(key);
  }

  has(key: string): boolean {
    return this.map.has(key);
  }

  keys(): IterableIterator<string> {
    return this.map.keys();
  }

  values(): IterableIterator<T | Uint8Array> {
    return this.map.values();
  }

  entries(): IterableIterator<[string, T | Uint8Array]> {
    return this.map.entries();
  }

  forEach(fn: (value: T | Uint8Array, key: string) => void): void {
    this.map.forEach((value, key) => fn(value, key));
  }

  [Symbol.iterator](): IterableIterator<[string, T | Uint8Array]> {
    return this.map.entries();
  }

  /** Stops updating (unsubscribes); the contents stay as they are. */
  close(): Promise<void> {
    return this.subscription.unsubscribe();
  }

  /** Applies one record: a value sets its key, `null` deletes it; records without a key are ignored. */
  private apply(message: FerryMessage<T>): void {
    const key = stateKey(message.key);
    if (key === undefined) return;
    if (message.value === null) {
      if (this.map.delete(key)) this.emit('delete', key, message);
      return;
    }
    this.map.set(key, message.value);
    this.emit('set', key, message.value, message);
  }
}

/**
 * The current value of every key of `topic`, kept up to date:
 * ```ts
 * const devices = createState(client, 'devices');
 * await devices.ready;
 * devices.get('sensor-1');
 * devices.on('set', (key, value) => render(key, value));
 * ```
 * Needs a gateway that announces `snapshot` (and `throttle` with
 * `throttleMs`); otherwise `ready` rejects with `unsupported`.
 */
export function createState<T = unknown>(client: FerryClient, topic: string, options: StateOptions = {}): FerryState<T> {
  return new FerryState<T>(client, topic, options);
}
