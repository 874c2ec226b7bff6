/**
 * {@link FerryClient}: one WebSocket to a Ferry gateway, kept alive.
 *
 * Life of a connection: open the socket (offering subprotocol `ferry.v1`),
 * send `auth` if a token is configured ({@link Auth}), wait for `welcome`
 * (and check its protocol version), then resubscribe every subscription
 * from its resume point ({@link Router}) and send the queued publishes
 * ({@link Publisher}). When the socket drops with a "may reconnect" code
 * (or the liveness check or a request timeout finds it dead), the client
 * waits a backoff delay with full jitter and starts over, at once when the
 * browser says it is back `online`; on a terminal code it closes for good.
 */

import { Auth } from './auth.js';
import { backoffBounds, backoffDelay, type BackoffBounds } from './backoff.js';
import { CLIENT_GAVE_UP, mayReconnect } from './codes.js';
import { Emitter } from './emitter.js';
import { FerryError } from './errors.js';
import {
  PROTOCOL_VERSION,
  SUBPROTOCOL,
  V1_CAPABILITIES,
  decodeServerFrame,
  encodeClientFrame,
  publishFrame,
  validId,
  type ClientFrame,
  type ErrorFrame,
  type FerryMessage,
  type Limits,
  type ServerFrame,
  type WelcomeFrame,
} from './frames.js';
import { HttpTransport, type FetchLike } from './http-transport.js';
import type { Link } from './link.js';
import type {
  ConnectionState,
  FerryClientEvents,
  FerryClientOptions,
  PublishOptions,
  Transport,
  UrlProvider,
  WebSocketConstructor,
  WebSocketLike,
} from './options.js';
import { Publisher, errorOf, type PublishAck } from './publisher.js';
import { Requests } from './requests.js';
import { Router } from './router.js';
import { createStream, type FerryStream, type StreamOptions, type SubscribeOptions, type Subscription } from './subscription.js';

export type * from './options.js';
export type { PublishAck, RestoredPublishResult } from './publisher.js';

/** A connection that stayed open this long resets the backoff. */
const STABLE_MS = 5_000;

function randomPrefix(): string {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(36).padStart(2, '0')).join('');
}

/**
 * The `url` option as a function: a fixed URL; the URLs of a list in turn,
 * from the first, moving on at each new attempt; or the app's own function.
 */
export function urlProvider(url: FerryClientOptions['url']): UrlProvider {
  if (typeof url === 'function') return url;
  if (typeof url === 'string') return () => url;
  const list = [...url];
  if (list.length === 0 || !list.every((u) => typeof u === 'string' && u !== '')) {
    throw new TypeError('options.url: a URL, a non-empty list of URLs, or a function returning one');
  }
  let index = -1;
  return ({ previous }) => {
    index = previous === undefined ? 0 : (index + 1) % list.length;
    return list[index] as string;
  };
}

