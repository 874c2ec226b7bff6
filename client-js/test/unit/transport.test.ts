/** The HTTP transport (`transport: 'sse' | 'auto'`) against a fake gateway's `/sse` and `/v1/publish`. */
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { FerryClient, HttpTransport, httpBase, type FerryClientOptions, type FerryMessage } from '../../src/index.js';
import { FakeGateway, waitFor } from '../support/fake-gateway.js';
import { outcome } from './helpers.js';

/** One `/sse` request and the stream the test writes its events to. */
interface FakeStream {
  url: URL;
  /** The client aborted the request (unsubscribed, or closed). */
  aborted: boolean;
  headers: Record<string, string>;
  push(event: string, data: string, id?: string): void;
  end(): void;
}

/** A fake gateway's HTTP side: records requests, answers publishes, hands streams to the test. */
class FakeHttp {
  readonly streams: FakeStream[] = [];
  readonly publishes: { headers: Record<string, string>; records: Record<string, unknown>[] }[] = [];
  offset = 0;
  /** Status for the next `/sse` requests (200 by default). */
  sseStatus = 200;
  /** With a status other than 200: the refusal's code and `Retry-After` (seconds). */
  sseRefusal: { code: string; retryAfter?: number } = { code: 'forbidden' };
  /** `/sse` requests answered with `sseStatus` so far. */
  refused = 0;

  readonly fetch = (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    const headers = (init.headers ?? {}) as Record<string, string>;
    if (url.pathname === '/v1/publish') {
      const { records } = JSON.parse(init.body as string) as { records: Record<string, unknown>[] };
      this.publishes.push({ headers, records });
      const results = records.map((r) =>
        r.topic === 'forbidden'
          ? { id: r.id, error: { code: 'forbidden', message: 'no' } }
          : { id: r.id, topic: r.topic, partition: 0, offset: this.offset++ },
      );
      return Promise.resolve(Response.json({ results }));
    }
    if (this.sseStatus !== 200) {
      this.refused++;
      const { code, retryAfter } = this.sseRefusal;
      const init = { status: this.sseStatus, headers: retryAfter === undefined ? {} : { 'retry-after': String(retryAfter) } };
      return Promise.resolve(Response.json({ error: { code, message: 'not now' } }, init));
    }
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({ start: (c) => (controller = c) });
    const encoder = new TextEncoder();
    const entry: FakeStream = {
      url,
      headers,
      aborted: false,
      push: (event, data, id) => controller.enqueue(encoder.encode(`event: ${event}\n${id ? `id: ${id}\n` : ''}data: ${data}\n\n: heartbeat\n\n`)),
      end: () => controller.close(),
    };
    init.signal?.addEventListener('abort', () => {
      entry.aborted = true;
      try {
        controller.error(new Error('aborted'));
      } catch {
        // already closed
      }
    });
    this.streams.push(entry);
    return Promise.resolve(new Response(body, { headers: { 'content-type': 'text/event-stream' } }));
  };
}

function message(topic: string, offset: number, value: unknown): string {
  return JSON.stringify({ type: 'message', topic, partition: 0, offset, timestamp: 1, key: null, headers: {}, value });
}

function setupHttp(t: TestContext, options: Partial<FerryClientOptions> = {}) {
  const http = new FakeHttp();
  const hub = new FerryClient({
    url: 'ws://fake:8080/ws',
    transport: 'sse',
    fetch: http.fetch,
    reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    liveness: false,
    ...options,
  });
  t.after(() => hub.close());
  return { http, hub };
}

