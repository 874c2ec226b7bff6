/**
 * What the parts of a client (subscription routing, authentication) use of
 * the connection that {@link FerryClient} owns. Only the client implements
 * it; the parts never touch the socket themselves.
 */

import type { FerryError } from './errors.js';
import type { ClientFrame, GapFrame, ServerFrame } from './frames.js';
import type { Requests } from './requests.js';

export interface Link {
  /** Whether a connection is open (its `welcome` arrived). */
  readonly connected: boolean;
  /** Whether the open connection's gateway announced `capability`. */
  has(capability: string): boolean;
  /** Requests awaiting replies. */
  readonly requests: Requests;
  /** The operation timeout, in ms. */
  readonly timeoutMs: number;
  /** A fresh request id. */
  nextId(): string;
  /** Sends a frame on the current socket (dropped when there is none). */
  send(frame: ClientFrame): void;
  /** Sends a request and waits for its reply; rejects on an `error` reply, a timeout or the loss of the connection. */
  request(frame: ClientFrame & { id: string }): Promise<ServerFrame>;
  /** Runs `fn` after `ms` unless the client ends first. */
  later(fn: () => void, ms: number): void;
  /** Reports on the client's `error` event. */
  error(err: FerryError): void;
  /** Reports on the client's `gap` event. */
  gap(notice: GapFrame): void;
  /** Gives up on the current socket (it does not answer) and reconnects. */
  abandon(reason: string): void;
  /** Ends the client for good with `err` (e.g. the user has no credentials any more). */
  stop(err: FerryError): void;
}
