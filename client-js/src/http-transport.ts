/**
 * The HTTP transport: protocol v1 over the gateway's plain HTTP endpoints,
 * for networks where WebSockets do not get through (proxies that break
 * them). It looks like a WebSocket to {@link FerryClient}, so everything
 * above it (resume, offline queue, retries, token refresh) is the same:
 *
 * - `subscribe` opens `GET /sse?topic=...` (one stream per topic, read with
 *   `fetch`, so the token goes in the `Authorization` header); its
 *   `subscribed` event answers the frame, `message`, `snapshot_end` and
 *   `gap` events are the protocol's frames. A `from=snapshot` stream lost
 *   before `snapshot_end` closes the transport (the client asks for the
 *   snapshot again) rather than resume live from its token. A stream that ends is reopened with its last resume
 *   token (`resume=`, the event `id:`): no gap, no duplicate. When it cannot
 *   be reopened the transport closes with 1006 and the client reconnects,
 *   resubscribing from its offsets as over a WebSocket.
 * - `publish` frames of one tick go together to `POST /v1/publish`; each
 *   result becomes an `ack` or an `error` frame. A request whose outcome is
 *   unknown (network failure) closes the transport: the client resends the
 *   publishes with the same ids, which the gateway de-duplicates.
 * - `ping`, `auth` (kept for the next requests) and `unsubscribe` are
 *   answered locally. Shared groups (`group`, `commit`) need a WebSocket.
 *
 * Browsers open at most about six HTTP/1.1 connections per host: keep to a
 * few topics per client on this transport.
 */

import type { WebSocketLike } from './options.js';

/** The `fetch` function (global in browsers and Node 18+). */
export type FetchLike = typeof globalThis.fetch;

/** Records per `POST /v1/publish`. */
const MAX_BATCH = 500;
/** Consecutive failures to reopen a stream before the transport closes. */
const MAX_STREAM_RETRIES = 3;

/** Options of {@link HttpTransport}. */
export interface HttpTransportOptions {
  /** The client sends `auth` first: `welcome` waits for it. */
  expectAuth: boolean;
  fetch: FetchLike;
  /** Delay before a dropped stream is reopened from its token, in ms. Default 1 000. */
  retryMs?: number;
  /**
   * A `ping` finds the connection dead when a stream has sent nothing (not
   * even a heartbeat) for this long, in ms. Default 45 000 (three of the
   * gateway's default `sse.heartbeat_ms`).
   */
  silenceMs?: number;
}

type Frame = Record<string, unknown>;
type ErrorBody = { error?: { code?: string; message?: string } };

/** `ws(s)://host[:port]/ws` (or an `http(s)://` URL) → `http(s)://host[:port]`, the base of `/sse` and `/v1/publish`. */
export function httpBase(url: string): string {
  const u = new URL(url);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  if (u.protocol === 'wss:') u.protocol = 'https:';
  const path = u.pathname.replace(/\/ws\/?$/, '').replace(/\/$/, '');
  return `${u.protocol}//${u.host}${path}`;
}

/** A JWT's claims (unverified; only to read `exp` and `sub`). */
function claims(token: string | undefined): { exp?: number; sub?: string } {
  try {
    const part = (token ?? '').split('.')[1] ?? '';
    return JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/'))) as { exp?: number; sub?: string };
  } catch {
    return {};
  }
}

/** A WebSocket look-alike over `GET /sse` and `POST /v1/publish`. */
export class HttpTransport implements WebSocketLike {
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  private readonly base: string;
  private readonly fetch: FetchLike;
  private readonly retryMs: number;
  private readonly silenceMs: number;
  private readonly streams = new Map<string, TopicStream>();
  private readonly aborts = new AbortController();
  private token: string | undefined;
  private welcomed = false;
  private closed = false;
  private batch: Frame[] = [];
  private batchTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(url: string, options: HttpTransportOptions) {
    this.base = httpBase(url);
    this.fetch = options.fetch;
    this.retryMs = options.retryMs ?? 1_000;
    this.silenceMs = options.silenceMs ?? 45_000;
    setTimeout(() => {
      if (this.closed) return;
      this.onopen?.({});
      if (!options.expectAuth) this.welcome();
    }, 0);
  }

