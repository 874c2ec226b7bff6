/**
 * The options, events and socket interface of {@link FerryClient}: the
 * client's public surface apart from its methods.
 */

import type { BackoffOptions } from './backoff.js';
import type { FerryError } from './errors.js';
import type { GapFrame, LaggedFrame, PublishFields, WelcomeFrame } from './frames.js';
import type { RestoredPublishResult } from './publisher.js';
import type { OfflineQueueOptions } from './queue.js';
import type { GetToken } from './token.js';

/** Declares a callback parameter bivariantly, so DOM's and `ws`'s handler types both fit. */
type Handler<E> = { bivarianceHack(event: E): void }['bivarianceHack'];

/** The part of the WebSocket API the client uses; the browser's `WebSocket` and the `ws` package both fit. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
}

/** A WebSocket constructor such as `globalThis.WebSocket` or `import { WebSocket } from 'ws'`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/**
 * - `connecting`: first connection after `connect()`;
 * - `open`: `welcome` received, requests flow;
 * - `reconnecting`: the connection was lost (or never made); waiting to retry or retrying;
 * - `closed`: not connected and not trying (before `connect()`, after `close()` or a terminal close code).
 */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Reconnect behaviour: full-jitter exponential backoff between attempts. */
export interface ReconnectOptions extends BackoffOptions {
  /** Reconnect at all. Default `true`. */
  enabled?: boolean;
  /** Consecutive failed attempts before giving up (state `closed`). Default unlimited. */
  maxAttempts?: number;
}

/** Dead-connection detection. */
export interface LivenessOptions {
  /** Send a `ping` this often, in ms. Default 20 000. */
  pingIntervalMs?: number;
  /** Drop the connection when nothing at all arrives this long after a ping, in ms. Default 10 000. */
  pongTimeoutMs?: number;
}

/** Token refresh behaviour (with `getToken`). */
export interface TokenRefreshOptions extends BackoffOptions {
  /** Refresh this long before `expires_at`, in ms (at mid-life for shorter tokens). Default 30 000. */
  marginMs?: number;
  /** Attempts of one refresh before it fails with an `error` event. Default 5. */
  maxAttempts?: number;
}

/**
 * How the client reaches the gateway:
 * - `'websocket'` (default): one WebSocket;
 * - `'sse'`: plain HTTP only, subscriptions over Server-Sent Events
 *   (`GET /sse`, resumed from their token) and publishes over
 *   `POST /v1/publish`; shared groups (`group`, `commit`) are not available;
 * - `'auto'`: a WebSocket, and `'sse'` for the rest of the client's life
 *   when one cannot be opened (no `WebSocket`, the constructor throws, or the
 *   socket closes before `welcome`).
 */
export type Transport = 'auto' | 'websocket' | 'sse';

/** What a {@link UrlProvider} is told before each connection attempt. */
export interface UrlContext {
  /** Attempts made before this one since `connect()` or since the last connection that stayed open (0 for the first). */
  attempt: number;
  /** The URL of the previous attempt, if any. */
  previous: string | undefined;
}

/** Picks the gateway URL of each connection attempt (e.g. from service discovery). */
export type UrlProvider = (context: UrlContext) => string;

/** Options of {@link FerryClient}. */
export interface FerryClientOptions {
  /**
   * Gateway WebSocket URL, e.g. `wss://hub.example.com/ws`. The HTTP
   * transport uses the same host (`https://hub.example.com/sse`,
   * `/v1/publish`); an `http(s)://` URL works too.
   *
   * Several gateway nodes: a list of URLs, tried in turn. The first
   * connection goes to the first URL; after a lost connection or a failed
   * attempt the client moves to the next URL (wrapping around), so a dead
   * node costs one attempt. Subscriptions resume on whichever node answers.
   * Shuffle the list per client to spread clients over the nodes.
   * Or a function, called before each attempt, that returns the URL (if it
   * throws, the client closes with that error).
   */
  url: string | readonly string[] | UrlProvider;
  /** WebSocket, HTTP (SSE + HTTP publish), or WebSocket with HTTP fallback. Default `'websocket'`. */
  transport?: Transport;
  /** `fetch` for the HTTP transport; default `globalThis.fetch`. */
  fetch?: typeof globalThis.fetch;
  /** A static token, sent in an `auth` frame on every connection. */
  token?: string;
  /**
   * Returns a fresh token; called on connect (when the last one is near
   * expiry) and before expiry. Throw `new FerryError('unauthorized', why)`
   * to stop the client for good (e.g. the user logged out); any other
   * failure is retried.
   */
  getToken?: GetToken;
  /** WebSocket implementation; default `globalThis.WebSocket`. In Node 20 pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect bounds, or `false` to never reconnect. */
  reconnect?: ReconnectOptions | false;
  /** Offline queue bounds, policy and storage, or `false` to reject publishes at once while not connected. */
  offlineQueue?: OfflineQueueOptions | false;
  /** Liveness check, or `false` to disable it. */
  liveness?: LivenessOptions | false;
  /** Token refresh timing and retries. */
  tokenRefresh?: TokenRefreshOptions;
  /** Give up on a connection attempt without `welcome` after this long, in ms. Default 10 000. */
  connectTimeoutMs?: number;
  /**
   * Operation timeout, in ms: `ping()`, `commit()` and unsubscribing reject
   * with `timeout` when no reply came in this time, and a subscription the
   * gateway does not confirm in this time rejects its `ready` with
   * `timeout` and makes the client reconnect (the subscription goes on on
   * the new connection). Default 10 000.
   */
  timeoutMs?: number;
  /**
   * How long a sent publish waits for its `ack`, in ms; then it rejects
   * with `timeout` (source `client`): the outcome is unknown, as with the
   * gateway's own `timeout`. Keep it above the gateway's
   * `kafka.message_timeout_ms` (30 s by default). Publishes waiting in the
   * offline queue are not timed. Default 60 000.
   */
  publishTimeoutMs?: number;
  /**
   * Resend, with the same id, publishes that were in flight when the
   * connection dropped (their outcome is unknown). Default `true`: no
   * publish is lost, and a gateway that de-duplicates by id stores it once.
   * With `false` they reject with `connection_lost` instead.
   */
  resendInFlight?: boolean;
}

/** Options of one publish. */
export interface PublishOptions extends PublishFields {
  /** Request id (1–64 chars), for de-duplication across app restarts; default a unique generated id. */
  id?: string;
}

/** Why the connection went away. */
export interface DisconnectInfo {
  /** The close code: the gateway's, 1006 for a lost connection, 4100 when the client gave up on the socket. */
  code: number;
  reason: string;
  /** Whether the client will try again. */
  willReconnect: boolean;
}

/** Events of {@link FerryClient}, with their listener arguments. */
export interface FerryClientEvents {
  /** The connection state changed. */
  state: [state: ConnectionState, previous: ConnectionState];
  /** Something failed that no promise or `onError` reports: gateway errors without id, token and storage failures, terminal closes. */
  error: [error: FerryError];
  /** The gateway reports skipped records, or a resume was impossible (`reason: "resume_refused"`). */
  gap: [notice: GapFrame];
  /** A `drop_oldest` / `conflate` subscription dropped records while this socket was behind. */
  lagged: [notice: LaggedFrame];
  /** A connection is ready; its limits, session and capabilities. */
  welcome: [welcome: WelcomeFrame];
  /** The connection was lost or closed. */
  disconnect: [info: DisconnectInfo];
  /** A publish restored from storage settled. */
  restoredPublish: [result: RestoredPublishResult];
}
