/**
 * Integration tests against the real gateway binary (`../target/debug/ferry`,
 * or FERRY_BIN) with its embedded Kafka, started by the tests themselves.
 * Records are checked from outside the gateway with kcat.
 *
 * Features the gateway may not have yet are probed first; a test that needs
 * one is skipped with the reason (naming the gateway issue) printed, except
 * under `CI=true`, where a failed probe fails the test. A missing binary is
 * always a failure, not a skip.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { WebSocket } from 'ws';
import { FerryClient, V1_CAPABILITIES, type ConnectionState, type FerryClientOptions, type FerryError, type FerryMessage, type GapFrame } from '../../src/index.js';
import {
  OUTPUT_DIR,
  kcatConsume,
  kcatProduce,
  mintToken,
  startGateway,
  startProxy,
  type Gateway,
} from '../support/gateway.js';
import { sleep, waitFor } from '../support/fake-gateway.js';

const run = Date.now().toString(36);
const topic = (name: string): string => `it-${name}-${run}`;

/**
 * A feature probe failed: skip with the reason locally, fail under CI
 * (where a skip would count as a pass for a gateway that lost the feature).
 */
function missing(t: TestContext, reason: string): void {
  if (process.env.CI === 'true') assert.fail(`${reason} (CI=true: a failed probe is a failure, not a skip)`);
  t.skip(reason);
}

/** A client on the `ws` package, closed when the test ends, recording states, errors and gaps. */
function client(t: TestContext, url: string, options: Partial<FerryClientOptions> = {}) {
  const hub = new FerryClient({ url, WebSocket, reconnect: { initialDelayMs: 50, maxDelayMs: 400 }, ...options });
  const states: ConnectionState[] = [];
  const errors: FerryError[] = [];
  const gaps: GapFrame[] = [];
  let disconnects = 0;
  hub.on('state', (s) => states.push(s));
  hub.on('error', (e) => errors.push(e));
  hub.on('gap', (g) => gaps.push(g));
  hub.on('disconnect', () => disconnects++);
  t.after(() => hub.close());
  return { hub, states, errors, gaps, disconnects: () => disconnects };
}

/** Sends raw frames on a fresh socket and collects replies for `ms`. */
async function rawExchange(url: string, frames: object[], ms = 1500): Promise<Record<string, unknown>[]> {
  const ws = new WebSocket(url, ['ferry.v1']);
  const replies: Record<string, unknown>[] = [];
  ws.on('message', (d: Buffer) => replies.push(JSON.parse(d.toString()) as Record<string, unknown>));
  await new Promise<void>((resolve, reject) => ws.once('open', () => resolve()).once('error', reject));
  for (const f of frames) ws.send(JSON.stringify(f));
  await sleep(ms);
  ws.close();
  return replies;
}

let gateway: Gateway;

before(async () => {
  gateway = await startGateway({ name: 'integration' });
});
after(() => gateway?.stop());

