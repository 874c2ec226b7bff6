/**
 * The outbox: publishes that are accepted by `publish()` but not yet sent.
 *
 * Publishes wait here while the client is not connected (the "offline
 * queue") and while the gateway's in-flight window
 * (`limits.max_inflight_publishes`) is full. The queue is bounded; what
 * happens to a publish that does not fit is the {@link OverflowPolicy}.
 *
 * With a {@link QueueStorage} adapter, each entry is also written to storage
 * when accepted and deleted when its publish settles (acked or failed), so
 * publishes survive a page reload and are sent by the next client that opens
 * the same storage, with their original `id`.
 */

import { FerryError } from './errors.js';

/** One publish as stored: the encoded frame and what is needed to order and route it. */
export interface QueuedPublish {
  /** The publish's request id, stable across retries and reloads. */
  id: string;
  topic: string;
  /** The encoded `publish` frame, sent as is. */
  frame: string;
  /** Order key: increasing in the order publishes were accepted (ms-based). */
  seq: number;
}

/**
 * Where queued publishes are persisted. Calls are made in order for a given
 * id (`put` before `delete`); an adapter may batch internally.
 */
export interface QueueStorage {
  /** Every stored entry, in any order (the client sorts by `seq`). */
  load(): Promise<QueuedPublish[]>;
  /** Stores (or replaces) one entry. */
  put(entry: QueuedPublish): Promise<void>;
  /** Deletes one entry; deleting a missing id is not an error. */
  delete(id: string): Promise<void>;
}

/**
 * What a full queue does with one more publish:
 * - `'reject-new'` (default): the new publish rejects at once with `queue_full`;
 * - `'drop-oldest'`: the oldest queued publish rejects with `queue_full` and
 *   the new one is queued.
 */
export type OverflowPolicy = 'reject-new' | 'drop-oldest';

/** Options of the offline queue. */
export interface OfflineQueueOptions {
  /** Most publishes waiting to be sent. Default 1000. */
  maxSize?: number;
  /** What to do when full. Default `'reject-new'`. */
  overflow?: OverflowPolicy;
  /** Persistence; default none (memory only). See `IndexedDBStorage`. */
  storage?: QueueStorage;
}

/** A bounded FIFO of publishes with an optional storage mirror. */
export class Outbox<E extends QueuedPublish = QueuedPublish> {
  readonly maxSize: number;
  readonly overflow: OverflowPolicy;
  readonly storage: QueueStorage | undefined;
  private items: E[] = [];

  constructor(options: OfflineQueueOptions, private readonly onStorageError: (err: FerryError) => void) {
    this.maxSize = options.maxSize ?? 1000;
    this.overflow = options.overflow ?? 'reject-new';
    this.storage = options.storage;
    if (!(this.maxSize >= 0)) throw new RangeError('offlineQueue.maxSize must be >= 0');
  }

  /** Number of queued publishes. */
  get size(): number {
    return this.items.length;
  }

  /**
   * Appends a new publish. Returns the entry evicted under `'drop-oldest'`,
   * if any.
   *
   * @throws FerryError `queue_full` under `'reject-new'` when full.
   */
  push(entry: E): E | undefined {
    let evicted: E | undefined;
    if (this.items.length >= this.maxSize) {
      if (this.overflow !== 'drop-oldest' || this.items.length === 0) {
        throw new FerryError('queue_full', `the offline queue is full (${this.maxSize} publishes)`, {
          requestId: entry.id,
        });
      }
      evicted = this.items.shift();
    }
    this.items.push(entry);
    this.persist(entry);
    if (evicted) this.forget(evicted.id);
    return evicted;
  }

  /**
   * Puts entries back at the head, in the given order, past the bound: they
   * were accepted already (publishes in flight when the connection dropped,
   * or entries restored from storage).
   */
  unshift(entries: E[]): void {
    const known = new Set(this.items.map((e) => e.id));
    this.items.unshift(...entries.filter((e) => !known.has(e.id)));
  }

  /** Takes the oldest entry. Its storage copy stays until {@link forget}. */
  shift(): E | undefined {
    return this.items.shift();
  }

  /** Removes and returns every queued entry. */
  drain(): E[] {
    const all = this.items;
    this.items = [];
    return all;
  }

  /** Writes an entry to storage, if configured. */
  persist(entry: QueuedPublish): void {
    if (this.storage) {
      const { id, topic, frame, seq } = entry;
      this.storage.put({ id, topic, frame, seq }).catch((err: unknown) => this.fail('put', err));
    }
  }

  /** Deletes a settled entry from storage, if configured. */
  forget(id: string): void {
    this.storage?.delete(id).catch((err: unknown) => this.fail('delete', err));
  }

  /** Loads stored entries, oldest first; `[]` without storage or on failure. */
  async load(): Promise<QueuedPublish[]> {
    if (!this.storage) return [];
    try {
      return (await this.storage.load()).sort((a, b) => a.seq - b.seq);
    } catch (err) {
      this.fail('load', err);
      return [];
    }
  }

  private fail(what: string, cause: unknown): void {
    this.onStorageError(new FerryError('storage', `offline storage ${what} failed: ${String(cause)}`, { cause }));
  }
}

/** A {@link QueueStorage} in memory; mostly for tests and as an example adapter. */
export class MemoryStorage implements QueueStorage {
  readonly entries = new Map<string, QueuedPublish>();

  load(): Promise<QueuedPublish[]> {
    return Promise.resolve([...this.entries.values()]);
  }

  put(entry: QueuedPublish): Promise<void> {
    this.entries.set(entry.id, { ...entry });
    return Promise.resolve();
  }

  delete(id: string): Promise<void> {
    this.entries.delete(id);
    return Promise.resolve();
  }
}
