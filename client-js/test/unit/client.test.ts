/** Connection lifecycle, publishes, the offline queue and reconnect, against the fake gateway. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FerryClient, FerryError, MemoryStorage, type FerryMessage, type RestoredPublishResult, type UrlContext, type WebSocketConstructor } from '../../src/index.js';
import { FakeGateway, sleep, waitFor } from '../support/fake-gateway.js';
import { outcome, setup } from './helpers.js';

describe('connection', () => {
  it('connects, offers ferry.v1 and reports states and welcome', async (t) => {
    const { gw, hub, states } = setup(t);
    const welcomes: string[] = [];
    hub.on('welcome', (w) => welcomes.push(w.session));
    assert.equal(hub.state, 'closed');
    await hub.connect();
    assert.equal(hub.state, 'open');
    assert.deepEqual(states, ['connecting', 'open']);
    assert.deepEqual(gw.last.protocols, ['ferry.v1']);
    assert.deepEqual(welcomes, ['s1']);
    assert.equal(hub.limits?.max_inflight_publishes, 1000);
    await hub.close();
    assert.equal(hub.state, 'closed');
    assert.deepEqual(states, ['connecting', 'open', 'closed']);
  });

  it('needs a WebSocket implementation', () => {
    const saved = (globalThis as { WebSocket?: unknown }).WebSocket;
    (globalThis as { WebSocket?: unknown }).WebSocket = undefined;
    try {
      assert.throws(() => new FerryClient({ url: 'ws://x' }), /options\.WebSocket/);
    } finally {
      (globalThis as { WebSocket?: unknown }).WebSocket = saved;
    }
  });

  for (const code of [1001, 1006, 1011, 1012, 1013, 4000, 4001, 4002, 4499]) {
    it(`reconnects after close code ${code}`, async (t) => {
      const { gw, hub, states } = setup(t);
      await hub.connect();
      const disconnects: number[] = [];
      hub.on('disconnect', (d) => disconnects.push(d.code));
      gw.last.close(code);
      await waitFor(() => gw.connections.length === 2 && hub.state === 'open', 2000, 'reconnect');
      assert.deepEqual(disconnects, [code]);
      assert.deepEqual(states, ['connecting', 'open', 'reconnecting', 'open']);
    });
  }

  for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 4500, 4999]) {
    it(`never reconnects after terminal close code ${code}`, async (t) => {
      const { gw, hub, errors } = setup(t);
      await hub.connect();
      gw.last.close(code, 'bye');
      await waitFor(() => hub.state === 'closed');
      await sleep(40);
      assert.equal(gw.connections.length, 1);
      assert.equal(errors.length, 1);
      assert.equal(errors[0]?.code, 'closed');
      assert.equal(errors[0]?.closeCode, code);
      // A publish now rejects at once.
      const r = await outcome(hub.publish('t', 1));
      assert.ok(!r.ok && r.error.code === 'closed');
    });
  }

  it('retries with backoff while the gateway is down, then connects', async (t) => {
    const { gw, hub, states } = setup(t);
    gw.refuse = true;
    const connected = hub.connect();
    await sleep(60);
    assert.equal(hub.state, 'reconnecting');
    assert.deepEqual(states, ['connecting', 'reconnecting']);
    gw.refuse = false;
    await connected;
    assert.equal(hub.state, 'open');
  });

  it('gives up after reconnect.maxAttempts and rejects connect()', async (t) => {
    const { gw, hub, errors } = setup(t, {}, { reconnect: { initialDelayMs: 1, maxDelayMs: 2, maxAttempts: 3 } });
    gw.refuse = true;
    const r = await outcome(hub.connect());
    assert.ok(!r.ok);
    assert.equal(r.error.code, 'connection_lost');
    assert.equal(hub.state, 'closed');
    assert.equal(errors.at(-1)?.code, 'connection_lost');
  });

  it('does not reconnect with reconnect: false', async (t) => {
    const { gw, hub } = setup(t, {}, { reconnect: false });
    await hub.connect();
    gw.last.close(1006);
    await waitFor(() => hub.state === 'closed');
    assert.equal(gw.connections.length, 1);
  });

  it('gives up on a connection that sends no welcome in time', async (t) => {
    const { gw, hub } = setup(t, {}, { connectTimeoutMs: 30 });
    gw.autoWelcome = false;
    void hub.connect();
    await waitFor(() => gw.connections.length >= 2, 2000, 'second attempt');
    gw.autoWelcome = true;
    await waitFor(() => hub.state === 'open', 2000, 'open');
  });

  it('detects a dead connection by missing pongs and reconnects', async (t) => {
    const { gw, hub } = setup(t, {}, { liveness: { pingIntervalMs: 20, pongTimeoutMs: 30 } });
    await hub.connect();
    await waitFor(() => gw.last.of('ping').length >= 1, 1000, 'a ping');
    gw.last.silent = true; // the link is dead: nothing comes back
    await waitFor(() => gw.connections.length === 2 && hub.state === 'open', 2000, 'reconnect after silence');
    assert.ok(gw.connections[0]?.closed);
  });

  it('keeps a quiet but live connection (pongs answer pings)', async (t) => {
    const { gw, hub } = setup(t, {}, { liveness: { pingIntervalMs: 10, pongTimeoutMs: 20 } });
    await hub.connect();
    await sleep(120);
    assert.equal(gw.connections.length, 1);
    assert.ok(gw.last.of('ping').length >= 3);
  });

  it('does not ping while traffic flows', async (t) => {
    const { gw, hub } = setup(t, {}, { liveness: { pingIntervalMs: 200, pongTimeoutMs: 200 } });
    await hub.connect();
    hub.subscribe('busy', () => undefined);
    const timer = setInterval(() => gw.produce('busy', 1), 10);
    await sleep(700);
    clearInterval(timer);
    assert.equal(gw.last.of('ping').length, 0);
  });

  it('measures a ping round trip', async (t) => {
    const { hub } = setup(t);
    await hub.connect();
    const rtt = await hub.ping();
    assert.ok(rtt >= 0 && rtt < 1000);
  });

  it('reports gateway errors without id on the error event', async (t) => {
    const { gw, hub, errors } = setup(t);
    await hub.connect();
    gw.last.send({ type: 'error', code: 'internal', message: 'oops' });
    await waitFor(() => errors.length === 1);
    assert.equal(errors[0]?.code, 'internal');
    assert.equal(hub.state, 'open');
  });

  it('can connect again after close()', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    await hub.close();
    await hub.connect();
    assert.equal(hub.state, 'open');
    assert.equal(gw.connections.length, 2);
    assert.ok(await hub.publish('t', 1));
  });
});

describe('close codes an operator sends (admin API)', () => {
  const key = (m: FerryMessage): string => `${m.partition}/${m.offset}`;

  for (const [code, name] of [
    [4006, 'disconnected'],
    [1012, 'service_restart'],
  ] as const) {
    it(`${code} ${name}: reconnects and resumes from the positions after the last delivered records`, async (t) => {
      const { gw, hub, errors } = setup(t);
      const got: FerryMessage[] = [];
      const disconnects: { code: number; reason: string; willReconnect: boolean }[] = [];
      hub.on('disconnect', (d) => disconnects.push(d));
      const sub = hub.subscribe('s', (m) => got.push(m));
      await hub.connect();
      await sub.ready;
      for (let i = 0; i < 12; i++) gw.produce('s', { i });
      await waitFor(() => got.length === 12, 2000, '12 records');
      gw.last.close(code, name);
      // Produced while the client is away: owed on the next connection.
      for (let i = 12; i < 24; i++) gw.produce('s', { i });
      await waitFor(() => gw.connections.length === 2 && hub.state === 'open', 2000, 'reconnected');
      for (let i = 24; i < 30; i++) gw.produce('s', { i });
      await waitFor(() => got.length >= 30, 2000, '30 records');
      await sleep(20);
      assert.deepEqual(disconnects, [{ code, reason: name, willReconnect: true }]);
      assert.deepEqual(gw.last.of('subscribe')[0]?.from, { offsets: { '0': 4, '1': 4, '2': 4 } }, 'resumed after the last delivered records');
      assert.equal(got.length, 30);
      assert.equal(new Set(got.map(key)).size, 30, 'no duplicate');
      assert.deepEqual(got.map((m) => (m.value as { i: number }).i).sort((a, b) => a - b), Array.from({ length: 30 }, (_, i) => i), 'no gap');
      assert.deepEqual(errors, []);
    });

    it(`${code} ${name}: a crowd closed at the same instant comes back spread over the backoff window (jitter)`, async (t) => {
      const gw = new FakeGateway();
      const WINDOW_MS = 400;
      const hubs = Array.from(
        { length: 16 },
        () => new FerryClient({ url: 'ws://fake/ws', WebSocket: gw.WebSocket, reconnect: { initialDelayMs: WINDOW_MS, maxDelayMs: WINDOW_MS }, liveness: false }),
      );
      t.after(() => Promise.all(hubs.map((h) => h.close())));
      await Promise.all(hubs.map((h) => h.connect()));
      const back: number[] = [];
      for (const h of hubs) h.on('welcome', () => back.push(Date.now()));
      const closedAt = Date.now();
      for (const conn of [...gw.connections]) conn.close(code, name);
      await waitFor(() => back.length === hubs.length, 10_000, 'every client back');
      const delays = back.map((at) => at - closedAt).sort((a, b) => a - b);
      const spread = (delays.at(-1) as number) - (delays[0] as number);
      // 16 uniform delays in [0, 400) ms all within 100 ms of each other: odds about 1e-8.
      assert.ok(spread >= 100, `reconnects spread over the window, not at one instant (delays ${delays.join(', ')} ms)`);
      assert.ok(new Set(delays).size >= 8, `distinct delays (${delays.join(', ')} ms)`);
    });
  }

  it('4502 revoked: terminal, no reconnect; the error, the disconnect and the subscriptions report the revocation', async (t) => {
    const { gw, hub, errors } = setup(t);
    const disconnects: { code: number; reason: string; willReconnect: boolean }[] = [];
    hub.on('disconnect', (d) => disconnects.push(d));
    const subErrors: FerryError[] = [];
    const sub = hub.subscribe('s', () => undefined, { onError: (e) => subErrors.push(e) });
    await hub.connect();
    await sub.ready;
    const inFlight = outcome(hub.publish('s', { late: true }));
    gw.last.close(4502, 'revoked');
    await waitFor(() => hub.state === 'closed', 2000, 'closed');
    await sleep(60); // a reconnect would have happened by now (backoff at most 20 ms)
    assert.equal(gw.connections.length, 1, 'no reconnect');
    assert.deepEqual(disconnects, [{ code: 4502, reason: 'revoked', willReconnect: false }]);
    assert.equal(errors.length, 1);
    assert.equal(errors[0]?.code, 'closed');
    assert.equal(errors[0]?.closeCode, 4502);
    assert.match(errors[0]?.message ?? '', /4502 revoked/);
    assert.equal(subErrors[0]?.closeCode, 4502);
    const r = await inFlight;
    assert.ok(r.ok || (r.error.code === 'closed' && r.error.closeCode === 4502), 'a publish not acked rejects with the revocation');
    const after = await outcome(hub.publish('s', 1));
    assert.ok(!after.ok && after.error.code === 'closed');
  });
});

describe('several gateway nodes (url list or function)', () => {
  /**
   * Two "nodes", ws://a/ws and ws://b/ws, in front of one fake gateway (one
   * Kafka); a node in `down` refuses new sockets.
   */
  function nodes() {
    const gw = new FakeGateway();
    const dead = new FakeGateway();
    dead.refuse = true;
    const down = new Set<string>();
    const attempts: string[] = [];
    class Routed {
      constructor(url: string, protocols?: string | string[]) {
        attempts.push(url);
        return new (down.has(url) ? dead.WebSocket : gw.WebSocket)(url, protocols);
      }
    }
    return { gw, down, attempts, WebSocket: Routed as unknown as WebSocketConstructor };
  }

  it('starts on the first URL and moves to the next after a lost connection; subscriptions resume there', async (t) => {
    const { gw, down, attempts, WebSocket } = nodes();
    const hub = new FerryClient({ url: ['ws://a/ws', 'ws://b/ws'], WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 20 }, liveness: false });
    t.after(() => hub.close());
    const got: FerryMessage[] = [];
    const sub = hub.subscribe('s', (m) => got.push(m));
    await hub.connect();
    await sub.ready;
    assert.equal(gw.last.socket.url, 'ws://a/ws');
    for (let i = 0; i < 9; i++) gw.produce('s', i);
    await waitFor(() => got.length === 9);
    // Node a dies: the next attempt goes to b at once.
    down.add('ws://a/ws');
    gw.last.close(1006);
    for (let i = 9; i < 18; i++) gw.produce('s', i);
    await waitFor(() => got.length === 18, 2000, 'resumed on b');
    assert.deepEqual(attempts, ['ws://a/ws', 'ws://b/ws']);
    assert.equal(gw.last.socket.url, 'ws://b/ws');
    assert.deepEqual(gw.last.of('subscribe')[0]?.from, { offsets: { '0': 3, '1': 3, '2': 3 } });
    assert.equal(new Set(got.map((m) => `${m.partition}/${m.offset}`)).size, 18);
    // b dies while a is still down: the client goes round the list until one answers.
    down.add('ws://b/ws');
    gw.last.close(1006);
    await waitFor(() => attempts.length >= 5, 2000, 'attempts on both dead nodes');
    assert.deepEqual(attempts.slice(2, 5), ['ws://a/ws', 'ws://b/ws', 'ws://a/ws']);
    down.delete('ws://a/ws');
    await waitFor(() => hub.state === 'open' && gw.last.socket.url === 'ws://a/ws', 2000, 'back on a');
    // close() then connect() starts over from the first URL.
    await hub.close();
    down.clear();
    await hub.connect();
    assert.equal(attempts.at(-1), 'ws://a/ws');
  });

  it('asks a url function before each attempt, with the attempt number and the previous URL', async (t) => {
    const { gw, down, WebSocket } = nodes();
    const calls: UrlContext[] = [];
    const pick = (context: UrlContext): string => {
      calls.push(context);
      return context.attempt < 2 ? 'ws://a/ws' : 'ws://b/ws';
    };
    const hub = new FerryClient({ url: pick, WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 20 }, liveness: false });
    t.after(() => hub.close());
    await hub.connect();
    assert.deepEqual(calls, [{ attempt: 0, previous: undefined }]);
    down.add('ws://a/ws');
    gw.last.close(1006);
    await waitFor(() => hub.state === 'open' && gw.last.socket.url === 'ws://b/ws', 2000, 'on b');
    assert.deepEqual(calls.slice(1), [
      { attempt: 1, previous: 'ws://a/ws' },
      { attempt: 2, previous: 'ws://a/ws' },
    ]);
  });

  it('refuses an empty list; a url function that throws closes the client with its error', async (t) => {
    const { WebSocket } = nodes();
    assert.throws(() => new FerryClient({ url: [], WebSocket }), TypeError);
    const hub = new FerryClient({
      url: () => {
        throw new Error('no gateway registered');
      },
      WebSocket,
    });
    const errors: FerryError[] = [];
    hub.on('error', (e) => errors.push(e));
    t.after(() => hub.close());
    const r = await outcome(hub.connect());
    assert.ok(!r.ok && r.error.code === 'closed' && /no gateway registered/.test(r.error.message));
    assert.equal(hub.state, 'closed');
    assert.equal(errors.length, 1);
  });
});