describe('against the real gateway (embedded Kafka)', () => {
  it('publishes JSON and bytes and resolves with the offset Kafka stored them at', async (t) => {
    const { hub } = client(t, gateway.url);
    await hub.connect();
    const name = topic('publish');
    const ack = await hub.publish(name, { temp: 21.5, unit: 'C' }, { key: 'dev-42', headers: { trace: 'abc' } });
    assert.equal(ack.topic, name);
    const bin = await hub.publish(name, new Uint8Array([0xff, 0x00, 0x01]), { partition: 2 });
    assert.equal(bin.partition, 2);

    const records = await kcatConsume(gateway.bootstrap, name);
    const json = records.find((r) => r.partition === ack.partition && r.offset === ack.offset);
    assert.ok(json, `record at ${ack.partition}/${ack.offset} in ${JSON.stringify(records)}`);
    assert.equal(json.payload, '{"temp":21.5,"unit":"C"}');
    assert.equal(json.key, 'dev-42');
    assert.equal(json.headers.trace, 'abc');

    // Bytes come back as bytes (read from the start with a second client).
    const { hub: reader } = client(t, gateway.url);
    const got: FerryMessage[] = [];
    reader.subscribe(name, (m) => got.push(m), { from: 'earliest' });
    await reader.connect();
    await waitFor(() => got.length === 2, 10_000, 'both records');
    const binary = got.find((m) => m.partition === 2 && m.offset === bin.offset);
    assert.deepEqual(binary?.value, new Uint8Array([0xff, 0x00, 0x01]));
  });

  it('rejects with the protocol error code and stays open', async (t) => {
    const { hub } = client(t, gateway.url);
    await hub.connect();
    await assert.rejects(hub.publish('__internal', 1), (e: FerryError) => e.code === 'invalid_topic');
    // Refused locally: the gateway would close the socket with 1009 (terminal) for a frame this big.
    const max = hub.limits?.max_frame_bytes ?? 65536;
    await assert.rejects(hub.publish(topic('big'), 'x'.repeat(max + 10)), (e: FerryError) => e.code === 'too_large');
    // The gateway's own refusal, with its code: a partition that does not exist.
    await assert.rejects(
      hub.publish(topic('errors'), 1, { partition: 999 }),
      (e: FerryError) => e.code === 'bad_request' && e.source === 'gateway' && !!e.requestId,
    );
    assert.equal(hub.state, 'open');
    assert.ok(await hub.publish(topic('errors'), 1));
  });

  it('announces the v1 capabilities in welcome, and names an unknown field in its error', async (t) => {
    const { hub } = client(t, gateway.url);
    await hub.connect();
    assert.equal(hub.welcome?.protocol, 1);
    assert.deepEqual(hub.welcome?.capabilities, [...V1_CAPABILITIES, 'snapshot', 'throttle', 'traceparent']);
    const replies = await rawExchange(gateway.url, [{ type: 'ping', id: 'u1', ttl_ms: 5 }], 500);
    const error = replies.find((f) => f.id === 'u1');
    assert.equal(error?.type, 'error');
    assert.equal(error?.code, 'bad_request');
    assert.match(String(error?.message), /unknown field `ttl_ms`/);
  });

  it('refuses upgrades with the statuses of protocol/vectors/codes.json: an unknown subprotocol, a foreign origin; no offer at all is accepted', async () => {
    const table = (JSON.parse(readFileSync(new URL('../../../protocol/vectors/codes.json', import.meta.url), 'utf8')) as {
      upgrade_statuses: { status: number; name: string }[];
    }).upgrade_statuses;
    const statusOf = (name: string): number => table.find((r) => r.name === name)?.status ?? -1;
    const refusal = (protocols: string[], headers: Record<string, string> = {}) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const ws = new WebSocket(gateway.url, protocols, { headers });
        ws.on('unexpected-response', (_req, res) => {
          let body = '';
          res.on('data', (chunk: Buffer) => (body += chunk.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        ws.on('open', () => reject(new Error('upgraded')));
        ws.on('error', () => undefined);
      });
    const origin = await refusal(['ferry.v1'], { Origin: 'https://elsewhere.example' });
    assert.equal(origin.status, statusOf('origin_forbidden'));
    const refused = await refusal(['ferry.v2']);
    assert.equal(refused.status, statusOf('unsupported_subprotocol'));
    assert.equal(refused.status, 400);
    assert.match(refused.body, /ferry\.v2/);
    assert.match(refused.body, /ferry\.v1/);
    const plain = new WebSocket(gateway.url);
    const welcome = await new Promise<Record<string, unknown>>((resolve, reject) => {
      plain.once('message', (d: Buffer) => resolve(JSON.parse(d.toString()) as Record<string, unknown>));
      plain.once('error', reject);
    });
    plain.close();
    assert.equal(welcome.type, 'welcome');
  });

  it('subscribes: records produced by kcat and by another client arrive once, in order per partition', async (t) => {
    const { hub } = client(t, gateway.url);
    const name = topic('subscribe');
    const got: FerryMessage[] = [];
    const sub = hub.subscribe(name, (m) => got.push(m));
    await hub.connect();
    await sub.ready;
    await kcatProduce(
      gateway.bootstrap,
      name,
      Array.from({ length: 20 }, (_, i) => `k${i}\t{"n":${i}}`),
      true,
    );
    const { hub: other } = client(t, gateway.url);
    await other.connect();
    await other.publish(name, { n: 20 }, { key: 'k20' });
    await waitFor(() => got.length >= 21, 15_000, '21 records');
    await sleep(200);
    assert.equal(got.length, 21);
    assert.deepEqual(
      got.map((m) => (m.value as { n: number }).n).sort((a, b) => a - b),
      Array.from({ length: 21 }, (_, i) => i),
    );
    assert.ok(got.every((m) => m.key === `k${(m.value as { n: number }).n}`));
    for (let p = 0; p < 3; p++) {
      const offsets = got.filter((m) => m.partition === p).map((m) => m.offset);
      assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b));
    }
  });

  it('resumes after the connection drops mid-stream: no gap, no duplicate (counted by offset)', async (t) => {
    const probe = await rawExchange(gateway.url, [{ type: 'subscribe', id: 'probe', topic: topic('probe-from'), from: 'earliest' }], 800);
    const reply = probe.find((f) => f.id === 'probe');
    if (reply?.type !== 'subscribed') {
      missing(t, `the gateway refuses subscribe \`from\` (issue 4: resume from offsets): ${JSON.stringify(reply)}`);
      return;
    }
    const proxy = await startProxy(gateway.port);
    t.after(() => proxy.close());
    const name = topic('resume');
    const total = 600;
    const { hub, gaps, disconnects, states } = client(t, proxy.url);
    const got: FerryMessage[] = [];
    const sub = hub.subscribe(name, (m) => got.push(m));
    await hub.connect();
    await waitFor(() => proxy.connections === 1, 5000, 'proxied connection');
    await sub.ready; // live before the first record: every one of them is owed

    // A producer on its own (direct) connection, publishing at a steady pace.
    const { hub: producer } = client(t, gateway.url);
    await producer.connect();
    const producing = (async () => {
      for (let i = 0; i < total; i += 10) {
        await Promise.all(Array.from({ length: 10 }, (_, j) => producer.publish(name, { i: i + j })));
        await sleep(10);
      }
    })();

    // Cut the socket twice while records flow; the second time the gateway stays unreachable for a while.
    await waitFor(() => got.length >= 100, 20_000, '100 records before the first cut');
    proxy.cut();
    await waitFor(() => hub.state === 'open' && got.length >= 300, 20_000, 'resumed, 300 records');
    proxy.block(true);
    proxy.cut();
    await sleep(500);
    proxy.block(false);
    await producing;
    await waitFor(() => got.length >= total, 30_000, `${total} records`);
    await sleep(300);

    const byOffset = new Set(got.map((m) => `${m.partition}/${m.offset}`));
    assert.equal(byOffset.size, got.length, 'no duplicate');
    assert.equal(got.length, total, 'every record once');
    assert.deepEqual(
      got.map((m) => (m.value as { i: number }).i).sort((a, b) => a - b),
      Array.from({ length: total }, (_, i) => i),
      'no gap',
    );
    const records = await kcatConsume(gateway.bootstrap, name);
    assert.equal(records.length, total);
    assert.ok(disconnects() >= 2, `disconnects: ${disconnects()}`);
    assert.ok(states.filter((s) => s === 'reconnecting').length >= 2);
    assert.deepEqual(gaps, []);
  });

  it('shares a topic in a group: each record reaches one member; with ack "client", records a member left uncommitted go to the other', async (t) => {
    const name = topic('group');
    const group = `it-workers-${run}`;
    const place = (m: FerryMessage): string => `${m.partition}/${m.offset}`;
    const options = { group, ack: 'client', from: 'earliest' } as const;
    const { hub: diligent, errors } = client(t, gateway.url);
    const { hub: lazy } = client(t, gateway.url);
    const done: FerryMessage[] = [];
    const left: FerryMessage[] = [];
    const commits: Promise<void>[] = [];
    const first = diligent.subscribe(name, (m) => {
      done.push(m);
      commits.push(diligent.commit(m)); // processed: commit it
    }, options);
    await diligent.connect();
    const refused = await first.ready.then(() => undefined, (e: FerryError) => e);
    if (refused?.code === 'bad_request') {
      missing(t, `the gateway refuses shared-group subscriptions (group/ack): ${refused.message}`);
      return;
    }
    assert.equal(refused, undefined);
    await lazy.connect();
    await lazy.subscribe(name, (m) => left.push(m), options).ready; // never commits

    await kcatProduce(gateway.bootstrap, name, Array.from({ length: 20 }, (_, i) => `{"n":${i}}`));
    await waitFor(() => new Set([...done, ...left].map(place)).size === 20, 30_000, '20 records between the two members');
    await sleep(300);
    // Exactly one member got each record, once.
    const mine = new Set(done.map(place));
    assert.equal(mine.size, done.length, 'no duplicate at the committing member');
    assert.equal(new Set(left.map(place)).size, left.length, 'no duplicate at the lazy member');
    assert.ok(left.every((m) => !mine.has(place(m))), 'no record at both members');
    assert.equal(done.length + left.length, 20);
    assert.ok(done.length > 0 && left.length > 0, `both got a share: ${done.length} / ${left.length}`);

    // The lazy member leaves without committing: its records are redelivered to the other.
    await lazy.close();
    await waitFor(() => new Set(done.map(place)).size === 20, 30_000, 'every record at the committing member');
    assert.ok(left.every((m) => done.some((d) => place(d) === place(m))), 'got what the lazy member left');
    assert.deepEqual(
      [...new Set(done.map((m) => (m.value as { n: number }).n))].sort((a, b) => a - b),
      Array.from({ length: 20 }, (_, i) => i),
    );
    // A commit may race with the rewind (its record was handed out again): the gateway then refuses it.
    assert.deepEqual(errors, []);
    const outcomes = await Promise.allSettled(commits);
    const refusedCommits = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason as FerryError] : []));
    assert.ok(refusedCommits.every((e) => e.code === 'bad_request' && e.source === 'gateway'), refusedCommits.map((e) => e.message).join('; '));
    assert.ok(outcomes.some((o) => o.status === 'fulfilled'), 'commits are confirmed with committed');
    assert.equal(diligent.state, 'open');
  });

  it('flushes the offline queue after reconnect, with original ids and no duplicates in Kafka', async (t) => {
    const proxy = await startProxy(gateway.port);
    t.after(() => proxy.close());
    const name = topic('offline');
    const { hub } = client(t, proxy.url);
    await hub.connect();
    await hub.publish(name, { i: -1 }, { id: `off-${run}-warmup` });

    proxy.block(true);
    proxy.cut();
    await waitFor(() => hub.state === 'reconnecting', 5000, 'reconnecting');
    const pending = Array.from({ length: 50 }, (_, i) => hub.publish(name, { i }, { id: `off-${run}-${i}` }));
    let settled = 0;
    for (const p of pending) void p.then(() => settled++, () => settled++);
    await sleep(400);
    assert.equal(hub.queued, 50);
    assert.equal(settled, 0);

    proxy.block(false);
    const acks = await Promise.all(pending);
    assert.equal(new Set(acks.map((a) => `${a.partition}/${a.offset}`)).size, 50);

    const records = (await kcatConsume(gateway.bootstrap, name)).filter((r) => r.headers['ferry-id'] !== `off-${run}-warmup`);
    assert.equal(records.length, 50, 'exactly the 50 queued records, no duplicates');
    assert.deepEqual(
      records.map((r) => r.headers['ferry-id']).sort(),
      Array.from({ length: 50 }, (_, i) => `off-${run}-${i}`).sort(),
      'sent with their original ids',
    );
    assert.deepEqual(
      records.map((r) => (JSON.parse(r.payload ?? 'null') as { i: number }).i).sort((a, b) => a - b),
      Array.from({ length: 50 }, (_, i) => i),
    );
  });
});

