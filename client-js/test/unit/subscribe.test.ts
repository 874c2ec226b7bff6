/** Subscriptions, resume without gap or duplicate, gap notices and streams, against the fake gateway. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FerryError, type FerryMessage, type GapFrame } from '../../src/index.js';
import { retryDelay, retryable } from '../../src/router.js';
import { sleep, waitFor, type FakeConnection } from '../support/fake-gateway.js';
import { outcome, setup } from './helpers.js';

const key = (m: FerryMessage): string => `${m.partition}/${m.offset}`;

describe('subscribe', () => {
  it('delivers records produced after the subscription went live', async (t) => {
    const { gw, hub } = setup(t);
    const got: FerryMessage[] = [];
    const sub = hub.subscribe('dash', (m) => got.push(m));
    await hub.connect();
    await sub.ready;
    gw.produce('dash', { temp: 20 }, { key: new TextEncoder().encode('k'), headers: { h: 'v' } });
    gw.produce('dash', new Uint8Array([0xff, 0xfe]));
    await waitFor(() => got.length === 2);
    assert.deepEqual(got[0]?.value, { temp: 20 });
    assert.equal(got[0]?.key, 'k');
    assert.deepEqual(got[0]?.headers, { h: 'v' });
    assert.deepEqual(got[1]?.value, new Uint8Array([0xff, 0xfe]));
    // Positions: past the delivered records, and the start offsets of the untouched partition.
    assert.equal(Object.keys(sub.positions()).length, 3);
  });

  it('sends only topic for a plain subscription (works with today\'s gateway)', async (t) => {
    const { gw, hub } = setup(t, { supportsFrom: false });
    await hub.connect();
    const sub = hub.subscribe('dash', () => undefined);
    await sub.ready;
    assert.deepEqual(Object.keys(gw.last.of('subscribe')[0] ?? {}).sort(), ['id', 'topic', 'type']);
  });

  it('passes from/group/filter/overflow only when given', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    await hub.subscribe('a', () => undefined, { from: 'earliest', group: 'g1' }).ready;
    await hub.subscribe('b', () => undefined, { overflow: 'conflate', filter: { key: { prefix: 'EUR' } } }).ready;
    await hub.subscribe('c', () => undefined, { group: 'g2', ack: 'client' }).ready;
    const [frame, second, third] = gw.last.of('subscribe');
    assert.equal(frame?.from, 'earliest');
    assert.equal(frame?.group, 'g1');
    assert.ok(!('filter' in (frame ?? {})) && !('overflow' in (frame ?? {})) && !('ack' in (frame ?? {})));
    assert.equal(second?.overflow, 'conflate');
    assert.deepEqual(second?.filter, { key: { prefix: 'EUR' } });
    assert.ok(!('group' in (second ?? {})) && !('ack' in (second ?? {})));
    assert.deepEqual(third, { type: 'subscribe', id: third?.id, topic: 'c', group: 'g2', ack: 'client' });
  });

  it('shares one wire subscription between subscribers of a topic; the last unsubscribe ends it', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const a: FerryMessage[] = [];
    const b: FerryMessage[] = [];
    const subA = hub.subscribe('t', (m) => a.push(m));
    const subB = hub.subscribe('t', (m) => b.push(m));
    await subA.ready;
    assert.equal(gw.last.of('subscribe').length, 1);
    gw.produce('t', 1);
    await waitFor(() => a.length === 1 && b.length === 1);
    await subA.unsubscribe();
    assert.equal(gw.last.of('unsubscribe').length, 0);
    gw.produce('t', 2);
    await waitFor(() => b.length === 2);
    assert.equal(a.length, 1);
    await subB.unsubscribe();
    assert.equal(gw.last.of('unsubscribe').length, 1);
    assert.equal(subB.active, false);
    gw.produce('t', 3);
    await sleep(10);
    assert.equal(b.length, 2);
  });

  it('refuses a second subscriber with other options, and an invalid topic', (t) => {
    const { hub } = setup(t);
    hub.subscribe('t', () => undefined);
    assert.throws(
      () => hub.subscribe('t', () => undefined, { from: 'earliest' }),
      (e) => e instanceof FerryError && e.code === 'bad_request',
    );
    assert.throws(
      () => hub.subscribe('__x', () => undefined),
      (e) => e instanceof FerryError && e.code === 'invalid_topic',
    );
  });

  it('reports a refused subscription to onError and rejects ready', async (t) => {
    const { hub, errors } = setup(t, { unknownTopics: ['gone'] });
    await hub.connect();
    const seen: FerryError[] = [];
    const sub = hub.subscribe('gone', () => undefined, { onError: (e) => seen.push(e) });
    const r = await outcome(sub.ready);
    assert.ok(!r.ok && r.error.code === 'unknown_topic');
    assert.equal(seen[0]?.code, 'unknown_topic');
    assert.equal(sub.active, false);
    assert.equal(errors.length, 0);
    // Without onError it goes to the error event.
    const sub2 = hub.subscribe('gone', () => undefined);
    await outcome(sub2.ready);
    assert.equal(errors[0]?.code, 'unknown_topic');
  });

  it('resubscribes after reconnect from the offsets after the last delivered record: no gap, no duplicate', async (t) => {
    const { gw, hub } = setup(t);
    const got: FerryMessage[] = [];
    hub.subscribe('s', (m) => got.push(m));
    await hub.connect();
    await waitFor(() => gw.last.subs.has('s'));
    for (let i = 0; i < 30; i++) gw.produce('s', { i });
    await waitFor(() => got.length === 30);
    // The gateway drops the socket mid-stream; records keep coming while the client is away.
    gw.refuse = true;
    gw.last.close(1006);
    for (let i = 30; i < 60; i++) gw.produce('s', { i });
    await sleep(20);
    gw.refuse = false;
    await waitFor(() => hub.state === 'open' && gw.connections.length === 2);
    for (let i = 60; i < 90; i++) gw.produce('s', { i });
    await waitFor(() => got.length >= 90);
    await sleep(10);
    assert.equal(got.length, 90);
    assert.equal(new Set(got.map(key)).size, 90, 'no duplicate');
    const values = got.map((m) => (m.value as { i: number }).i).sort((a, b) => a - b);
    assert.deepEqual(values, Array.from({ length: 90 }, (_, i) => i), 'no gap');
    // Per partition, offsets arrive in order.
    for (let p = 0; p < 3; p++) {
      const offsets = got.filter((m) => m.partition === p).map((m) => m.offset);
      assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b));
    }
    const resume = gw.last.of('subscribe')[0]?.from as { offsets: Record<string, number> };
    assert.deepEqual(resume, { offsets: { '0': 10, '1': 10, '2': 10 } });
  });

  it('resumes partitions that had no record yet from their start offsets (no gap there either)', async (t) => {
    const { gw, hub } = setup(t);
    const got: FerryMessage[] = [];
    hub.subscribe('s', (m) => got.push(m));
    await hub.connect();
    await waitFor(() => gw.last.subs.has('s'));
    gw.produce('s', 'p0', { partition: 0 });
    await waitFor(() => got.length === 1);
    gw.refuse = true;
    gw.last.close(1006);
    gw.produce('s', 'p1-while-away', { partition: 1 });
    gw.refuse = false;
    await waitFor(() => got.length === 2, 2000, 'record of an untouched partition');
    assert.deepEqual(gw.last.of('subscribe')[0]?.from, { offsets: { '0': 1, '1': 0, '2': 0 } });
  });

  it('ends a subscription the gateway ended (unsubscribed without id, e.g. forbidden after a refresh)', async (t) => {
    const { gw, hub, errors } = setup(t);
    const ended: FerryError[] = [];
    const sub = hub.subscribe('tenant.acme.dash', () => undefined, { onError: (e) => ended.push(e) });
    const other = hub.subscribe('other', () => undefined);
    await hub.connect();
    await sub.ready;
    gw.last.send({ type: 'unsubscribed', topic: 'tenant.acme.dash', reason: 'forbidden' });
    await waitFor(() => ended.length === 1);
    assert.equal(ended[0]?.code, 'forbidden');
    assert.equal(sub.active, false);
    assert.equal(other.active, true);
    assert.equal(errors.length, 0);
    // Not resubscribed after a reconnect.
    gw.last.close(1001);
    await waitFor(() => gw.connections.length === 2 && gw.last.of('subscribe').length === 1);
    await sleep(10);
    assert.deepEqual(
      gw.last.of('subscribe').map((f) => f.topic),
      ['other'],
    );
  });

  it('drops records it already delivered when the gateway replays them', async (t) => {
    const { gw, hub } = setup(t);
    const got: FerryMessage[] = [];
    hub.subscribe('s', (m) => got.push(m), { from: 'earliest' });
    await hub.connect();
    for (let i = 0; i < 6; i++) gw.produce('s', i);
    await waitFor(() => got.length === 6);
    // Replay everything on the same connection, as a gateway that resumes too early would.
    gw.last.subs.set('s', { next: [0, 0, 0] });
    gw.last.flush('s');
    gw.produce('s', 6);
    await waitFor(() => got.length === 7);
    await sleep(10);
    assert.equal(got.length, 7);
  });

  it('resubscribes live and emits a gap when the gateway does not announce `from`', async (t) => {
    const { gw, hub } = setup(t, { supportsFrom: false });
    const got: FerryMessage[] = [];
    const gaps: GapFrame[] = [];
    hub.on('gap', (g) => gaps.push(g));
    hub.subscribe('s', (m) => got.push(m));
    await hub.connect();
    await waitFor(() => gw.last.subs.has('s'));
    gw.produce('s', 1);
    await waitFor(() => got.length === 1);
    gw.last.close(1001);
    await waitFor(() => gw.connections.length === 2 && gw.last.subs.has('s'), 2000, 'plain resubscribe');
    assert.equal(gaps.length, 1);
    assert.equal(gaps[0]?.reason, 'resume_refused');
    assert.equal(gaps[0]?.topic, 's');
    assert.deepEqual(gaps[0]?.positions, { [String(got[0]?.partition)]: (got[0]?.offset ?? 0) + 1 });
    const subs = gw.last.of('subscribe');
    assert.equal(subs.length, 1, 'decided by the capability, not by probing an error');
    assert.ok(!subs[0]?.from, 'subscribed plain');
    gw.produce('s', 2);
    await waitFor(() => got.length === 2);
  });

  it('forwards lagged notices (drop_oldest / conflate) as an event', async (t) => {
    const { gw, hub } = setup(t);
    const lagged: { topic: string; dropped: number }[] = [];
    hub.on('lagged', (l) => lagged.push(l));
    await hub.connect();
    gw.last.send({ type: 'lagged', topic: 'ticks', dropped: 118 });
    await waitFor(() => lagged.length === 1);
    assert.equal(lagged[0]?.dropped, 118);
  });

  it('forwards gap notices as an event and moves the resume point', async (t) => {
    const { gw, hub } = setup(t);
    const gaps: GapFrame[] = [];
    hub.on('gap', (g) => gaps.push(g));
    const sub = hub.subscribe('s', () => undefined);
    await hub.connect();
    await sub.ready;
    gw.last.send({ type: 'gap', topic: 's', partition: 1, requested: 0, resumed_at: 40, reason: 'retention' });
    await waitFor(() => gaps.length === 1);
    assert.equal(gaps[0]?.reason, 'retention');
    assert.equal(sub.positions()['1'], 40);
  });

  it('seeds resume positions from `subscribed.partitions`, so a resume lists every partition', async (t) => {
    const { gw, hub } = setup(t);
    gw.intercept = (conn, f) => {
      if (f.type !== 'subscribe' || f.from) return false;
      conn.subs.set(f.topic as string, { next: [5, 7, 0] });
      conn.send({ type: 'subscribed', id: f.id, topic: f.topic, partitions: { '0': 5, '1': 7, '2': 0 } });
      return true;
    };
    const sub = hub.subscribe('s', () => undefined);
    await hub.connect();
    await sub.ready;
    assert.deepEqual(sub.positions(), { '0': 5, '1': 7, '2': 0 });
    gw.last.close(1001);
    await waitFor(() => gw.connections.length === 2 && gw.last.of('subscribe').length === 1);
    assert.deepEqual(gw.last.of('subscribe')[0]?.from, { offsets: { '0': 5, '1': 7, '2': 0 } });
  });

  it('retries a subscription the gateway could not serve yet (unavailable, retry_after_ms)', async (t) => {
    const { gw, hub } = setup(t);
    let refused = 0;
    gw.intercept = (conn, f) => {
      if (f.type !== 'subscribe' || refused > 0) return false;
      refused++;
      conn.send({ type: 'error', id: f.id, code: 'unavailable', message: 'later', retry_after_ms: 10 });
      return true;
    };
    await hub.connect();
    const sub = hub.subscribe('s', () => undefined);
    await sub.ready;
    assert.equal(refused, 1);
    assert.equal(gw.last.of('subscribe').length, 2);
    assert.ok(sub.active);
  });
});

describe('a node over its limits (`limit`)', () => {
  /** Subscribes `s`, delivers 30 records, drops the socket, and produces 30 more while the client is away. */
  async function liveThenDropped(t: Parameters<typeof setup>[0], refuse: (conn: FakeConnection, frame: Record<string, unknown>) => boolean) {
    const { gw, hub, errors } = setup(t);
    const got: FerryMessage[] = [];
    const ended: FerryError[] = [];
    const sub = hub.subscribe('s', (m) => got.push(m), { onError: (e) => ended.push(e) });
    await hub.connect();
    await sub.ready;
    for (let i = 0; i < 30; i++) gw.produce('s', { i });
    await waitFor(() => got.length === 30);
    // Only resumes (subscribe with `from`) go through `refuse`.
    gw.intercept = (conn, f) => f.type === 'subscribe' && f.from !== undefined && refuse(conn, f);
    gw.refuse = true;
    gw.last.close(1006);
    for (let i = 30; i < 60; i++) gw.produce('s', { i });
    gw.refuse = false;
    return { gw, hub, errors, got, ended, sub };
  }

  it('retries a resume refused with `limit` and retry_after_ms after that delay, from the same offsets: no gap, no duplicate', async (t) => {
    const sentAt: number[] = [];
    let refused = 0;
    const { gw, hub, errors, got, ended, sub } = await liveThenDropped(t, (conn, f) => {
      sentAt.push(Date.now());
      if (refused >= 2) return false;
      refused++;
      conn.send({ type: 'error', id: f.id, code: 'limit', message: 'node overloaded: no catch-up slot', retry_after_ms: 40 });
      return true;
    });
    await waitFor(() => got.length === 60, 3000, 'the records produced while away');
    for (let i = 60; i < 70; i++) gw.produce('s', { i });
    await waitFor(() => got.length === 70);
    await sleep(20);
    assert.equal(refused, 2);
    const resumes = gw.last.of('subscribe');
    assert.equal(resumes.length, 3, 'refused twice, then accepted, on the same connection');
    assert.equal(gw.connections.length, 2);
    for (const frame of resumes) assert.deepEqual(frame.from, { offsets: { '0': 10, '1': 10, '2': 10 } });
    // Waited at least retry_after_ms each time (plus jitter).
    assert.ok((sentAt[1] ?? 0) - (sentAt[0] ?? 0) >= 40, `retried after ${(sentAt[1] ?? 0) - (sentAt[0] ?? 0)} ms`);
    assert.ok((sentAt[2] ?? 0) - (sentAt[1] ?? 0) >= 40);
    assert.equal(got.length, 70);
    assert.equal(new Set(got.map(key)).size, 70, 'no duplicate');
    assert.deepEqual(
      got.map((m) => (m.value as { i: number }).i).sort((a, b) => a - b),
      Array.from({ length: 70 }, (_, i) => i),
      'no gap',
    );
    assert.ok(sub.active);
    assert.deepEqual(ended, []);
    assert.deepEqual(errors, []);
    assert.equal(hub.state, 'open');
  });

  it('ends a resume refused with `limit` without retry_after_ms (a cap, not overload), with an error the app sees', async (t) => {
    const { gw, hub, errors, got, ended, sub } = await liveThenDropped(t, (conn, f) => {
      conn.send({ type: 'error', id: f.id, code: 'limit', message: 'too many subscriptions on this connection' });
      return true;
    });
    await waitFor(() => ended.length === 1, 2000, 'the subscription to end');
    assert.equal(ended[0]?.code, 'limit');
    assert.equal(ended[0]?.source, 'gateway');
    assert.equal(sub.active, false);
    await sleep(50);
    assert.equal(gw.last.of('subscribe').length, 1, 'not retried');
    assert.equal(got.length, 30);
    assert.deepEqual(errors, []); // it went to onError
    assert.equal(hub.state, 'open');
  });

  it('without onError, a resume that ends reaches the error event; a stream fails with it', async (t) => {
    const { gw, hub, errors } = setup(t);
    const sub = hub.subscribe('s', () => undefined);
    const stream = hub.stream('t');
    await hub.connect();
    await sub.ready;
    await stream.subscription.ready;
    gw.produce('s', 1);
    gw.produce('t', 1);
    await waitFor(() => Object.values(sub.positions()).some((o) => o > 0));
    const first = await stream.next();
    assert.equal(first.done, false);
    gw.intercept = (conn, f) => {
      if (f.type !== 'subscribe' || f.from === undefined) return false;
      conn.send({ type: 'error', id: f.id, code: 'limit', message: 'full' });
      return true;
    };
    gw.last.close(1006);
    await waitFor(() => errors.length === 1, 2000, 'an error event');
    assert.equal(errors[0]?.code, 'limit');
    assert.equal(sub.active, false);
    await assert.rejects(stream.next(), (e: FerryError) => e.code === 'limit');
  });

  it('retries a first subscribe refused with `limit` and retry_after_ms; `ready` resolves once accepted', async (t) => {
    const { gw, hub, errors } = setup(t);
    let refused = 0;
    gw.intercept = (conn, f) => {
      if (f.type !== 'subscribe' || refused > 0) return false;
      refused++;
      conn.send({ type: 'error', id: f.id, code: 'limit', message: 'overloaded', retry_after_ms: 10 });
      return true;
    };
    await hub.connect();
    const sub = hub.subscribe('s', () => undefined, { from: 'earliest' });
    await sub.ready;
    assert.equal(refused, 1);
    assert.deepEqual(gw.last.of('subscribe').map((f) => f.from), ['earliest', 'earliest']);
    assert.deepEqual(errors, []);
  });

  it('refuses a first subscribe answered `limit` without retry_after_ms, as before', async (t) => {
    const { gw, hub } = setup(t);
    gw.intercept = (conn, f) => {
      if (f.type !== 'subscribe') return false;
      conn.send({ type: 'error', id: f.id, code: 'limit', message: 'max_subscriptions reached' });
      return true;
    };
    await hub.connect();
    const seen: FerryError[] = [];
    const sub = hub.subscribe('s', () => undefined, { onError: (e) => seen.push(e) });
    const r = await outcome(sub.ready);
    assert.ok(!r.ok && r.error.code === 'limit');
    assert.equal(seen.length, 1);
    assert.equal(sub.active, false);
    await sleep(30);
    assert.equal(gw.last.of('subscribe').length, 1);
  });

  it('drops a pending retry when the connection changes: the new connection subscribes once', async (t) => {
    const { gw, hub, errors } = setup(t);
    gw.intercept = (conn, f) => {
      if (f.type !== 'subscribe' || gw.connections.length > 1) return false;
      conn.send({ type: 'error', id: f.id, code: 'limit', message: 'overloaded', retry_after_ms: 60 });
      return true;
    };
    await hub.connect();
    const sub = hub.subscribe('s', () => undefined);
    await waitFor(() => gw.last.of('subscribe').length === 1);
    await sleep(5);
    gw.last.close(1001);
    await sub.ready;
    await sleep(150); // past the retry the first connection scheduled
    assert.equal(gw.connections.length, 2);
    assert.equal(gw.last.of('subscribe').length, 1);
    assert.deepEqual(errors, []);
    assert.ok(sub.active);
  });

  it('retries transient codes and `limit` with retry_after_ms only; waits the delay plus up to half of it', () => {
    const gateway = (code: string, retryAfterMs?: number) =>
      new FerryError(code, 'x', retryAfterMs === undefined ? { source: 'gateway' } : { source: 'gateway', retryAfterMs });
    assert.ok(retryable(gateway('limit', 500)));
    assert.ok(retryable(gateway('limit', 0)));
    assert.ok(!retryable(gateway('limit')));
    assert.ok(retryable(gateway('unavailable')));
    assert.ok(!retryable(gateway('forbidden', 100)));
    assert.equal(retryDelay(1000, () => 0), 1000);
    assert.equal(retryDelay(1000, () => 0.999999), 1499);
    assert.equal(retryDelay(undefined, () => 0), 1000);
    assert.ok(retryDelay(0, () => 0.5) === 50, 'a zero delay still gets some jitter');
    const spread = new Set(Array.from({ length: 50 }, () => retryDelay(2000)));
    assert.ok(spread.size > 10, 'jittered');
    for (const d of spread) assert.ok(d >= 2000 && d < 3000);
  });
});

