/**
 * The two code spaces of protocol v1, plus the codes the client adds itself.
 *
 * - Error codes are the `code` of an `error` frame: one request failed and
 *   the socket stays open.
 * - Close codes are WebSocket close codes: the connection ended. Whether the
 *   client comes back is decided by {@link mayReconnect}.
 */

/** Every `code` of a gateway `error` frame in protocol v1 (`protocol/vectors/codes.json`). */
export const ERROR_CODES = [
  'bad_request',
  'invalid_topic',
  'unknown_topic',
  'too_large',
  'unavailable',
  'timeout',
  'limit',
  'unauthorized',
  'forbidden',
  'rate_limited',
  'internal',
  'invalid_value',
] as const;

/** The `code` of a gateway `error` frame. A client treats a code it does not know like `internal`. */
export type ProtocolErrorCode = (typeof ERROR_CODES)[number];

/**
 * Codes the client produces without the gateway saying so (their
 * `source` is `'client'`):
 * - `closed`: the client was closed (by `close()` or a terminal close code)
 *   before the request settled.
 * - `not_connected`: the request needs an open connection and there is
 *   none (publishes with `offlineQueue: false`, `ping()`, `commit()`).
 * - `queue_full`: the offline queue is full and its overflow policy refused
 *   or evicted this publish.
 * - `connection_lost`: the connection dropped while the request was in
 *   flight and the request cannot be retried, or reconnect gave up.
 * - `timeout` (the protocol's code, from the client): no reply within the
 *   operation timeout; for a publish the outcome is unknown.
 * - `stream_overflow`: a `stream()` consumer fell more than `bufferSize`
 *   records behind.
 * - `unsupported`: the gateway did not announce the capability the request
 *   needs (`welcome.capabilities`).
 * - `token`: `getToken()` failed (after its retries).
 * - `protocol`: the gateway sent something this client cannot read, or
 *   speaks another protocol version.
 * - `storage`: the offline queue's storage adapter failed.
 */
export type ClientErrorCode =
  | 'closed'
  | 'not_connected'
  | 'queue_full'
  | 'connection_lost'
  | 'stream_overflow'
  | 'unsupported'
  | 'token'
  | 'protocol'
  | 'storage';

/** Any error code; unknown future gateway codes are kept as strings. */
export type ErrorCode = ProtocolErrorCode | ClientErrorCode | (string & {});

/**
 * The close code this client uses for a socket it gives up on itself (no
 * `welcome`, `pong` or reply in time): 4100 `client_gave_up`, in the
 * reconnect range. The gateway never sends it.
 */
export const CLIENT_GAVE_UP = 4100;

/**
 * The names of the close codes that have one (the reason the gateway sends
 * with them), from `protocol/vectors/codes.json`: for an app that reports a
 * `closeCode` or a `disconnect` event's code by name. (Not in the browser
 * bundle: the client itself reports the reason of the close frame.)
 *
 * Those an operator sends through the admin API: 4006 `disconnected` (the
 * client reconnects), 1012 `service_restart` (the node drains for an
 * upgrade; the client reconnects, to another node) and 4502 `revoked` (its
 * credentials were revoked; the client stops and reports it).
 */
export const CLOSE_CODE_NAMES: Readonly<Record<number, string>> = {
  1000: 'normal',
  1001: 'going_away',
  1002: 'protocol_error',
  1003: 'unsupported_data',
  1007: 'invalid_payload',
  1009: 'message_too_big',
  1011: 'internal_error',
  1012: 'service_restart',
  4000: 'slow_consumer',
  4001: 'idle_timeout',
  4002: 'token_expired',
  4003: 'auth_timeout',
  4004: 'rate_limited',
  4005: 'too_many_connections',
  4006: 'disconnected',
  4100: 'client_gave_up',
  4501: 'subject_changed',
  4502: 'revoked',
};

/** The name of close code `code` (e.g. `revoked` for 4502), or `undefined` for a code without one. */
export function closeCodeName(code: number): string | undefined {
  return CLOSE_CODE_NAMES[code];
}

/**
 * Whether a well-behaved client should reconnect (with backoff) after the
 * connection closed with `code` (the table is `protocol/vectors/codes.json`).
 *
 * "May reconnect": 1001 going away, 1005 no status, 1006 abnormal (also any
 * network loss), 1011 internal error, 1012 service restart, 1013 try again
 * later, 1014 bad gateway, and 4000–4499 (4000 slow consumer, 4001 idle
 * timeout, 4002 token expired, 4006 disconnected by an operator, 4100 the
 * client gave up on the socket, ...). Everything else is terminal: 1000 (the
 * gateway closed on purpose), 1002, 1003, 1007, 1008, 1009 (frame too big),
 * 4500–4999 (4501 subject changed, 4502 revoked).
 */
export function mayReconnect(code: number): boolean {
  return code === 1001 || code === 1005 || code === 1006 || (code >= 1011 && code <= 1014) || (code >= 4000 && code <= 4499);
}
