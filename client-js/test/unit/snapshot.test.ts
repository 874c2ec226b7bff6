/** Throttled and snapshot subscriptions (`throttleMs`, `from: 'snapshot'`): options, capabilities, positions and resume. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FerryError, createState, type FerryMessage } from '../../src/index.js';
import { sleep, waitFor } from '../support/fake-gateway.js';
import { outcome, setup } from './helpers.js';

describe('subscribe: throttleMs and from snapshot', () => {
  it('sends throttle_ms and from "snapshot" when the gateway announces them', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    await hub.subscribe('prices', () => undefined, { throttleMs: 200 }).ready;
    await hub.subscribe('devices', () => undefined, { from: 'snapshot', throttleMs: 50 }).ready;
    const [prices, devices] = gw.last.of('subscribe');
    assert.deepEqual(prices, { type: 'subscribe', id: prices?.id, topic: 'prices', throttle_ms: 200 });
    assert.deepEqual(devices, { type: 'subscribe', id: devices?.id, topic: 'devices', from: 'snapshot', throttle_ms: 50 });
  });

  it('fails with unsupported when the gateway does not announce throttle or snapshot', async (t) => {
    const { gw, hub } = setup(t, { capabilities: ['auth', 'commit', 'filter', 'from', 'group', 'overflow'] });
    const errors: FerryError[] = [];
    const throttled = outcome(hub.subscribe('a', () => undefined, { throttleMs: 100, onError: (e) => errors.push(e) }).ready);
    const snapshot = outcome(hub.subscribe('b', () => undefined, { from: 'snapshot', onError: (e) => errors.push(e) }).ready);
    await hub.connect();
    const [x, y] = await Promise.all([throttled, snapshot]);
    assert.ok(!x.ok && x.error.code === 'unsupported' && x.error.message.includes('"throttle"'));
    assert.ok(!y.ok && y.error.code === 'unsupported' && y.error.message.includes('"snapshot"'));
    assert.equal(errors.length, 2);
    assert.equal(gw.last.of('subscribe').length, 0, 'nothing sent');
  });

  it('refuses a group with throttleMs or from snapshot locally', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    const isBad = (e: unknown): boolean => e instanceof FerryError && e.code === 'bad_request';
    assert.throws(() => hub.subscribe('a', () => undefined, { group: 'g', throttleMs: 100 }), (e) => isBad(e) && String(e).includes('`throttle_ms`'));
    assert.throws(() => hub.subscribe('a', () => undefined, { group: 'g', from: 'snapshot' }), isBad);
    await sleep(10);
    assert.equal(gw.last.of('subscribe').length, 0);
  });

  it('a gateway refusing throttle_ms (out of range) reports it to onError', async (t) => {
    const { hub } = setup(t);
    await hub.connect();
    const result = await outcome(hub.subscribe('a', () => undefined, { throttleMs: 0, onError: () => undefined }).ready);
    assert.ok(!result.ok && result.error.code === 'bad_request' && result.error.message.includes('`throttle_ms`'));
  });
});

describe('subscribe from snapshot: positions and resume', () => {
  it('delivers the snapshot, then live records; only snapshot_end and live records move the positions', async (t) => {
    const { gw, hub } = setup(t, { partitions: 2 });
    gw.produce('dev', { v: 1 }, { key: 'a', partition: 0 });
    gw.produce('dev', { v: 2 }, { key: 'a', partition: 0 });
    gw.produce('dev', { v: 1 }, { key: 'b', partition: 1 });
    gw.produce('dev', null, { key: 'c', partition: 1 });
    gw.produce('dev', null, { key: 'c', partition: 1, tombstone: true });
    const got: FerryMessage[] = [];
    const phases: boolean[] = [];
    const positionsAt: Record<string, number>[] = [];
    const sub = hub.subscribe('dev', (m) => {
      got.push(m);
      positionsAt.push(sub.positions());
    }, { from: 'snapshot', onSnapshot: (starting) => phases.push(starting) });
    await hub.connect();
    await sub.ready;
    await waitFor(() => phases.length === 2);
    assert.deepEqual(phases, [true, false]);
    assert.deepEqual(
      got.map((m) => [m.key, m.value, m.snapshot]).sort(),
      [['a', { v: 2 }, true], ['b', { v: 1 }, true]],
      'latest per key, tombstoned key left out',
    );
    for (const p of positionsAt) assert.deepEqual(p, {}, 'a snapshot record moves no position');
    assert.deepEqual(sub.positions(), { '0': 2, '1': 3 }, 'snapshot_end sets them');
    gw.produce('dev', { v: 3 }, { key: 'a', partition: 0 });
    gw.produce('dev', null, { key: 'b', partition: 1, tombstone: true });
    await waitFor(() => got.length === 4);
    assert.equal(got[2]?.snapshot, undefined);
    assert.deepEqual([got[3]?.key, got[3]?.value], ['b', null]);
    assert.deepEqual(sub.positions(), { '0': 3, '1': 4 });
  });

  it('resumes from offsets after snapshot_end: no snapshot again, no gap, no duplicate', async (t) => {
    const { gw, hub } = setup(t, { partitions: 1 });
    gw.produce('dev', 1, { key: 'a' });
    const got: FerryMessage[] = [];
    const phases: boolean[] = [];
    const sub = hub.subscribe('dev', (m) => got.push(m), { from: 'snapshot', onSnapshot: (s) => phases.push(s) });
    await hub.connect();
    await waitFor(() => phases.length === 2);
    gw.produce('dev', 2, { key: 'a' });
    await waitFor(() => got.length === 2);
    const first = gw.last;
    first.close(1006);
    gw.produce('dev', 3, { key: 'b' });
    await waitFor(() => gw.connections.length === 2 && gw.last.of('subscribe').length === 1);
    assert.deepEqual(gw.last.of('subscribe')[0]?.from, { offsets: { '0': 2 } });
    await waitFor(() => got.length === 3);
    assert.deepEqual(got.map((m) => [m.value, m.snapshot ?? false]), [[1, true], [2, false], [3, false]]);
    assert.deepEqual(phases, [true, false], 'no second snapshot');
    assert.deepEqual(sub.positions(), { '0': 3 });
  });

  it('asks for the snapshot again after a connection lost before snapshot_end', async (t) => {
    const { gw, hub } = setup(t, { partitions: 1 });
    gw.produce('dev', 1, { key: 'a' });
    gw.holdSnapshotEnd = true;
    const got: FerryMessage[] = [];
    const phases: boolean[] = [];
    const sub = hub.subscribe('dev', (m) => got.push(m), { from: 'snapshot', onSnapshot: (s) => phases.push(s) });
    await hub.connect();
    await waitFor(() => got.length === 1);
    assert.deepEqual(sub.positions(), {});
    gw.holdSnapshotEnd = false;
    gw.last.close(1006);
    await waitFor(() => phases.length === 3);
    assert.deepEqual(phases, [true, true, false]);
    assert.equal(gw.last.of('subscribe')[0]?.from, 'snapshot');
    assert.deepEqual(got.map((m) => m.snapshot), [true, true]);
    assert.deepEqual(sub.positions(), { '0': 1 });
  });
});

describe('createState', () => {
  it('holds the snapshot at ready, then applies live records and tombstones, with change events', async (t) => {
    const { gw, hub } = setup(t, { partitions: 2 });
    gw.produce('dev', { on: false }, { key: 'a', partition: 0 });
    gw.produce('dev', { on: true }, { key: 'a', partition: 0 });
    gw.produce('dev', { on: true }, { key: 'b', partition: 1 });
    gw.produce('dev', { on: true }, { key: 'c', partition: 1 });
    gw.produce('dev', null, { key: 'c', partition: 1, tombstone: true });
    gw.produce('dev', new Uint8Array([1]), { key: new Uint8Array([0xff]), partition: 0 });
    gw.produce('dev', { ignored: true }, { partition: 0 });
    const state = createState<{ on: boolean }>(hub, 'dev', { throttleMs: 100 });
    const events: unknown[] = [];
    state.on('set', (key, value, m) => events.push(['set', key, value, m.snapshot ?? false]));
    state.on('delete', (key) => events.push(['delete', key]));
    await hub.connect();
    await state.ready;
    assert.equal(gw.last.of('subscribe')[0]?.throttle_ms, 100);
    assert.equal(state.live, true);
    assert.equal(state.size, 3);
    assert.deepEqual(state.get('a'), { on: true });
    assert.ok(state.has('b') && !state.has('c'));
    assert.deepEqual(state.get('/w=='), new Uint8Array([1]), 'a binary key as base64');
    assert.deepEqual([...state.keys()].sort(), ['/w==', 'a', 'b']);
    assert.equal([...state].length, 3);
    assert.equal(events.length, 3);
    events.length = 0;
    gw.produce('dev', { on: false }, { key: 'b', partition: 1 });
    gw.produce('dev', null, { key: 'a', partition: 0, tombstone: true });
    gw.produce('dev', { on: true }, { key: 'd', partition: 0 });
    await waitFor(() => events.length === 3);
    assert.deepEqual(events, [['set', 'b', { on: false }, false], ['delete', 'a'], ['set', 'd', { on: true }, false]]);
    assert.deepEqual(Object.fromEntries(state.entries()), { '/w==': new Uint8Array([1]), b: { on: false }, d: { on: true } });
  });

  it('resumes after a reconnect from its positions: no snapshot again, no missed update', async (t) => {
    const { gw, hub } = setup(t, { partitions: 1 });
    gw.produce('dev', 1, { key: 'a' });
    const state = createState(hub, 'dev');
    await hub.connect();
    await state.ready;
    gw.last.close(1006);
    gw.produce('dev', 2, { key: 'a' });
    gw.produce('dev', 3, { key: 'b' });
    await waitFor(() => state.size === 2);
    assert.deepEqual(gw.last.of('subscribe')[0]?.from, { offsets: { '0': 1 } });
    assert.deepEqual(Object.fromEntries(state), { a: 2, b: 3 });
  });

  it('clears and starts over when the connection dropped before snapshot_end', async (t) => {
    const { gw, hub } = setup(t, { partitions: 1 });
    gw.produce('dev', 1, { key: 'a' });
    gw.produce('dev', 1, { key: 'b' });
    gw.holdSnapshotEnd = true;
    const state = createState(hub, 'dev');
    let cleared = 0;
    state.on('clear', () => cleared++);
    await hub.connect();
    await waitFor(() => state.size === 2);
    assert.equal(state.live, false);
    gw.produce('dev', null, { key: 'b', tombstone: true });
    gw.holdSnapshotEnd = false;
    gw.last.close(1006);
    await state.ready;
    assert.equal(cleared, 1);
    assert.equal(gw.last.of('subscribe')[0]?.from, 'snapshot');
    assert.deepEqual(Object.fromEntries(state), { a: 1 });
  });

  it('ready rejects with unsupported on a gateway without snapshots', async (t) => {
    const { hub } = setup(t, { capabilities: ['auth', 'filter', 'from'] });
    await hub.connect();
    const state = createState(hub, 'dev');
    const result = await outcome(state.ready);
    assert.ok(!result.ok && result.error.code === 'unsupported');
  });
});
