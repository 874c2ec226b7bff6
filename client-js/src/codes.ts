/**
 * The two code spaces of protocol v1, plus the codes the client adds itself.
 *
 * - Error codes are the `code` of an `error` frame: one request failed and
 *   the socket stays open.
 * - Close codes are WebSocket close codes: the connection ended. Whether the
 *   client comes back is decided by {@link mayReconnect}.
 */

/** The `code` of a gateway `error` frame (protocol v1 and announced ones). */
export type ProtocolErrorCode =
  | 'bad_request'
  | 'invalid_topic'
  | 'unknown_topic'
  | 'too_large'
  | 'unavailable'
  | 'timeout'
  | 'limit'
  | 'internal'
  | 'forbidden'
  | 'rate_limited'
  | 'unauthorized';

/**
 * Codes the client produces without the gateway saying so:
 * - `closed`: the client was closed (by `close()` or a terminal close code)
 *   before the request settled.
 * - `queue_full`: the offline queue is full and its overflow policy refused
 *   or evicted this publish.
 * - `connection_lost`: the connection dropped while the request was in
 *   flight and the request cannot be retried, or reconnect gave up.
 * - `token`: `getToken()` failed (after its retries).
 * - `protocol`: the gateway sent something this client cannot read.
 * - `storage`: the offline queue's storage adapter failed.
 */
export type ClientErrorCode =
  | 'closed'
  | 'queue_full'
  | 'connection_lost'
  | 'token'
  | 'protocol'
  | 'storage';

/** Any error code; unknown future gateway codes are kept as strings. */
export type ErrorCode = ProtocolErrorCode | ClientErrorCode | (string & {});

/**
 * Whether a well-behaved client should reconnect (with backoff) after the
 * connection closed with `code`.
 *
 * "May reconnect": 1001 going away, 1005 no status, 1006 abnormal (also any
 * network loss), 1011 internal error, 1012 service restart, 1013 try again
 * later, 1014 bad gateway, and 4000–4499 (4000 slow consumer, 4001 idle
 * timeout, 4002 token expired, ...). Everything else is terminal: 1000 (the
 * gateway closed on purpose), 1002, 1003, 1007, 1008, 1009 (frame too big),
 * 4500–4999.
 */
export function mayReconnect(code: number): boolean {
  return (
    code === 1001 ||
    code === 1005 ||
    code === 1006 ||
    (code >= 1011 && code <= 1014) ||
    (code >= 4000 && code <= 4499)
  );
}