describe('group subscriptions', () => {
  it('resubscribes after reconnect with the same group, ack and from, never from offsets; redelivered records come again', async (t) => {
    const { gw, hub, errors } = setup(t);
    const got: FerryMessage[] = [];
    const sub = hub.subscribe('jobs', (m) => got.push(m), { group: 'workers', ack: 'client', from: 'earliest' });
    await hub.connect();
    await sub.ready;
    for (let i = 0; i < 6; i++) gw.produce('jobs', { i });
    await waitFor(() => got.length === 6);
    assert.deepEqual(sub.positions(), {}, 'no resume positions for a group');
    // Nothing was committed: the group starts over from its committed offsets (here: the beginning).
    gw.last.close(1001);
    await waitFor(() => gw.connections.length === 2 && got.length === 12, 2000, 'redelivery after reconnect');
    const [again] = gw.last.of('subscribe');
    assert.deepEqual(again, { type: 'subscribe', id: again?.id, topic: 'jobs', from: 'earliest', group: 'workers', ack: 'client' });
    assert.deepEqual(got.slice(6).map(key).sort(), got.slice(0, 6).map(key).sort(), 'the same records again (at least once)');
    // Replayed on the same connection too: a group does not drop records below a position.
    gw.last.subs.set('jobs', { next: [0, 0, 0], ack: 'client' });
    gw.last.flush('jobs');
    await waitFor(() => got.length === 18);
    assert.deepEqual(errors, []);
  });

  it('commit() sends a commit for a record and resolves on its committed reply; a refused commit rejects', async (t) => {
    const { gw, hub, errors } = setup(t);
    const got: FerryMessage[] = [];
    const commits: Promise<void>[] = [];
    const sub = hub.subscribe('jobs', (m) => {
      got.push(m);
      commits.push(hub.commit(m));
    }, { group: 'workers', ack: 'client' });
    await hub.connect();
    await sub.ready;
    for (let i = 0; i < 4; i++) gw.produce('jobs', { i });
    await waitFor(() => gw.last.commits.length === 4, 2000, 'four commits');
    await Promise.all(commits);
    assert.deepEqual(gw.last.commits.map((c) => `${c.partition}/${c.offset}`).sort(), got.map(key).sort());
    const [first] = gw.last.of('commit');
    assert.deepEqual({ ...first, id: undefined }, { type: 'commit', id: undefined, topic: 'jobs', partition: got[0]?.partition, offset: got[0]?.offset });
    assert.equal(typeof first?.id, 'string');
    assert.equal(errors.length, 0);
    // The gateway refuses a commit for a record this socket was not given: the promise rejects.
    const r = await outcome(hub.commit({ topic: 'jobs', partition: 0, offset: 999 }));
    assert.ok(!r.ok && r.error.code === 'bad_request' && r.error.source === 'gateway', JSON.stringify(r));
    assert.equal(errors.length, 0);
    assert.equal(hub.state, 'open');
  });

  it('commit() rejects a reply that is not about the record committed', async (t) => {
    const { gw, hub } = setup(t);
    gw.intercept = (conn, f) => {
      if (f.type !== 'commit') return false;
      conn.send({ type: 'committed', id: f.id, topic: 'jobs', partition: 0, offset: 1234 });
      return true;
    };
    await hub.connect();
    const r = await outcome(hub.commit({ topic: 'jobs', partition: 0, offset: 7 }));
    assert.ok(!r.ok && r.error.code === 'protocol', JSON.stringify(r));
  });

  it('commit() sends nothing and rejects with not_connected while not connected (the record is redelivered)', async (t) => {
    const { gw, hub } = setup(t);
    const before = await outcome(hub.commit({ topic: 'jobs', partition: 0, offset: 1 }));
    assert.ok(!before.ok && before.error.code === 'not_connected');
    await hub.connect();
    gw.refuse = true;
    gw.last.close(1006);
    await waitFor(() => hub.state === 'reconnecting');
    void hub.commit({ topic: 'jobs', partition: 0, offset: 1 }); // not awaited: no unhandled rejection
    gw.refuse = false;
    await waitFor(() => hub.state === 'open');
    await sleep(10);
    assert.equal(gw.connections.flatMap((c) => c.of('commit')).length, 0);
  });

  it('works with stream(): commit each record after processing it', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const stream = hub.stream<{ i: number }>('jobs', { group: 'workers', ack: 'client' });
    await stream.subscription.ready;
    for (let i = 0; i < 3; i++) gw.produce('jobs', { i });
    let n = 0;
    for await (const m of stream) {
      void hub.commit(m);
      if (++n === 3) break;
    }
    await waitFor(() => gw.last.commits.length === 3);
  });
});