describe('authentication (gateway with auth.mode = "jwt")', () => {
  let jwt: Gateway | undefined;
  let configFile = '';
  let startError: unknown;

  before(async () => {
    configFile = join(OUTPUT_DIR, `jwt-${run}.toml`);
    writeFileSync(
      configFile,
      [
        '[auth]',
        'mode = "jwt"',
        'hs_secret = "integration-test-secret-0123456789abcdef"',
        'leeway_secs = 0',
        '',
        '[[acl.rules]]',
        'publish = ["**"]',
        'subscribe = ["**"]',
        '',
      ].join('\n'),
    );
    try {
      jwt = await startGateway({ name: 'integration-jwt', args: ['--config', configFile], readyTimeoutMs: 30_000 });
    } catch (err) {
      startError = err;
    }
  });
  after(() => jwt?.stop());

  it('refreshes the token in-band before it expires, without dropping the connection', async (t) => {
    let token: string;
    try {
      if (!jwt) throw startError;
      token = await mintToken(configFile, 3);
    } catch (err) {
      missing(t, `the gateway cannot run with JWT authentication yet (issue 3): ${String(err).split('\n')[0]}`);
      return;
    }
    const probe = await rawExchange(jwt.url, [{ type: 'auth', id: 'a', token }], 800);
    if (probe[0]?.type !== 'welcome' || typeof probe[0]?.expires_at !== 'number') {
      missing(t, `the gateway does not authenticate with an auth frame yet (issue 3): ${JSON.stringify(probe[0])}`);
      return;
    }

    let minted = 0;
    const { hub, errors, disconnects } = client(t, jwt.url, {
      getToken: async () => {
        minted++;
        return mintToken(configFile, 3); // 3 s tokens, no leeway: the client must refresh about every 1.5 s
      },
    });
    const name = topic('auth');
    const got: FerryMessage[] = [];
    const sub = hub.subscribe(name, (m) => got.push(m));
    await hub.connect();
    await sub.ready; // from "latest": a record published before the subscription is live is not owed
    const expiresAt = hub.welcome?.expires_at ?? 0;
    assert.ok(expiresAt > Date.now(), 'welcome carries expires_at');

    const acks = [];
    const until = Date.now() + 7_000; // more than twice a token's lifetime
    for (let i = 0; Date.now() < until; i++) {
      acks.push(await hub.publish(name, { i }));
      await sleep(200);
    }
    await waitFor(() => got.length === acks.length, 5000, `every record delivered (${acks.length} acked)`).catch(
      (err: Error) => {
        throw new Error(`${err.message}; got ${got.length}: ${JSON.stringify(got.map((m) => m.offset))}`);
      },
    );
    assert.equal(disconnects(), 0, 'never closed (4002 would mean the token expired)');
    assert.equal(hub.state, 'open');
    assert.ok(minted >= 4, `getToken() calls: ${minted}`);
    assert.deepEqual(errors, []);
  });

  it('refuses a bad static token for good (no reconnect loop)', async (t) => {
    if (!jwt) {
      missing(t, `the gateway cannot run with JWT authentication yet (issue 3): ${String(startError).split('\n')[0]}`);
      return;
    }
    const { hub } = client(t, jwt.url, { token: 'not-a-jwt' });
    await assert.rejects(hub.connect(), (e: FerryError) => e.code === 'unauthorized');
    assert.equal(hub.state, 'closed');
  });
});
