/**
 * {@link FerryClient}: one WebSocket to a Ferry gateway, kept alive.
 *
 * Life of a connection: open the socket (offering subprotocol `ferry.v1`),
 * send `auth` if a token is configured, wait for `welcome`, then resubscribe
 * every subscription from its resume point and send the queued publishes.
 * When the socket drops with a "may reconnect" code (or the liveness check
 * finds it dead), the client waits a backoff delay with full jitter and
 * starts over; on a terminal code it closes for good.
 */

import { backoffBounds, backoffDelay, type BackoffBounds, type BackoffOptions } from './backoff.js';
import { mayReconnect } from './codes.js';
import { Emitter } from './emitter.js';
import { FerryError } from './errors.js';
import {
  SUBPROTOCOL,
  checkTopic,
  decodeServerFrame,
  encodeClientFrame,
  publishFrame,
  validId,
  type ClientFrame,
  type ErrorFrame,
  type FerryMessage,
  type GapFrame,
  type LaggedFrame,
  type Limits,
  type PublishFields,
  type ServerFrame,
  type WelcomeFrame,
} from './frames.js';
import { Publisher, errorOf, type PublishAck, type RestoredPublishResult } from './publisher.js';
import type { OfflineQueueOptions } from './queue.js';
import {
  Channel,
  SubscriptionHandle,
  createStream,
  type FerryStream,
  type StreamOptions,
  type SubscribeOptions,
  type Subscription,
} from './subscription.js';
import { TokenSource, refreshDelay, type GetToken } from './token.js';

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

/** Options of {@link FerryClient}. */
export interface FerryClientOptions {
  /** Gateway WebSocket URL, e.g. `wss://hub.example.com/ws`. */
  url: string;
  /** A static token, sent in an `auth` frame on every connection. */
  token?: string;
  /** Returns a fresh token; called on connect (when the last one is near expiry) and before expiry. */
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

export type { PublishAck, RestoredPublishResult };

/** Why the connection went away. */
export interface DisconnectInfo {
  code: number;
  reason: string;
  /** Whether the client will try again. */
  willReconnect: boolean;
}

/** Events of {@link FerryClient}, with their listener arguments. */
export interface FerryClientEvents {
  [event: string]: unknown[];
  /** The connection state changed. */
  state: [state: ConnectionState, previous: ConnectionState];
  /** Something failed that no promise or `onError` reports: gateway errors without id, token and storage failures, terminal closes. */
  error: [error: FerryError];
  /** The gateway reports skipped records, or a resume was impossible (`reason: "resume_refused"`). */
  gap: [notice: GapFrame];
  /** A `drop_oldest` / `conflate` subscription dropped records while this socket was behind. */
  lagged: [notice: LaggedFrame];
  /** A connection is ready; its limits and session. */
  welcome: [welcome: WelcomeFrame];
  /** The connection was lost or closed. */
  disconnect: [info: DisconnectInfo];
  /** A publish restored from storage settled. */
  restoredPublish: [result: RestoredPublishResult];
}

type Reply = ServerFrame | undefined;

/** A connection that stayed open this long resets the backoff. */
const STABLE_MS = 5_000;

function randomPrefix(): string {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(36).padStart(2, '0')).join('');
}

/**
 * A Ferry hub connection.
 *
 * ```ts
 * const hub = new FerryClient({ url: 'wss://hub.example.com/ws', getToken });
 * hub.connect();
 * const sub = hub.subscribe('dashboard', (msg) => render(msg.value));
 * const { partition, offset } = await hub.publish('dashboard', { temp: 21.5 });
 * ```
 */
export class FerryClient extends Emitter<FerryClientEvents> {
  /** Current connection state. */
  state: ConnectionState = 'closed';
  /** The last `welcome` (session, node, limits), once connected. */
  welcome: WelcomeFrame | undefined;

  private readonly url: string;
  private readonly WS: WebSocketConstructor;
  private readonly reconnectBounds: BackoffBounds;
  private readonly reconnectEnabled: boolean;
  private readonly maxAttempts: number;
  private readonly queueOffline: boolean;
  private readonly pingIntervalMs: number;
  private readonly pongTimeoutMs: number;
  private readonly refreshBounds: BackoffBounds;
  private readonly refreshMarginMs: number;
  private readonly refreshAttempts: number;
  private readonly connectTimeoutMs: number;
  private readonly tokens: TokenSource;
  private readonly publisher: Publisher;
  private readonly requests = new Map<string, (reply: Reply) => void>();
  private readonly channels = new Map<string, Channel>();
  private readonly idPrefix = randomPrefix();
  private idCounter = 0;

