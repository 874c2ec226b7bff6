/**
 * `createState` and snapshot subscriptions against the real gateway binary,
 * with a `[[tables]]` config: the snapshot at `ready` (latest value per key,
 * a kcat tombstone leaves its key out), then live updates and deletes as
 * change events, over a WebSocket and over SSE; and a reconnect after
 * `snapshot_end` resumes from offsets without the snapshot again.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { WebSocket } from 'ws';
import { FerryClient, createState, type FerryClientOptions, type FerryMessage, type WebSocketConstructor } from '../../src/index.js';
import { OUTPUT_DIR, startGateway, startProxy, type Gateway } from '../support/gateway.js';
import { waitFor } from '../support/fake-gateway.js';

const run = Date.now().toString(36);
const topic = (name: string): string => `it-state.${name}-${run}`;

/** Produces a tombstone (a record with a NULL value) for `key` with kcat. */
function kcatTombstone(bootstrap: string, name: string, key: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('kcat', ['-P', '-b', bootstrap, '-t', name, '-K:', '-Z'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`kcat -P -Z exited ${code}: ${err}`))));
    child.stdin.end(`${key}:\n`);
  });
}

function client(t: TestContext, url: string, options: Partial<FerryClientOptions> = {}): FerryClient {
  const hub = new FerryClient({
    url,
    WebSocket,
    reconnect: { initialDelayMs: 50, maxDelayMs: 400 },
    ...options,
  });
  hub.on('error', () => undefined);
  t.after(() => hub.close());
  return hub;
}

let gateway: Gateway;

before(async () => {
  mkdirSync(OUTPUT_DIR, { recursive: true });
  const config = join(OUTPUT_DIR, `state-${run}.toml`);
  writeFileSync(config, '[[tables]]\ntopics = "it-state.**"\n');
  gateway = await startGateway({ name: 'state', args: ['--config', config] });
});
after(() => gateway?.stop());

/** Publishes keyed records and one tombstone, then checks the store at `ready` and its live change events. */
async function snapshotThenLive(t: TestContext, transport: 'websocket' | 'auto'): Promise<void> {
  const name = topic(transport);
  // 'auto' with WebSockets blocked: the client falls back to SSE.
  const blocked = class {
    constructor() {
      throw new Error('WebSockets are blocked here');
    }
  } as unknown as WebSocketConstructor;
  const hub = client(t, gateway.url, transport === 'auto' ? { transport, WebSocket: blocked } : { transport });
  await hub.connect();
  assert.equal(hub.transport, transport === 'auto' ? 'sse' : 'websocket');
  assert.ok(hub.welcome?.capabilities?.includes('snapshot'), 'the gateway announces snapshot');
  for (const [key, value] of [['a', 1], ['b', 1], ['a', 2], ['c', 1], ['d', 1]] as const) {
    await hub.publish(name, { v: value }, { key });
  }
  await kcatTombstone(gateway.bootstrap, name, 'c');

  const state = createState<{ v: number }>(hub, name, { throttleMs: 10 });
  const events: unknown[] = [];
  state.on('set', (key, value, m) => events.push(['set', key, value, m.snapshot === true]));
  state.on('delete', (key) => events.push(['delete', key]));
  await state.ready;
  assert.deepEqual(Object.fromEntries(state), { a: { v: 2 }, b: { v: 1 }, d: { v: 1 } }, 'latest per key, tombstoned key left out');
  assert.ok(events.every((e) => (e as unknown[])[0] === 'set' && (e as unknown[])[3] === true));
  assert.ok(Object.keys(state.subscription.positions()).length > 0, 'snapshot_end set the positions');

  events.length = 0;
  await hub.publish(name, { v: 3 }, { key: 'b' });
  await kcatTombstone(gateway.bootstrap, name, 'd');
  await hub.publish(name, { v: 1 }, { key: 'e' });
  await waitFor(() => events.length >= 3, 15_000, 'three live changes');
  assert.deepEqual(
    events.map((e) => JSON.stringify(e)).sort(),
    [['set', 'b', { v: 3 }, false], ['delete', 'd'], ['set', 'e', { v: 1 }, false]].map((e) => JSON.stringify(e)).sort(),
  );
  assert.deepEqual(Object.fromEntries(state), { a: { v: 2 }, b: { v: 3 }, e: { v: 1 } });
  await state.close();
}

describe('createState against the real gateway', () => {
  it('snapshot at ready, then live sets and tombstones (WebSocket)', (t) => snapshotThenLive(t, 'websocket'));

  it("snapshot at ready, then live sets and tombstones (SSE, as transport 'auto' falls back)", (t) => snapshotThenLive(t, 'auto'));

  it('resumes after a dropped connection from offsets, without the snapshot again', async (t) => {
    const proxy = await startProxy(gateway.port);
    t.after(() => proxy.close());
    const name = topic('resume');
    const publisher = client(t, gateway.url);
    await publisher.connect();
    await publisher.publish(name, 1, { key: 'a' });
    await publisher.publish(name, 1, { key: 'b' });
    const hub = client(t, proxy.url);
    const got: FerryMessage[] = [];
    hub.subscribe(name, (m) => got.push(m), { from: 'snapshot' });
    const state = createState(hub, name);
    let drops = 0;
    hub.on('disconnect', () => drops++);
    await hub.connect();
    await state.ready;
    const snapshotCount = got.filter((m) => m.snapshot).length;
    assert.equal(snapshotCount, 2);
    proxy.cut();
    await publisher.publish(name, 2, { key: 'a' });
    await waitFor(() => state.get('a') === 2, 15_000, 'the update made while disconnected');
    assert.ok(drops >= 1, 'the connection was cut');
    assert.equal(got.filter((m) => m.snapshot).length, 2, 'no snapshot again');
    assert.deepEqual(Object.fromEntries(state), { a: 2, b: 1 });
  });
});
