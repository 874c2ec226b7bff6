/**
 * A {@link QueueStorage} on IndexedDB, for browsers: queued publishes survive
 * a page reload and are sent, with their original ids, by the next client
 * created with the same database and store names.
 *
 * One object store keyed by publish `id`. Use a distinct `storeName` (or
 * `dbName`) per logical producer: two live clients sharing one store would
 * both send the restored entries (the gateway's de-duplication by `id` keeps
 * Kafka clean, but each client would report them).
 */

import type { QueuedPublish, QueueStorage } from '../queue.js';

/** Options of {@link IndexedDBStorage}. */
export interface IndexedDBStorageOptions {
  /** Database name. Default `"ferry"`. */
  dbName?: string;
  /** Object store name. Default `"outbox"`. */
  storeName?: string;
  /** The IndexedDB factory; default `globalThis.indexedDB`. */
  indexedDB?: IDBFactory;
}

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error ?? new Error('IndexedDB request failed'));
  });
}

/** Stores queued publishes in an IndexedDB object store. */
export class IndexedDBStorage implements QueueStorage {
  private readonly dbName: string;
  private readonly storeName: string;
  private readonly factory: IDBFactory;
  private db: Promise<IDBDatabase> | undefined;

  constructor(options: IndexedDBStorageOptions = {}) {
    this.dbName = options.dbName ?? 'ferry';
    this.storeName = options.storeName ?? 'outbox';
    const factory = options.indexedDB ?? globalThis.indexedDB;
    if (!factory) throw new TypeError('IndexedDB is not available here; pass options.indexedDB');
    this.factory = factory;
  }

  private open(): Promise<IDBDatabase> {
    if (!this.db) {
      const request = this.factory.open(this.dbName, 1);
      request.onupgradeneeded = () => {
        if (!request.result.objectStoreNames.contains(this.storeName)) {
          request.result.createObjectStore(this.storeName, { keyPath: 'id' });
        }
      };
      this.db = done(request);
      this.db.catch(() => (this.db = undefined));
    }
    return this.db;
  }

  private async store(mode: IDBTransactionMode): Promise<IDBObjectStore> {
    return (await this.open()).transaction(this.storeName, mode).objectStore(this.storeName);
  }

  /** Every stored entry. */
  async load(): Promise<QueuedPublish[]> {
    return done((await this.store('readonly')).getAll() as IDBRequest<QueuedPublish[]>);
  }

  /** Stores one entry. */
  async put(entry: QueuedPublish): Promise<void> {
    await done((await this.store('readwrite')).put(entry));
  }

  /** Deletes one entry. */
  async delete(id: string): Promise<void> {
    await done((await this.store('readwrite')).delete(id));
  }

  /** Closes the database connection. */
  async close(): Promise<void> {
    const db = this.db;
    this.db = undefined;
    if (db) (await db).close();
  }
}