  private ws: WebSocketLike | undefined;
  private connected = false;
  private openedAt = 0;
  private attempt = 0;
  /** Whether this connection refused `from` on a resume (an older gateway). */
  private resumeRefused = false;
  /** Why the client last ended (`close()` or a terminal close); cleared by `connect()`. */
  private ended: FerryError | undefined;
  private connTimers: ReturnType<typeof setTimeout>[] = [];
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private lastHeard = 0;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private authPending: { id: string; settle: (reply: Reply) => void } | undefined;
  private refreshing: Promise<void> | undefined;
  private refreshSettle: ((err?: FerryError) => void) | undefined;

  constructor(options: FerryClientOptions) {
    super();
    this.url = options.url;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError('no WebSocket: pass options.WebSocket (e.g. from the "ws" package)');
    this.WS = WS;
    const reconnect = options.reconnect === false ? { enabled: false } : (options.reconnect ?? {});
    this.reconnectBounds = backoffBounds(reconnect);
    this.reconnectEnabled = reconnect.enabled ?? true;
    this.maxAttempts = reconnect.maxAttempts ?? Infinity;
    this.queueOffline = options.offlineQueue !== false;
    this.publisher = new Publisher(
      options.offlineQueue || {},
      options.resendInFlight ?? true,
      (id) => id.startsWith(this.idPrefix),
      (err) => this.emit('error', err),
      (result) => this.emit('restoredPublish', result),
    );
    const liveness = options.liveness === false ? { pingIntervalMs: 0 } : (options.liveness ?? {});
    this.pingIntervalMs = liveness.pingIntervalMs ?? 20_000;
    this.pongTimeoutMs = liveness.pongTimeoutMs ?? 10_000;
    const refresh = options.tokenRefresh ?? {};
    this.refreshBounds = backoffBounds(refresh, { initialDelayMs: 1_000 });
    this.refreshMarginMs = refresh.marginMs ?? 30_000;
    this.refreshAttempts = refresh.maxAttempts ?? 5;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.tokens = new TokenSource(options.token, options.getToken);
  }

  /** Publishes waiting to be sent (offline queue and in-flight window overflow). */
  get queued(): number {
    return this.publisher.queued;
  }

  /** The current connection's limits, once connected. */
  get limits(): Limits | undefined {
    return this.welcome?.limits;
  }

  /**
   * Starts connecting (no-op unless `closed`). Resolves when the client is
   * `open`; rejects if it ends `closed` first. Not awaiting it is fine:
   * failures also reach the `error` event.
   */
  connect(): Promise<void> {
    if (this.state === 'closed') {
      this.attempt = 0;
      this.ended = undefined;
      this.setState('connecting');
      this.openSocket();
    }
    return this.whenOpen();
  }

