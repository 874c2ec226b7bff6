/**
 * Entry of the browser bundles (`dist/browser/`): the client API plus the
 * IndexedDB storage adapter, with no dependencies. As a classic script it
 * defines the global `Ferry` (`new Ferry.FerryClient({ url })`). The
 * frame-level helpers (`publishFrame`, `decodeServerFrame`, ...) are in the
 * npm builds only.
 */

export { FerryClient } from './client.js';
export { FerryError } from './errors.js';
export { mayReconnect } from './codes.js';
export { topicError } from './frames.js';
export { MemoryStorage } from './queue.js';
export { IndexedDBStorage } from './storage/indexeddb.js';
export type * from './index.js';
export type { IndexedDBStorageOptions } from './storage/indexeddb.js';