describe('stream', () => {
  it('iterates records with for await and unsubscribes on break', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const stream = hub.stream<{ i: number }>('s');
    await stream.subscription.ready;
    for (let i = 0; i < 5; i++) gw.produce('s', { i });
    const seen: number[] = [];
    for await (const m of stream) {
      seen.push((m.value as { i: number }).i);
      if (seen.length === 3) break;
    }
    assert.equal(seen.length, 3);
    await waitFor(() => gw.last.of('unsubscribe').length === 1);
    assert.equal(stream.subscription.active, false);
  });

  it('stops on close() and on an aborted signal', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const stream = hub.stream('a');
    setTimeout(() => void stream.close(), 10);
    const r1 = await stream.next();
    assert.equal(r1.done, true);

    const ctl = new AbortController();
    const s2 = hub.stream('b', { signal: ctl.signal });
    await s2.subscription.ready;
    gw.produce('b', 1);
    const first = await s2.next();
    assert.equal(first.done, false);
    ctl.abort();
    assert.equal((await s2.next()).done, true);
  });

  it('ends when the client is closed', async (t) => {
    const { hub } = setup(t);
    await hub.connect();
    const stream = hub.stream('a');
    const next = stream.next();
    await hub.close();
    assert.equal((await next).done, true);
  });

  it('fails with stream_overflow when the consumer falls behind bufferSize', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const stream = hub.stream('a', { bufferSize: 3 });
    await stream.subscription.ready;
    for (let i = 0; i < 5; i++) gw.produce('a', i);
    await sleep(20);
    const results = [];
    for (let i = 0; i < 3; i++) results.push(await stream.next());
    assert.ok(results.every((r) => !r.done));
    const r = await outcome(stream.next());
    assert.ok(!r.ok && r.error.code === 'stream_overflow' && r.error.source === 'client');
    assert.equal((await stream.next()).done, true);
  });

  it('throws the subscription error from the iterator', async (t) => {
    const { hub } = setup(t, { unknownTopics: ['gone'] });
    await hub.connect();
    const stream = hub.stream('gone');
    const r = await outcome(stream.next());
    assert.ok(!r.ok && r.error.code === 'unknown_topic');
  });
});