  /**
   * Closes the connection and stops reconnecting. Every publish not yet
   * acked rejects with `closed` (and leaves storage); every subscription and
   * stream ends. Resolves once the socket is closed (at most ~2 s).
   */
  close(code = 1000, reason = ''): Promise<void> {
    const ws = this.ws;
    this.detach();
    this.finish(new FerryError('closed', 'the client was closed'), false);
    if (!ws) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 2_000);
      ws.onclose = () => {
        clearTimeout(timer);
        resolve();
      };
      try {
        ws.close(code, reason);
      } catch {
        clearTimeout(timer);
        resolve();
      }
    });
  }

  /**
   * Publishes one record. Resolves once Kafka stored it. A `Uint8Array`
   * value is sent as bytes (`value_b64`); anything else as JSON.
   *
   * While not connected the publish waits in the offline queue and is sent
   * on reconnect with the same id. Rejects with a {@link FerryError}: the
   * gateway's code (`unknown_topic`, `too_large`, `unavailable`, ...) or the
   * client's (`queue_full`, `closed`, `invalid_topic` checked locally, ...).
   */
  publish(topic: string, value: unknown, options: PublishOptions = {}): Promise<PublishAck> {
    // Whatever the checks throw becomes the rejection.
    return new Promise<PublishAck>((resolve) => {
      const id = options.id ?? this.nextId();
      if (!validId(id)) throw new FerryError('bad_request', '`id` must be 1 to 64 characters');
      const frame = encodeClientFrame(publishFrame(id, topic, value, options));
      if (this.ended) throw new FerryError('closed', 'the client is closed', { requestId: id });
      if (!this.connected && !this.queueOffline) {
        throw new FerryError('unavailable', 'not connected (offline queue disabled)', { requestId: id });
      }
      resolve(this.publisher.add(id, topic, frame));
    });
  }

  /**
   * Subscribes to a topic; `onMessage` gets each record once, in offset
   * order per partition, across reconnects. Subscribers of the same topic
   * share one gateway subscription and must use the same options. With
   * `group`, it gets its share of the records, at least once; with
   * `ack: 'client'`, call {@link commit} for each processed record.
   *
   * @throws FerryError `invalid_topic`, or `bad_request` for a second subscriber with other options.
   */
  subscribe<T = unknown>(topic: string, onMessage: (message: FerryMessage<T>) => void, options: SubscribeOptions = {}): Subscription {
    return this.addSubscriber(topic, onMessage as (m: FerryMessage) => void, options);
  }

  private addSubscriber(
    topic: string,
    onMessage: (message: FerryMessage) => void,
    options: SubscribeOptions,
    onEnd?: (err?: FerryError) => void,
  ): SubscriptionHandle {
    checkTopic(topic);
    const { from, group, ack, filter, overflow } = options;
    const wire = JSON.parse(JSON.stringify({ from, group, ack, filter, overflow })) as Channel['wire'];
    let channel = this.channels.get(topic);
    if (channel && channel.key !== JSON.stringify(wire)) {
      throw new FerryError('bad_request', `already subscribed to "${topic}" with other options`);
    }
    if (!channel) {
      channel = new Channel(topic, wire);
      this.channels.set(topic, channel);
      if (this.connected) this.sendSubscribe(channel);
    }
    const handle = new SubscriptionHandle(channel, onMessage, options.onError, (h) => this.release(h), onEnd);
    channel.handles.add(handle);
    return handle;
  }

  /**
   * Records of a topic as an async iterator:
   * `for await (const msg of hub.stream('t')) { ... }`. Stop with `break`,
   * `stream.close()` or `options.signal`.
   */
  stream<T = unknown>(topic: string, options: StreamOptions = {}): FerryStream<T> {
    return createStream<T>((onMessage, onEnd) => this.addSubscriber(topic, onMessage, options, onEnd), options);
  }

  /**
   * Marks a record of an `ack: 'client'` group subscription processed: sends
   * `commit` (no reply; a refusal comes as an `error` event). Not connected,
   * it does nothing: a record whose connection is gone is redelivered.
   */
  commit({ topic, partition, offset }: Pick<FerryMessage, 'topic' | 'partition' | 'offset'>): void {
    if (this.connected) this.send({ type: 'commit', topic, partition, offset });
  }

  /** Round trip to the gateway, in ms. Rejects when not connected. */
  ping(): Promise<number> {
    const started = Date.now();
    return this.request({ type: 'ping', id: this.nextId() }).then(() => Date.now() - started);
  }

  /**
   * Gets a fresh token from `getToken()` and presents it on the open
   * connection. Concurrent calls (and the automatic refresh before expiry)
   * share one refresh. A failure is retried with backoff; the last one
   * rejects and is reported on the `error` event.
   */
  refreshToken(): Promise<void> {
    if (!this.tokens.refreshable) return Promise.reject(new FerryError('token', 'no getToken() configured'));
    this.refreshing ??= new Promise<void>((resolve, reject) => {
      this.refreshSettle = (err) => {
        this.refreshing = this.refreshSettle = undefined;
        if (err) reject(err);
        else resolve();
      };
      this.refreshAttempt(0);
    });
    return this.refreshing;
  }

  // ---------------------------------------------------------------- connection

  private openSocket(): void {
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url, [SUBPROTOCOL]);
    } catch (err) {
      this.finish(new FerryError('closed', `cannot open ${this.url}: ${String(err)}`, { cause: err }), true);
      return;
    }
    this.ws = ws;
    this.resumeRefused = false;
    this.connTimers.push(setTimeout(() => this.drop(ws, 'no welcome in time'), this.connectTimeoutMs));
    ws.onopen = () => {
      if (this.tokens.enabled) this.authenticate(ws);
    };
    ws.onmessage = (event) => {
      if (ws === this.ws) this.onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this.ws) this.lost(event.code, event.reason);
    };
    ws.onerror = () => undefined; // a close event follows
  }

  private authenticate(ws: WebSocketLike): void {
    this.tokens.forConnect(Date.now(), this.refreshMarginMs).then(
      (token) => {
        if (ws !== this.ws) return;
        this.sendAuth(token).catch((err: FerryError) => {
          if (ws !== this.ws) return;
          if (this.connected) return this.emit('error', err); // e.g. a gateway without authentication
          if (!this.tokens.refreshable) return this.giveUp(ws, err); // a static token will not get better
          this.emit('error', err);
          this.tokens.expire();
          this.drop(ws, 'token refused');
        });
      },
      (err: unknown) => {
        if (ws !== this.ws) return;
        this.emit('error', new FerryError('token', `getToken() failed: ${String(err)}`, { cause: err }));
        this.drop(ws, 'no token');
      },
    );
  }

  /** Sends `auth`; resolves on `welcome`/`authed` (or connection loss), rejects on an `error` reply. */
  private sendAuth(token: string): Promise<void> {
    const id = this.nextId();
    this.authPending?.settle(undefined);
    return new Promise<void>((resolve, reject) => {
      this.authPending = {
        id,
        settle: (reply) => {
          this.authPending = undefined;
          if (reply?.type === 'error') reject(errorOf(reply));
          else resolve();
        },
      };
      this.send({ type: 'auth', id, token });
    });
  }

  private onFrame(data: unknown): void {
    clearTimeout(this.pongTimer);
    this.pongTimer = undefined;
    this.lastHeard = Date.now();
    if (typeof data !== 'string') {
      this.emit('error', new FerryError('protocol', 'binary frame from the gateway'));
      return;
    }
    let frame: ServerFrame;
    try {
      frame = decodeServerFrame(data) as ServerFrame;
    } catch (err) {
      this.emit('error', err as FerryError);
      return;
    }
    switch (frame.type) {
      case 'message':
        this.channels.get(frame.topic)?.deliver(frame);
        break;
      case 'ack':
        this.publisher.onAck(frame);
        break;
      case 'welcome':
        this.onWelcome(frame);
        break;
      case 'authed':
        if (frame.expires_at !== undefined) this.expiresAt(frame.expires_at);
        if (frame.id === undefined || frame.id === this.authPending?.id) this.authPending?.settle(frame);
        break;
      case 'unsubscribed':
        if (frame.id === undefined) this.endedByGateway(frame.topic, frame.reason);
        else this.reply(frame.id, frame);
        break;
      case 'gap':
        this.onGap(frame);
        break;
      case 'lagged':
        this.emit('lagged', frame);
        break;
      case 'error':
        this.onError(frame);
        break;
      default:
        if (typeof (frame as { id?: unknown }).id === 'string') this.reply((frame as { id: string }).id, frame);
    }
  }

  /** Hands a reply to the request waiting for it, if any; returns whether one was. */
  private reply(id: string, frame: ServerFrame): boolean {
    const waiting = this.requests.get(id);
    if (!waiting) return false;
    this.requests.delete(id);
    waiting(frame);
    return true;
  }

  /** The gateway ended a subscription on its own (e.g. `forbidden` after a token refresh). */
  private endedByGateway(topic: string, reason = 'closed'): void {
    const channel = this.channels.get(topic);
    if (!channel) return;
    this.channels.delete(topic);
    channel.end(new FerryError(reason, `the gateway ended the subscription to "${topic}" (${reason})`), (e) => this.emit('error', e));
  }

  private onWelcome(frame: WelcomeFrame): void {
    if (frame.expires_at !== undefined) {
      this.expiresAt(frame.expires_at);
      this.authPending?.settle(frame);
    }
    if (this.connected) return; // a later welcome only answers an auth
    const ws = this.ws;
    this.welcome = frame;
    this.connected = true;
    this.openedAt = Date.now();
    this.clearConnTimers();
    if (this.pingIntervalMs > 0 && ws) {
      this.pingTimer = setInterval(() => {
        if (Date.now() - this.lastHeard < this.pingIntervalMs || this.pongTimer) return;
        this.send({ type: 'ping', id: this.nextId() });
        this.pongTimer = setTimeout(() => this.drop(ws, 'no pong in time'), this.pongTimeoutMs);
      }, this.pingIntervalMs);
    }
    for (const channel of this.channels.values()) this.sendSubscribe(channel);
    this.publisher.attach({ send: (text) => ws?.send(text), limits: frame.limits });
    this.setState('open');
    this.emit('welcome', frame);
  }

  private onError(frame: ErrorFrame): void {
    const id = frame.id;
    if (this.publisher.onError(frame) || (id !== undefined && this.reply(id, frame))) return;
    if (this.authPending && this.authPending.id === id) this.authPending.settle(frame);
    else this.emit('error', errorOf(frame));
  }

  private onGap(frame: GapFrame): void {
    const channel = this.channels.get(frame.topic);
    if (channel && typeof frame.partition === 'number' && typeof frame.resumed_at === 'number') {
      channel.next.set(frame.partition, frame.resumed_at);
    }
    this.emit('gap', frame);
  }

  /** The current socket is gone (closed by the peer, or dropped by us). */
  private lost(code: number, reason: string): void {
    const wasOpen = this.connected;
    this.detach();
    if (code === 4002) this.tokens.expire(); // token expired: fetch a fresh one
    if (wasOpen && Date.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
    const again = this.reconnectEnabled && mayReconnect(code) && this.attempt < this.maxAttempts;
    this.emit('disconnect', { code, reason, willReconnect: again });
    if (again) {
      this.setState('reconnecting');
      this.later(() => {
        if (this.state === 'reconnecting' && !this.ws) this.openSocket();
      }, backoffDelay(this.attempt++, this.reconnectBounds));
      return;
    }
    const why = `connection closed (${code}${reason ? ` ${reason}` : ''})`;
    const terminal = !mayReconnect(code);
    this.finish(new FerryError(terminal ? 'closed' : 'connection_lost', terminal ? why : `${why}; gave up reconnecting`, { closeCode: code }), true);
  }

  /** Gives up on a socket that seems dead: stop listening, close it, and carry on as after a network loss. */
  private drop(ws: WebSocketLike, reason: string): void {
    if (ws !== this.ws) return;
    try {
      ws.close(4000, reason);
    } catch {
      // already closing
    }
    this.lost(1006, reason);
  }

  /** Ends for good on a condition that retrying cannot fix (e.g. a refused static token). */
  private giveUp(ws: WebSocketLike, err: FerryError): void {
    this.detach();
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
    this.finish(err, true);
  }

  /** Forgets the current socket: timers, handlers, in-flight requests; in-flight publishes go back to the queue. */
  private detach(): void {
    const ws = this.ws;
    this.ws = undefined;
    this.connected = false;
    this.clearConnTimers();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => undefined; // `ws` throws an 'error' event that nobody listens to
    }
    const replies = [...this.requests.values()];
    this.requests.clear();
    for (const reply of replies) reply(undefined);
    this.authPending?.settle(undefined);
    for (const channel of this.channels.values()) {
      channel.live = false;
      channel.requestId = undefined;
    }
    this.publisher.detach();
  }

  /** Ends everything: state `closed`, every pending promise settled with `err`. */
  private finish(err: FerryError, report: boolean): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.publisher.rejectAll(err);
    const channels = [...this.channels.values()];
    this.channels.clear();
    for (const channel of channels) channel.end(err, report ? () => undefined : undefined);
    this.refreshSettle?.(err);
    this.ended = err;
    this.setState('closed');
    if (report) this.emit('error', err);
  }

  private clearConnTimers(): void {
    for (const timer of this.connTimers) clearTimeout(timer);
    this.connTimers = [];
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pingTimer = this.pongTimer = undefined;
  }

  private setState(state: ConnectionState): void {
    const previous = this.state;
    if (state === previous) return;
    this.state = state;
    this.emit('state', state, previous);
  }

  private whenOpen(): Promise<void> {
    const opened = new Promise<void>((resolve, reject) => {
      if (this.state === 'open') return resolve();
      const off = this.on('state', (state) => {
        if (state !== 'open' && state !== 'closed') return;
        off();
        if (state === 'open') resolve();
        else reject(this.ended ?? new FerryError('closed', 'closed before connecting'));
      });
    });
    opened.catch(() => undefined);
    return opened;
  }

  // ---------------------------------------------------------------- subscriptions

  private sendSubscribe(channel: Channel): void {
    const id = this.nextId();
    const resume = !this.resumeRefused && channel.next.size > 0;
    channel.requestId = id;
    this.requests.set(id, (reply) => {
      if (channel.requestId !== id || this.channels.get(channel.topic) !== channel) return;
      channel.requestId = undefined;
      if (!reply) return; // connection lost: resubscribed after reconnect
      if (reply.type === 'subscribed') return channel.confirmed(reply.partitions);
      if (reply.type !== 'error') return;
      const err = errorOf(reply);
      if (resume && err.code === 'bad_request') {
        // An older gateway without `from`: continue live, and tell the app what may be missing.
        this.resumeRefused = true;
        this.emit('gap', { type: 'gap', topic: channel.topic, reason: 'resume_refused', message: err.message, positions: channel.positions() });
        return this.sendSubscribe(channel);
      }
      if (err.code === 'unavailable' || err.code === 'timeout' || err.code === 'rate_limited') {
        this.later(() => {
          if (this.connected && this.channels.get(channel.topic) === channel && !channel.requestId) this.sendSubscribe(channel);
        }, err.retryAfterMs ?? 1_000);
        return;
      }
      this.channels.delete(channel.topic);
      channel.end(err, (e) => this.emit('error', e));
    });
    this.send(channel.frame(id, resume));
  }

  /** The last subscriber of a channel left: unsubscribe on the wire. */
  private release(handle: SubscriptionHandle): Promise<void> {
    const channel = handle.channel;
    channel.handles.delete(handle);
    if (channel.handles.size > 0 || this.channels.get(channel.topic) !== channel) return Promise.resolve();
    this.channels.delete(channel.topic);
    channel.requestId = undefined;
    if (!this.connected) return Promise.resolve();
    return this.request({ type: 'unsubscribe', id: this.nextId(), topic: channel.topic }).then(
      () => undefined,
      () => undefined,
    );
  }

  // ---------------------------------------------------------------- tokens

  private expiresAt(expiresAt: number): void {
    this.tokens.expiresAt = expiresAt;
    if (!this.tokens.refreshable) return;
    const delay = refreshDelay(expiresAt, Date.now(), this.refreshMarginMs);
    this.later(() => {
      if (this.tokens.expiresAt === expiresAt) this.refreshToken().catch(() => undefined);
    }, delay);
  }

  private refreshAttempt(attempt: number): void {
    this.tokens
      .fetch()
      .then((token) => (this.connected ? this.sendAuth(token) : undefined))
      .then(
        () => this.refreshSettle?.(),
        (cause: unknown) => {
          if (this.state === 'closed') return;
          if (attempt + 1 >= this.refreshAttempts) {
            const err = new FerryError(cause instanceof FerryError ? cause.code : 'token', `token refresh failed: ${String(cause)}`, { cause });
            this.emit('error', err);
            this.refreshSettle?.(err);
            return;
          }
          this.later(() => this.refreshAttempt(attempt + 1), backoffDelay(attempt, this.refreshBounds));
        },
      );
  }

  // ---------------------------------------------------------------- plumbing

  private nextId(): string {
    return `${this.idPrefix}-${(++this.idCounter).toString(36)}`;
  }

  private send(frame: ClientFrame): void {
    this.ws?.send(encodeClientFrame(frame));
  }

  /** Sends a request and waits for its reply; rejects on an `error` reply or when the connection drops. */
  private request(frame: ClientFrame & { id: string }): Promise<ServerFrame> {
    return new Promise((resolve, reject) => {
      if (!this.connected) throw new FerryError('unavailable', 'not connected');
      this.requests.set(frame.id, (reply) => {
        if (!reply) reject(new FerryError('connection_lost', 'connection lost', { requestId: frame.id }));
        else if (reply.type === 'error') reject(errorOf(reply));
        else resolve(reply);
      });
      this.send(frame);
    });
  }

  /** A timeout that `finish()` cancels. */
  private later(fn: () => void, ms: number): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  }
}