describe('HTTP transport', () => {
  it('derives the HTTP base from the WebSocket URL', () => {
    assert.equal(httpBase('ws://h:8080/ws'), 'http://h:8080');
    assert.equal(httpBase('wss://h/prefix/ws'), 'https://h/prefix');
    assert.equal(httpBase('https://h/'), 'https://h');
  });

  it('subscribes over SSE and publishes in batches over HTTP, behind the same API', async (t) => {
    const { http, hub } = setupHttp(t);
    const errors: unknown[] = [];
    hub.on('error', (e) => errors.push(e));
    await hub.connect();
    assert.equal(hub.transport, 'sse');
    const got: FerryMessage[] = [];
    const sub = hub.subscribe('t', (m) => got.push(m));
    await waitFor(() => http.streams.length === 1, 1000, 'the stream request');
    const stream = http.streams[0]!;
    assert.equal(stream.url.pathname, '/sse');
    assert.deepEqual(stream.url.searchParams.getAll('topic'), ['t']);
    stream.push('subscribed', JSON.stringify({ topics: { t: { '0': 5 } } }), 'tok-0');
    await sub.ready;
    stream.push('message', message('t', 5, { a: 1 }), 'tok-1');
    stream.push('message', message('t', 6, { a: 2 }), 'tok-2');
    await waitFor(() => got.length === 2, 1000, 'two messages');
    assert.deepEqual(got.map((m) => [m.offset, m.value]), [[5, { a: 1 }], [6, { a: 2 }]]);

    const acks = await Promise.all([hub.publish('t', { n: 1 }, { key: 'k' }), hub.publish('t', new Uint8Array([1, 2]))]);
    assert.equal(http.publishes.length, 1, 'publishes of one tick go in one request');
    const [first, second] = http.publishes[0]!.records;
    assert.deepEqual([first?.topic, first?.key, first?.value], ['t', 'k', { n: 1 }]);
    assert.equal(second?.value_b64, 'AQI=');
    assert.deepEqual(acks.map((a) => a.offset), [0, 1]);
    const refused = await outcome(hub.publish('forbidden', 1));
    assert.equal(refused.ok, false);
    assert.equal(!refused.ok && refused.error.code, 'forbidden');
    assert.deepEqual(errors, [], 'heartbeats and events raise no error');
    await sub.unsubscribe();
    assert.ok(stream.aborted, 'unsubscribing ends the stream request');
  });

  it('reopens a dropped stream from its last token, without duplicates', async (t) => {
    const { http, hub } = setupHttp(t);
    await hub.connect();
    const got: number[] = [];
    const sub = hub.subscribe('t', (m) => got.push(m.offset));
    await waitFor(() => http.streams.length === 1, 1000, 'the stream');
    http.streams[0]!.push('subscribed', JSON.stringify({ topics: { t: { '0': 0 } } }), 'tok-0');
    await sub.ready;
    http.streams[0]!.push('message', message('t', 0, 0), 'tok-1');
    await waitFor(() => got.length === 1, 1000, 'first message');
    http.streams[0]!.end();
    await waitFor(() => http.streams.length === 2, 3000, 'the stream reopened');
    const again = http.streams[1]!;
    assert.equal(again.url.searchParams.get('resume'), 'tok-1');
    again.push('subscribed', JSON.stringify({ topics: { t: { '0': 1 } } }), 'tok-1');
    again.push('message', message('t', 0, 0), 'tok-1');
    again.push('message', message('t', 1, 1), 'tok-2');
    await waitFor(() => got.length === 2, 1000, 'second message');
    assert.deepEqual(got, [0, 1]);
    assert.equal(hub.state, 'open', 'a stream resume is not a reconnect');
  });

  it('a snapshot stream: from=snapshot and throttle_ms, started over when cut before snapshot_end, resumed from its token after', async (t) => {
    const { http, hub } = setupHttp(t);
    await hub.connect();
    const got: FerryMessage[] = [];
    const phases: boolean[] = [];
    const sub = hub.subscribe('t', (m) => got.push(m), { from: 'snapshot', throttleMs: 250, onSnapshot: (s) => phases.push(s) });
    await waitFor(() => http.streams.length === 1, 1000, 'the stream');
    const first = http.streams[0]!;
    assert.equal(first.url.searchParams.get('from'), 'snapshot');
    assert.equal(first.url.searchParams.get('throttle_ms'), '250');
    const snap = (offset: number): string => JSON.stringify({ ...JSON.parse(message('t', offset, offset)), snapshot: true });
    first.push('subscribed', JSON.stringify({ topics: { t: { '0': 3 } } }), 'tok-0');
    await sub.ready;
    first.push('message', snap(1), 'tok-0');
    await waitFor(() => got.length === 1, 1000, 'a snapshot record');
    first.end(); // cut before snapshot_end: not resumable from the token
    await waitFor(() => http.streams.length === 2, 2000, 'a new stream');
    const second = http.streams[1]!;
    assert.equal(second.url.searchParams.get('resume'), null);
    assert.equal(second.url.searchParams.get('from'), 'snapshot');
    second.push('subscribed', JSON.stringify({ topics: { t: { '0': 3 } } }), 'tok-0');
    second.push('message', snap(1), 'tok-0');
    second.push('snapshot_end', JSON.stringify({ type: 'snapshot_end', topic: 't', positions: { '0': 3 } }), 'tok-0');
    second.push('message', message('t', 3, 3), 'tok-1');
    await waitFor(() => got.length === 3, 1000, 'the snapshot again, then live');
    assert.deepEqual(phases, [true, true, false]);
    assert.deepEqual(sub.positions(), { '0': 4 });
    second.end(); // after snapshot_end: reopened from the token
    await waitFor(() => http.streams.length === 3, 2000, 'the reopened stream');
    assert.equal(http.streams[2]!.url.searchParams.get('resume'), 'tok-1');
  });

  it('sends the token as a header, reads its expiry, and refuses groups', async (t) => {
    const exp = Math.floor(Date.now() / 1000) + 3600;
    const payload = Buffer.from(JSON.stringify({ sub: 'alice', exp })).toString('base64url');
    const token = `h.${payload}.s`;
    const { http, hub } = setupHttp(t, { token });
    await hub.connect();
    assert.equal(hub.welcome?.expires_at, exp * 1000);
    assert.equal(hub.welcome?.subject, 'alice');
    const sub = hub.subscribe('t', () => undefined);
    await waitFor(() => http.streams.length === 1, 1000, 'the stream');
    assert.equal(http.streams[0]!.headers.authorization, `Bearer ${token}`);
    http.streams[0]!.push('subscribed', JSON.stringify({ topics: { t: {} } }), 'x');
    await sub.ready;
    await hub.publish('t', 1);
    assert.equal(http.publishes[0]!.headers.authorization, `Bearer ${token}`);
    const group = hub.subscribe('g', () => undefined, { group: 'workers' });
    const r = await outcome(group.ready);
    assert.equal(r.ok, false);
  });

  it('a refused stream rejects its subscription', async (t) => {
    const { http, hub } = setupHttp(t);
    http.sseStatus = 403;
    await hub.connect();
    const r = await outcome(hub.subscribe('t', () => undefined).ready);
    assert.equal(!r.ok && r.error.code, 'forbidden');
  });

  it('a stream refused with 429 `limit` and Retry-After is opened again after that delay', async (t) => {
    const { http, hub } = setupHttp(t);
    http.sseStatus = 429;
    http.sseRefusal = { code: 'limit', retryAfter: 1 };
    await hub.connect();
    const sub = hub.subscribe('t', () => undefined, { from: 'earliest' });
    await waitFor(() => http.refused === 1);
    const refusedAt = Date.now();
    http.sseStatus = 200;
    await waitFor(() => http.streams.length === 1, 3000, 'the stream opened again');
    assert.ok(Date.now() - refusedAt >= 900, 'waited for Retry-After');
    http.streams[0]?.push('subscribed', JSON.stringify({ topics: { t: { '0': 0 } } }), 'tok');
    await sub.ready;
    assert.ok(sub.active);
  });
});