describe('publish', () => {
  it('resolves with the ack once stored, as JSON, bytes, key, headers and partition', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const ack = await hub.publish('telemetry', { temp: 21.5 }, { key: 'dev-1', headers: { h: 'v' } });
    assert.equal(ack.topic, 'telemetry');
    assert.equal(typeof ack.partition, 'number');
    assert.equal(ack.offset, 0);
    const bin = await hub.publish('bin', new Uint8Array([0xff, 0, 1]), { key: new Uint8Array([0xc3, 0x28]), partition: 2 });
    assert.deepEqual(bin, { topic: 'bin', partition: 2, offset: 0 });
    const frames = gw.last.of('publish');
    assert.deepEqual(frames[0]?.value, { temp: 21.5 });
    assert.equal(frames[1]?.value_b64, '/wAB');
    assert.equal(frames[1]?.key_b64, 'wyg=');
    const [rec] = gw.records('bin');
    assert.deepEqual(rec?.value, new Uint8Array([0xff, 0, 1]));
  });

  it('rejects with a typed FerryError carrying the gateway code', async (t) => {
    const { hub } = setup(t, { unknownTopics: ['nope'] });
    await hub.connect();
    const r = await outcome(hub.publish('nope', 1));
    assert.ok(!r.ok);
    assert.ok(r.error instanceof FerryError);
    assert.equal(r.error.code, 'unknown_topic');
    assert.ok(r.error.requestId);
    assert.equal(hub.state, 'open');
  });

  it('refuses an invalid topic locally, sending nothing', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const r = await outcome(hub.publish('a b', 1));
    assert.ok(!r.ok && r.error.code === 'invalid_topic');
    await sleep(5);
    assert.equal(gw.last.of('publish').length, 0);
  });

  it('refuses a frame over max_frame_bytes locally instead of getting closed with 1009', async (t) => {
    const { gw, hub } = setup(t, { limits: { max_frame_bytes: 200 } });
    await hub.connect();
    const r = await outcome(hub.publish('t', 'x'.repeat(500)));
    assert.ok(!r.ok && r.error.code === 'too_large');
    assert.ok(await hub.publish('t', 'small'));
    assert.equal(gw.last.of('publish').length, 1);
    assert.equal(hub.state, 'open');
  });

  it('keeps at most max_inflight_publishes unacked', async (t) => {
    const { gw, hub } = setup(t, { limits: { max_inflight_publishes: 3 }, ackDelayMs: 5 });
    await hub.connect();
    let peak = 0;
    const timer = setInterval(() => {
      const conn = gw.last;
      peak = Math.max(peak, conn.of('publish').length - conn.acksSent);
    }, 1);
    const acks = await Promise.all(Array.from({ length: 20 }, (_, i) => hub.publish('t', i)));
    clearInterval(timer);
    assert.equal(acks.length, 20);
    assert.equal(peak, 3, `peak in flight ${peak}`);
    assert.equal(gw.records('t').length, 20);
  });

  it('paces publishes to limits.publish_rate / publish_burst', async (t) => {
    const { gw, hub } = setup(t, { limits: { publish_rate: 100, publish_burst: 5 } });
    await hub.connect();
    const started = Date.now();
    const pending = Array.from({ length: 15 }, (_, i) => hub.publish('t', i));
    await sleep(20);
    assert.ok(gw.last.of('publish').length <= 7, `burst: ${gw.last.of('publish').length}`);
    await Promise.all(pending);
    // 5 at once, then 10 more at 100/s: at least ~100 ms.
    assert.ok(Date.now() - started >= 90, `took ${Date.now() - started} ms`);
  });

  it('sends a rate_limited publish again once the announced rate allows (same id, settled once)', async (t) => {
    // The gateway sends no retry_after_ms with rate_limited: the client waits
    // for one token of limits.publish_rate (here 1000/50 = 20 ms).
    const { gw, hub } = setup(t, { limits: { publish_rate: 50, publish_burst: 5 } });
    let refusedAt = 0;
    gw.intercept = (conn, f) => {
      if (f.type !== 'publish' || refusedAt > 0) return false;
      refusedAt = Date.now();
      conn.send({ type: 'error', id: f.id, code: 'rate_limited', message: 'slow down' });
      return true;
    };
    await hub.connect();
    const ack = await hub.publish('t', 1);
    assert.ok(Date.now() - refusedAt >= 15, `resent after ${Date.now() - refusedAt} ms`);
    const ids = gw.last.of('publish').map((f) => f.id);
    assert.equal(ids.length, 2);
    assert.equal(ids[0], ids[1]);
    assert.equal(ack.offset, 0);
  });

  it('uses a caller-chosen id, and refuses an invalid one', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    await hub.publish('t', 1, { id: 'order-42' });
    assert.equal(gw.last.of('publish')[0]?.id, 'order-42');
    const r = await outcome(hub.publish('t', 1, { id: 'x'.repeat(65) }));
    assert.ok(!r.ok && r.error.code === 'bad_request');
  });

  it('settles each promise exactly once, ignoring repeated replies', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const p = hub.publish('t', 1);
    const ack = await p;
    const id = gw.last.of('publish')[0]?.id as string;
    gw.last.send({ type: 'ack', id, topic: 't', partition: 0, offset: 99 });
    gw.last.send({ type: 'error', id, code: 'internal', message: 'late' });
    await sleep(10);
    assert.equal(ack.offset, 0);
    assert.equal(await p, ack);
  });
});