  send(data: string): void {
    if (this.closed) return;
    const frame = JSON.parse(data) as Frame;
    const id = frame.id as string | undefined;
    switch (frame.type) {
      case 'auth':
        this.token = frame.token as string;
        if (!this.welcomed) this.welcome();
        else this.deliver({ type: 'authed', id, expires_at: this.expiresAt() });
        return;
      case 'publish':
        return this.queue(frame);
      case 'subscribe':
        return this.subscribe(frame);
      case 'unsubscribe':
        this.streams.get(frame.topic as string)?.stop();
        this.streams.delete(frame.topic as string);
        return this.deliver({ type: 'unsubscribed', id, topic: frame.topic });
      case 'ping':
        // The streams are the connection: a silent one means a dead network.
        for (const stream of this.streams.values()) {
          if (stream.silentFor() > this.silenceMs) return this.fail(1006, 'an event stream went silent');
        }
        return this.deliver({ type: 'pong', id });
      default:
        return this.deliver({ type: 'error', id, code: 'bad_request', message: `${String(frame.type)} needs a WebSocket` });
    }
  }

  close(code = 1000, reason = ''): void {
    if (this.closed) return;
    this.shutdown();
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }

  // ---------------------------------------------------------------- for streams

  /** Sends a frame (text as the gateway would) to the client. */
  deliver(frame: Frame | string): void {
    if (this.closed) return;
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }

  /** Ends the transport as a lost connection would. */
  fail(code: number, reason: string): void {
    if (this.closed) return;
    this.shutdown();
    this.onclose?.({ code, reason });
  }

  request(path: string, init: RequestInit = {}): Promise<Response> {
    const headers: Record<string, string> = { ...(init.headers as Record<string, string>) };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const signal = init.signal ?? this.aborts.signal;
    return this.fetch(`${this.base}${path}`, { ...init, headers, cache: 'no-store', signal });
  }

  get retryDelayMs(): number {
    return this.retryMs;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---------------------------------------------------------------- internals

  private welcome(): void {
    this.welcomed = true;
    this.deliver({
      type: 'welcome',
      protocol: 1,
      session: `http-${Math.random().toString(36).slice(2)}`,
      node: this.base,
      limits: { max_frame_bytes: 1 << 20, max_inflight_publishes: 1_000, max_subscriptions: 100 },
      subject: claims(this.token).sub,
      expires_at: this.expiresAt(),
      capabilities: ['auth', 'filter', 'from', 'snapshot', 'throttle'],
    });
  }

  private expiresAt(): number | undefined {
    const exp = claims(this.token).exp;
    return typeof exp === 'number' ? exp * 1000 : undefined;
  }

  private shutdown(): void {
    this.closed = true;
    clearTimeout(this.batchTimer);
    for (const stream of this.streams.values()) stream.stop();
    this.streams.clear();
    this.aborts.abort();
  }

  private subscribe(frame: Frame): void {
    const topic = frame.topic as string;
    if (frame.group !== undefined) {
      return this.deliver({ type: 'error', id: frame.id, code: 'bad_request', message: 'shared groups need a WebSocket' });
    }
    this.streams.get(topic)?.stop();
    const stream = new TopicStream(this, frame);
    this.streams.set(topic, stream);
    stream.open(undefined);
  }

  private queue(frame: Frame): void {
    const { type: _type, ...record } = frame;
    this.batch.push(record);
    if (this.batch.length >= MAX_BATCH) this.flush();
    else this.batchTimer ??= setTimeout(() => this.flush(), 0);
  }

  private flush(): void {
    clearTimeout(this.batchTimer);
    this.batchTimer = undefined;
    const records = this.batch;
    this.batch = [];
    if (records.length === 0) return;
    const init = { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ records }) };
    this.request('/v1/publish', init).then(
      async (response) => {
        const body = (await response.json().catch(() => ({}))) as ErrorBody & { results?: Frame[] };
        if (response.ok && Array.isArray(body.results)) {
          for (const result of body.results) {
            const error = result.error as { code: string; message: string } | undefined;
            this.deliver(error ? { type: 'error', id: result.id, ...error } : { type: 'ack', ...result });
          }
          return;
        }
        const retry = Number(response.headers.get('retry-after'));
        const code = body.error?.code ?? (response.status >= 500 ? 'unavailable' : 'bad_request');
        const message = body.error?.message ?? `HTTP ${response.status}`;
        for (const record of records) {
          this.deliver({ type: 'error', id: record.id, code, message, retry_after_ms: retry > 0 ? retry * 1000 : undefined });
        }
      },
      () => this.fail(1006, 'a publish request failed; its outcome is unknown'),
    );
  }
}