describe('HTTP transport liveness', () => {
  it('a ping finds a silent stream dead; heartbeats keep it alive', async () => {
    const http = new FakeHttp();
    const transport = new HttpTransport('ws://fake/ws', { expectAuth: false, fetch: http.fetch, silenceMs: 100 });
    const frames: Record<string, unknown>[] = [];
    let closed: number | undefined;
    transport.onmessage = (e) => frames.push(JSON.parse(e.data as string) as Record<string, unknown>);
    transport.onclose = (e) => (closed = e.code);
    await waitFor(() => frames.some((f) => f.type === 'welcome'), 1000, 'welcome');
    transport.send(JSON.stringify({ type: 'subscribe', id: 's', topic: 't' }));
    await waitFor(() => http.streams.length === 1, 1000, 'the stream');
    const stream = http.streams[0]!;
    stream.push('subscribed', JSON.stringify({ topics: { t: {} } }), 'x');
    await waitFor(() => frames.some((f) => f.type === 'subscribed'), 1000, 'subscribed');
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 60));
      stream.push('message', message('t', i, i), `x${i}`); // each with a heartbeat line
      await new Promise((r) => setTimeout(r, 10));
      transport.send(JSON.stringify({ type: 'ping', id: `p${i}` }));
    }
    assert.equal(frames.filter((f) => f.type === 'pong').length, 3);
    assert.equal(closed, undefined);
    await new Promise((r) => setTimeout(r, 150));
    transport.send(JSON.stringify({ type: 'ping', id: 'late' }));
    assert.equal(closed, 1006);
  });
});

describe("transport 'auto'", () => {
  it('falls back to HTTP when the WebSocket cannot be opened', async (t) => {
    const http = new FakeHttp();
    class Broken {
      constructor() {
        throw new Error('blocked by policy');
      }
    }
    const hub = new FerryClient({
      url: 'ws://fake/ws',
      transport: 'auto',
      WebSocket: Broken as never,
      fetch: http.fetch,
      liveness: false,
    });
    t.after(() => hub.close());
    await hub.connect();
    assert.equal(hub.transport, 'sse');
  });

  it('falls back when the socket closes before welcome, and keeps a working WebSocket', async (t) => {
    const http = new FakeHttp();
    const silent = new FakeGateway({ auth: { ttlMs: 60_000, timeoutMs: 20 } }); // no welcome without auth
    const hub = new FerryClient({
      url: 'ws://fake/ws',
      transport: 'auto',
      WebSocket: silent.WebSocket,
      fetch: http.fetch,
      liveness: false,
      connectTimeoutMs: 50,
    });
    t.after(() => hub.close());
    await hub.connect();
    assert.equal(hub.transport, 'sse');

    const gw = new FakeGateway();
    const ws = new FerryClient({ url: 'ws://fake/ws', transport: 'auto', WebSocket: gw.WebSocket, fetch: http.fetch, liveness: false });
    t.after(() => ws.close());
    await ws.connect();
    assert.equal(ws.transport, 'websocket');
  });
});