describe('offline queue', () => {
  it('queues publishes made before connecting and sends them on connect', async (t) => {
    const { gw, hub } = setup(t);
    const pending = [hub.publish('t', 'a'), hub.publish('t', 'b')];
    assert.equal(hub.queued, 2);
    await hub.connect();
    const acks = await Promise.all(pending);
    assert.equal(acks.length, 2);
    assert.equal(hub.queued, 0);
    assert.equal(gw.records('t').length, 2);
  });

  it('queues while disconnected and flushes on reconnect with original ids and no duplicates', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    gw.refuse = true;
    gw.last.close(1006);
    await waitFor(() => hub.state === 'reconnecting');
    const pending = Array.from({ length: 10 }, (_, i) => hub.publish('t', { i }));
    await sleep(30);
    assert.equal(hub.queued, 10);
    gw.refuse = false;
    const acks = await Promise.all(pending);
    assert.equal(new Set(acks.map((a) => `${a.partition}/${a.offset}`)).size, 10);
    const records = gw.records('t');
    assert.equal(records.length, 10);
    assert.deepEqual(
      records.map((r) => JSON.parse(Buffer.from(r.value).toString()) as { i: number }).sort((a, b) => a.i - b.i),
      Array.from({ length: 10 }, (_, i) => ({ i })),
    );
  });

  it('resends publishes in flight at a disconnect with the same id (stored once)', async (t) => {
    const { gw, hub } = setup(t, { ackDelayMs: 50 });
    await hub.connect();
    const p = hub.publish('t', 'x');
    await waitFor(() => gw.records('t').length === 1); // stored, ack not yet sent
    gw.last.close(1012);
    const ack = await p;
    const ids = gw.connections.flatMap((c) => c.of('publish').map((f) => f.id));
    assert.equal(ids.length, 2);
    assert.equal(ids[0], ids[1]);
    assert.equal(gw.records('t').length, 1);
    assert.equal(ack.offset, 0);
  });

  it('rejects in-flight publishes with connection_lost when resendInFlight is false', async (t) => {
    const { gw, hub } = setup(t, { ackDelayMs: 50 }, { resendInFlight: false });
    await hub.connect();
    const p = outcome(hub.publish('t', 'x'));
    await waitFor(() => gw.records('t').length === 1);
    gw.last.close(1012);
    const r = await p;
    assert.ok(!r.ok && r.error.code === 'connection_lost');
  });

  it('overflow reject-new: the new publish rejects with queue_full', async (t) => {
    const { hub } = setup(t, {}, { offlineQueue: { maxSize: 2 } });
    const a = outcome(hub.publish('t', 1));
    const b = outcome(hub.publish('t', 2));
    const c = await outcome(hub.publish('t', 3));
    assert.ok(!c.ok && c.error.code === 'queue_full');
    await hub.connect();
    assert.ok((await a).ok && (await b).ok);
  });

  it('overflow drop-oldest: the oldest queued publish rejects with queue_full', async (t) => {
    const { gw, hub } = setup(t, {}, { offlineQueue: { maxSize: 2, overflow: 'drop-oldest' } });
    const a = outcome(hub.publish('t', 1));
    const b = outcome(hub.publish('t', 2));
    const c = outcome(hub.publish('t', 3));
    const ra = await a;
    assert.ok(!ra.ok && ra.error.code === 'queue_full');
    await hub.connect();
    assert.ok((await b).ok && (await c).ok);
    assert.equal(gw.records('t').length, 2);
  });

  it('offlineQueue: false rejects publishes at once while not connected', async (t) => {
    const { hub } = setup(t, {}, { offlineQueue: false });
    const r = await outcome(hub.publish('t', 1));
    assert.ok(!r.ok && r.error.code === 'not_connected' && r.error.source === 'client');
  });

  it('close() rejects every unacked publish with closed', async (t) => {
    const { hub } = setup(t);
    const pending = [outcome(hub.publish('t', 1)), outcome(hub.publish('t', 2))];
    await hub.close();
    for (const r of await Promise.all(pending)) assert.ok(!r.ok && r.error.code === 'closed');
  });

  it('a terminal close rejects queued and in-flight publishes once', async (t) => {
    const { gw, hub } = setup(t, { ackDelayMs: 100 });
    await hub.connect();
    const p = outcome(hub.publish('t', 1));
    await waitFor(() => gw.last.of('publish').length === 1);
    gw.last.close(4500, 'policy');
    const r = await p;
    assert.ok(!r.ok && r.error.code === 'closed' && r.error.closeCode === 4500);
  });

  it('mirrors the queue to a storage adapter and deletes entries once settled', async (t) => {
    const storage = new MemoryStorage();
    const { hub } = setup(t, {}, { offlineQueue: { storage } });
    await waitFor(() => true);
    const p = hub.publish('t', { a: 1 });
    await sleep(5);
    assert.equal(storage.entries.size, 1);
    const entry = [...storage.entries.values()][0];
    assert.match(entry?.frame ?? '', /"type":"publish"/);
    await hub.connect();
    await p;
    await sleep(5);
    assert.equal(storage.entries.size, 0);
  });

  it('sends publishes restored from storage with their original ids and reports them', async (t) => {
    const storage = new MemoryStorage();
    // A previous page queued two publishes and went away.
    const gw = new FakeGateway();
    const old = new FerryClient({ url: 'ws://fake', WebSocket: gw.WebSocket, offlineQueue: { storage } });
    void old.publish('t', 'one').catch(() => undefined);
    void old.publish('t', 'two').catch(() => undefined);
    await sleep(5);
    const ids = [...storage.entries.keys()];
    assert.equal(ids.length, 2);

    const hub = new FerryClient({ url: 'ws://fake', WebSocket: gw.WebSocket, offlineQueue: { storage }, liveness: false });
    t.after(() => hub.close());
    const restored: RestoredPublishResult[] = [];
    hub.on('restoredPublish', (r) => restored.push(r));
    await hub.connect();
    await waitFor(() => restored.length === 2);
    assert.deepEqual(
      restored.map((r) => r.id),
      ids,
    );
    assert.ok(restored.every((r) => r.ack && r.topic === 't'));
    assert.deepEqual(
      gw.last.of('publish').map((f) => f.id),
      ids,
    );
    await sleep(5);
    assert.equal(storage.entries.size, 0);
  });
});
