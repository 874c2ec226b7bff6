import type { ErrorCode } from './codes.js';

/**
 * Who produced an error:
 * - `'gateway'`: the gateway answered a request with an `error` frame; `code`
 *   is one of the protocol's codes.
 * - `'client'`: this client decided on its own (not connected, a local
 *   check, a timeout, a closed connection, a failed `getToken()`, ...).
 *   Local checks that mirror the gateway's rules (`invalid_topic`,
 *   `bad_request`, `too_large`) keep the protocol's code and meaning.
 */
export type ErrorSource = 'gateway' | 'client';

/** Extra context carried by a {@link FerryError}. */
export interface FerryErrorDetails {
  /** Who produced the error. Default `'client'`. */
  source?: ErrorSource;
  /** The request `id` the error is about, when there is one. */
  requestId?: string;
  /** The gateway's suggested delay before retrying (it sends one with `unavailable`, and with `limit` when a node is overloaded for now). */
  retryAfterMs?: number;
  /** The WebSocket close code, for errors caused by a closed connection. */
  closeCode?: number;
  /** The underlying error, if any. */
  cause?: unknown;
}

/**
 * The one error type of this client. `code` is the protocol's error code
 * (`bad_request`, `unavailable`, ...) or one of the client's own codes
 * (`closed`, `not_connected`, `queue_full`, ...); see {@link ErrorCode}.
 * `source` says whether the gateway or the client produced it.
 *
 * A `getToken()` callback may throw `new FerryError('unauthorized', why)`
 * to say the user has no credentials any more: the client then stops for
 * good with that error instead of retrying.
 */
export class FerryError extends Error {
  /** Machine-readable reason. */
  readonly code: ErrorCode;
  /** Who produced the error: the gateway (an `error` frame) or this client. */
  readonly source: ErrorSource;
  /** The request `id` the error is about, when there is one. */
  readonly requestId?: string;
  /** The gateway's suggested delay before retrying, when it gave one. */
  readonly retryAfterMs?: number;
  /** The WebSocket close code, for errors caused by a closed connection. */
  readonly closeCode?: number;

  constructor(code: ErrorCode, message: string, details: FerryErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'FerryError';
    this.code = code;
    this.source = details.source ?? 'client';
    if (details.requestId !== undefined) this.requestId = details.requestId;
    if (details.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
    if (details.closeCode !== undefined) this.closeCode = details.closeCode;
  }
}