/** The browser's `online` event source, when there is one. */
type OnlineTarget = { addEventListener(type: 'online', fn: () => void): void; removeEventListener(type: 'online', fn: () => void): void };

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
  /** The last `welcome` (session, node, limits, capabilities), once connected. */
  welcome: WelcomeFrame | undefined;

  /** Picks the URL of each connection attempt. */
  private readonly urls: UrlProvider;
  /** The URL of the last connection attempt. */
  private lastUrl: string | undefined;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly transportOption: Transport;
  private readonly fetch: FetchLike | undefined;
  /** `'auto'` gave up on WebSockets. */
  private fellBack = false;
  private readonly reconnectBounds: BackoffBounds;
  private readonly reconnectEnabled: boolean;
  private readonly maxAttempts: number;
  private readonly queueOffline: boolean;
  private readonly pingIntervalMs: number;
  private readonly pongTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly link: Link;
  private readonly requests = new Requests();
  private readonly auth: Auth;
  private readonly router: Router;
  private readonly publisher: Publisher;
  private readonly idPrefix = randomPrefix();
  private idCounter = 0;

  private ws: WebSocketLike | undefined;
  private connected = false;
  private capabilities: ReadonlySet<string> = new Set();
  private openedAt = 0;
  private attempt = 0;
  /** Why the client last ended (`close()` or a terminal close); cleared by `connect()`. */
  private ended: FerryError | undefined;
  private connTimers: ReturnType<typeof setTimeout>[] = [];
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private lastHeard = 0;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private readonly onOnline = (): void => this.retryNow();

  constructor(options: FerryClientOptions) {
    super();
    this.urls = urlProvider(options.url);
    this.transportOption = options.transport ?? 'websocket';
    this.WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.fetch = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    if (!this.WS && this.transportOption === 'websocket') {
      throw new TypeError('no WebSocket: pass options.WebSocket (e.g. from the "ws" package)');
    }
    if (!this.fetch && this.transportOption !== 'websocket') throw new TypeError('no fetch: pass options.fetch');
    this.fellBack = this.transportOption === 'auto' && !this.WS;
    const reconnect = options.reconnect === false ? { enabled: false } : (options.reconnect ?? {});
    this.reconnectBounds = backoffBounds(reconnect);
    this.reconnectEnabled = reconnect.enabled ?? true;
    this.maxAttempts = reconnect.maxAttempts ?? Infinity;
    this.queueOffline = options.offlineQueue !== false;
    const liveness = options.liveness === false ? { pingIntervalMs: 0 } : (options.liveness ?? {});
    this.pingIntervalMs = liveness.pingIntervalMs ?? 20_000;
    this.pongTimeoutMs = liveness.pongTimeoutMs ?? 10_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    const timeoutMs = options.timeoutMs ?? 10_000;
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the link's getter reads the client's live state
    const client = this;
    this.link = {
      get connected() {
        return client.connected;
      },
      has: (capability) => this.capabilities.has(capability),
      requests: this.requests,
      timeoutMs,
      nextId: () => this.nextId(),
      send: (frame) => this.send(frame),
      request: (frame) => this.request(frame),
      later: (fn, ms) => this.later(fn, ms),
      error: (err) => this.emit('error', err),
      gap: (notice) => this.emit('gap', notice),
      abandon: (reason) => this.ws && this.drop(this.ws, reason),
      stop: (err) => this.stop(err),
    };
    const refresh = options.tokenRefresh ?? {};
    this.auth = new Auth(this.link, options.token, options.getToken, {
      bounds: backoffBounds(refresh, { initialDelayMs: 1_000 }),
      marginMs: refresh.marginMs ?? 30_000,
      attempts: refresh.maxAttempts ?? 5,
    });
    this.router = new Router(this.link);
    this.publisher = new Publisher(
      options.offlineQueue || {},
      options.resendInFlight ?? true,
      options.publishTimeoutMs ?? 60_000,
      (id) => id.startsWith(this.idPrefix),
      (err) => this.emit('error', err),
      (result) => this.emit('restoredPublish', result),
    );
  }

  /** The transport in use: `'websocket'`, or `'sse'` (Server-Sent Events and HTTP publish). */
  get transport(): 'websocket' | 'sse' {
    return this.transportOption === 'sse' || this.fellBack ? 'sse' : 'websocket';
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
      this.lastUrl = undefined;
      (globalThis as Partial<OnlineTarget>).addEventListener?.('online', this.onOnline);
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
   * gateway's code (`unknown_topic`, `too_large`, `unavailable`, ...,
   * `source: 'gateway'`) or the client's (`queue_full`, `closed`,
   * `not_connected`, `timeout`, `invalid_topic` checked locally, ...,
   * `source: 'client'`).
   */
  publish(topic: string, value: unknown, options: PublishOptions = {}): Promise<PublishAck> {
    // Whatever the checks throw becomes the rejection.
    return new Promise<PublishAck>((resolve) => {
      const id = options.id ?? this.nextId();
      if (!validId(id)) throw new FerryError('bad_request', '`id` must be 1 to 64 characters');
      const frame = encodeClientFrame(publishFrame(id, topic, value, options));
      if (this.ended) throw new FerryError('closed', 'the client is closed', { requestId: id });
      if (!this.connected && !this.queueOffline) {
        throw new FerryError('not_connected', 'not connected (offline queue disabled)', { requestId: id });
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
    return this.router.add(topic, onMessage as (m: FerryMessage) => void, options);
  }

  /**
   * Records of a topic as an async iterator:
   * `for await (const msg of hub.stream('t')) { ... }`. Stop with `break`,
   * `stream.close()` or `options.signal`.
   */
  stream<T = unknown>(topic: string, options: StreamOptions = {}): FerryStream<T> {
    return createStream<T>((onMessage, onEnd) => this.router.add(topic, onMessage, options, onEnd), options);
  }

  /**
   * Marks a record of an `ack: 'client'` group subscription processed:
   * sends `commit` and resolves on the gateway's `committed`. Rejects with
   * the gateway's error (e.g. an offset not awaiting this socket's commit),
   * `not_connected` (the record will be delivered again anyway),
   * `unsupported` (a gateway without `commit`) or `timeout`. Not awaiting
   * it is fine.
   */
  commit({ topic, partition, offset }: Pick<FerryMessage, 'topic' | 'partition' | 'offset'>): Promise<void> {
    const committed = new Promise<void>((resolve) => {
      if (!this.connected) throw new FerryError('not_connected', 'not connected: the record will be delivered again');
      if (!this.capabilities.has('commit')) throw new FerryError('unsupported', 'the gateway does not announce "commit"');
      resolve(
        this.request({ type: 'commit', id: this.nextId(), topic, partition, offset }).then((reply) => {
          const r = reply as Partial<Record<string, unknown>>;
          if (r.type !== 'committed' || r.topic !== topic || r.partition !== partition || r.offset !== offset) {
            throw new FerryError('protocol', `unexpected reply to commit: ${JSON.stringify(reply)}`);
          }
        }),
      );
    });
    committed.catch(() => undefined);
    return committed;
  }

  /** Round trip to the gateway, in ms. Rejects when not connected, or with `timeout`. */
  ping(): Promise<number> {
    const started = Date.now();
    return this.request({ type: 'ping', id: this.nextId() }).then(() => Date.now() - started);
  }

  /**
   * Gets a fresh token from `getToken()` and presents it on the open
   * connection. Concurrent calls (and the automatic refresh before expiry)
   * share one refresh. A failure is retried with backoff; the last one
   * rejects and is reported on the `error` event. A `getToken()` that
   * throws `FerryError('unauthorized')` ends the client.
   */
  refreshToken(): Promise<void> {
    return this.auth.refresh();
  }

  // ---------------------------------------------------------------- connection

  /** Opens a socket to `url`, by default the next one of the `url` option. */
  private openSocket(url?: string): void {
    let ws: WebSocketLike;
    try {
      url ??= this.urls({ attempt: this.attempt, previous: this.lastUrl });
      this.lastUrl = url;
      ws =
        this.transport === 'sse'
          ? new HttpTransport(url, { expectAuth: this.auth.enabled, fetch: this.fetch as FetchLike })
          : new (this.WS as WebSocketConstructor)(url, [SUBPROTOCOL]);
    } catch (err) {
      if (url !== undefined && this.transportOption === 'auto' && !this.fellBack) {
        this.fellBack = true;
        return this.openSocket(url);
      }
      const what = url === undefined ? 'pick a gateway URL' : `open ${url}`;
      this.finish(new FerryError('closed', `cannot ${what}: ${String(err)}`, { cause: err }), true);
      return;
    }
    this.ws = ws;
    this.connTimers.push(setTimeout(() => this.drop(ws, 'no welcome in time'), this.connectTimeoutMs));
    ws.onopen = () => {
      if (this.auth.enabled) this.auth.authenticate(() => ws === this.ws, (reason) => this.drop(ws, reason));
    };
    ws.onmessage = (event) => {
      if (ws === this.ws) this.onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this.ws) this.lost(event.code, event.reason);
    };
    ws.onerror = () => undefined; // a close event follows
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
        this.router.deliver(frame);
        break;
      case 'ack':
        this.publisher.onAck(frame);
        break;
      case 'welcome':
        this.onWelcome(frame);
        break;
      case 'authed':
        this.auth.authed(frame);
        break;
      case 'unsubscribed':
        if (frame.id === undefined) this.router.endedByGateway(frame.topic, frame.reason);
        else this.requests.reply(frame.id, frame);
        break;
      case 'snapshot_end':
        this.router.snapshotEnd(frame);
        break;
      case 'gap':
        this.router.gap(frame);
        break;
      case 'lagged':
        this.emit('lagged', frame);
        break;
      case 'error':
        this.onError(frame);
        break;
      default:
        if (typeof (frame as { id?: unknown }).id === 'string') this.requests.reply((frame as { id: string }).id, frame);
    }
  }

  private onWelcome(frame: WelcomeFrame): void {
    this.auth.welcome(frame);
    if (this.connected) return; // a later welcome only answers an auth
    const ws = this.ws;
    if (!ws) return;
    if (frame.protocol !== PROTOCOL_VERSION) {
      const err = new FerryError('protocol', `the gateway speaks protocol ${frame.protocol}; this client speaks ${PROTOCOL_VERSION}`);
      return this.stop(err);
    }
    this.welcome = frame;
    this.capabilities = new Set(frame.capabilities ?? V1_CAPABILITIES);
    this.connected = true;
    this.openedAt = Date.now();
    this.clearConnTimers();
    if (this.pingIntervalMs > 0) {
      this.pingTimer = setInterval(() => {
        if (Date.now() - this.lastHeard < this.pingIntervalMs || this.pongTimer) return;
        this.send({ type: 'ping', id: this.nextId() });
        this.pongTimer = setTimeout(() => this.drop(ws, 'no pong in time'), this.pongTimeoutMs);
      }, this.pingIntervalMs);
    }
    this.router.connected();
    this.publisher.attach({ send: (text) => ws.send(text), limits: frame.limits });
    this.setState('open');
    this.emit('welcome', frame);
  }

  private onError(frame: ErrorFrame): void {
    const id = frame.id;
    if (this.publisher.onError(frame) || (id !== undefined && this.requests.reply(id, frame))) return;
    if (!this.auth.error(frame)) this.emit('error', errorOf(frame));
  }

  /** The current socket is gone (closed by the peer, or dropped by us). */
  private lost(code: number, reason: string): void {
    const wasOpen = this.connected;
    this.detach();
    if (!wasOpen && this.transportOption === 'auto' && !this.fellBack && this.state !== 'closed') {
      // The WebSocket never got through: carry on over HTTP at once.
      this.fellBack = true;
      this.emit('disconnect', { code, reason, willReconnect: true });
      return this.openSocket(this.lastUrl);
    }
    if (code === 4002) this.auth.expired(); // token expired: fetch a fresh one
    if (wasOpen && Date.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
    const again = this.reconnectEnabled && mayReconnect(code) && this.attempt < this.maxAttempts;
    this.emit('disconnect', { code, reason, willReconnect: again });
    if (again) {
      this.setState('reconnecting');
      this.retryTimer = setTimeout(() => this.retryNow(), backoffDelay(this.attempt++, this.reconnectBounds));
      return;
    }
    const why = `connection closed (${code}${reason ? ` ${reason}` : ''})`;
    const terminal = !mayReconnect(code);
    this.finish(new FerryError(terminal ? 'closed' : 'connection_lost', terminal ? why : `${why}; gave up reconnecting`, { closeCode: code }), true);
  }

  /** Opens the next socket now, when waiting to reconnect (the backoff timer, or the browser is back `online`). */
  private retryNow(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.state === 'reconnecting' && !this.ws) this.openSocket();
  }

  /** Gives up on a socket that seems dead: stop listening, close it with 4100, and carry on as after a network loss. */
  private drop(ws: WebSocketLike, reason: string): void {
    if (ws !== this.ws) return;
    try {
      ws.close(CLIENT_GAVE_UP, reason);
    } catch {
      // already closing
    }
    this.lost(CLIENT_GAVE_UP, reason);
  }

  /** Ends for good on a condition that retrying cannot fix (a refused static token, another protocol version, `unauthorized` from `getToken()`). */
  private stop(err: FerryError): void {
    const ws = this.ws;
    this.detach();
    try {
      ws?.close(1000);
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
    this.requests.lost();
    this.auth.lost();
    this.router.disconnected();
    this.publisher.detach();
  }

  /** Ends everything: state `closed`, every pending promise settled with `err`. */
  private finish(err: FerryError, report: boolean): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    clearTimeout(this.retryTimer);
    (globalThis as Partial<OnlineTarget>).removeEventListener?.('online', this.onOnline);
    this.publisher.rejectAll(err);
    this.router.endAll(err, report);
    this.auth.end(err);
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
      // Ended already (e.g. the socket could not even be created).
      if (this.state === 'closed') return reject(this.ended ?? new FerryError('closed', 'closed before connecting'));
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

  // ---------------------------------------------------------------- plumbing

  private nextId(): string {
    return `${this.idPrefix}-${(++this.idCounter).toString(36)}`;
  }

  private send(frame: ClientFrame): void {
    this.ws?.send(encodeClientFrame(frame));
  }

  /** Sends a request and waits for its reply; rejects on an `error` reply, a timeout, or when the connection drops. */
  private request(frame: ClientFrame & { id: string }): Promise<ServerFrame> {
    return new Promise((resolve, reject) => {
      if (!this.connected) throw new FerryError('not_connected', 'not connected', { requestId: frame.id });
      this.requests.expect(frame.id, this.link.timeoutMs, (reply) => {
        if (reply instanceof FerryError) reject(reply);
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
