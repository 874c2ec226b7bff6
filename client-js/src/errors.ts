import type { ErrorCode } from './codes.js';

/** Extra context carried by a {@link FerryError}. */
export interface FerryErrorDetails {
  /** The request `id` the error is about, when there is one. */
  requestId?: string;
  /** The gateway's suggested delay before retrying (`unavailable`, `rate_limited`). */
  retryAfterMs?: number;
  /** The WebSocket close code, for errors caused by a closed connection. */
  closeCode?: number;
  /** The underlying error, if any. */
  cause?: unknown;
}

/**
 * The one error type of this client. `code` is the protocol's error code
 * (`bad_request`, `unavailable`, ...) or one of the client's own codes
 * (`closed`, `queue_full`, ...); see {@link ErrorCode}.
 */
export class FerryError extends Error {
  /** Machine-readable reason. */
  readonly code: ErrorCode;
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
    if (details.requestId !== undefined) this.requestId = details.requestId;
    if (details.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
    if (details.closeCode !== undefined) this.closeCode = details.closeCode;
  }
}