/** One topic's event stream. */
class TopicStream {
  private lastId: string | undefined;
  private lastHeard = Date.now();
  private subscribed = false;
  /** A `from=snapshot` stream got its `snapshot_end`: reopening from the token is safe. */
  private synced = false;
  private stopped = false;
  private failures = 0;
  private readonly aborts = new AbortController();

  constructor(
    private readonly transport: HttpTransport,
    private readonly frame: Frame,
  ) {}

  stop(): void {
    this.stopped = true;
    this.aborts.abort();
  }

  /** How long since the stream last sent anything (heartbeats count), in ms. */
  silentFor(): number {
    return Date.now() - this.lastHeard;
  }

  open(resume: string | undefined): void {
    const { topic, from, filter, throttle_ms } = this.frame;
    const query = new URLSearchParams({ topic: topic as string });
    if (resume) query.set('resume', resume);
    else if (from !== undefined) query.set('from', typeof from === 'string' ? from : JSON.stringify(from));
    if (filter !== undefined) query.set('filter', JSON.stringify(filter));
    if (throttle_ms !== undefined) query.set('throttle_ms', JSON.stringify(throttle_ms));
    const init: RequestInit = { headers: { accept: 'text/event-stream' }, signal: this.aborts.signal };
    this.transport.request(`/sse?${query.toString()}`, init).then(
      (response) => this.read(response),
      () => this.dropped(),
    );
  }

  private async read(response: Response): Promise<void> {
    if (!response.ok || !response.body) {
      const body = (await response.json().catch(() => ({}))) as ErrorBody;
      const code = body.error?.code ?? 'unavailable';
      const message = body.error?.message ?? `HTTP ${response.status}`;
      if (!this.subscribed) {
        // `Retry-After` (seconds) comes with a refusal that waiting can lift (429 `limit`, 503).
        const retry = Number(response.headers.get('retry-after'));
        return this.transport.deliver({ type: 'error', id: this.frame.id, code, message, retry_after_ms: retry > 0 ? retry * 1000 : undefined });
      }
      // A resume refused: start over on a new connection (a 401 as an expired token).
      return this.transport.fail(response.status === 401 ? 4002 : 1006, message);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        this.lastHeard = Date.now();
        buffer += value;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          this.event(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch {
      // dropped: below
    }
    this.dropped();
  }

  /** One event block (`event:`, `data:`, `id:` lines; `:` comments are heartbeats). */
  private event(block: string): void {
    let kind = 'message';
    let id: string | undefined;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      const colon = line.indexOf(':');
      if (colon === 0 || line === '') continue;
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (name === 'event') kind = value;
      else if (name === 'data') data.push(value);
      else if (name === 'id') id = value;
    }
    // As in EventSource: a block without data (a heartbeat comment) is no event.
    if (data.length === 0 || this.stopped || this.transport.isClosed) return;
    const text = data.join('\n');
    if (id !== undefined) this.lastId = id;
    this.failures = 0;
    if (kind === 'subscribed') {
      if (this.subscribed) return;
      this.subscribed = true;
      const topics = (JSON.parse(text) as { topics: Record<string, Record<string, number>> }).topics;
      this.transport.deliver({ type: 'subscribed', id: this.frame.id, topic: this.frame.topic, partitions: topics[this.frame.topic as string] });
    } else if (kind === 'message' || kind === 'gap' || kind === 'snapshot_end') {
      if (kind === 'snapshot_end') this.synced = true;
      this.transport.deliver(text);
    } else if (kind === 'close' && text.includes('token_expired')) {
      this.transport.fail(4002, 'token expired');
    }
  }

  /** The stream ended: reopen it from its token, or give the connection up. */
  private dropped(): void {
    if (this.stopped || this.transport.isClosed) return;
    // A snapshot cut short cannot be resumed from a token (it would go on live): start over on a new connection.
    const partial = this.frame.from === 'snapshot' && !this.synced;
    if (!this.subscribed || partial || ++this.failures > MAX_STREAM_RETRIES) {
      return this.transport.fail(1006, `the event stream of ${String(this.frame.topic)} was lost`);
    }
    setTimeout(() => {
      if (!this.stopped && !this.transport.isClosed) this.open(this.lastId);
    }, this.transport.retryDelayMs);
  }
}
