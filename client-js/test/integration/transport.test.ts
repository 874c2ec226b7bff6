/**
 * The HTTP transport (`transport: 'sse'` and `'auto'`) against the real
 * gateway binary: subscriptions over `GET /sse`, publishes over
 * `POST /v1/publish`, checked in Kafka with kcat, and a resume through a
 * proxy that cuts every connection: no gap, no duplicate, counted by offset.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { FerryClient, type FerryClientOptions, type FerryMessage } from '../../src/index.js';
import { kcatConsume, kcatProduce, startGateway, startProxy, type Gateway } from '../support/gateway.js';
import { sleep, waitFor } from '../support/fake-gateway.js';

const run = Date.now().toString(36);
const topic = (name: string): string => `it-http-${name}-${run}`;

function client(t: TestContext, url: string, options: Partial<FerryClientOptions> = {}): FerryClient {
  const hub = new FerryClient({ url, transport: 'sse', reconnect: { initialDelayMs: 50, maxDelayMs: 400 }, ...options });
  t.after(() => hub.close());
  return hub;
}

let gateway: Gateway;

before(async () => {
  gateway = await startGateway({ name: 'transport' });
});
after(() => gateway?.stop());

describe("transport 'sse' against the real gateway", () => {
  it('subscribes over SSE, publishes over HTTP, each record acked and in Kafka', async (t) => {
    const hub = client(t, gateway.url);
    await hub.connect();
    assert.equal(hub.transport, 'sse');
    const name = topic('basic');
    const got: FerryMessage[] = [];
    const sub = hub.subscribe(name, (m) => got.push(m));
    await sub.ready;
    const acks = await Promise.all(Array.from({ length: 50 }, (_, i) => hub.publish(name, { i }, { key: `k${i % 3}` })));
    await waitFor(() => got.length === 50, 20_000, '50 records over SSE');
    const acked = new Set(acks.map((a) => `${a.partition}/${a.offset}`));
    assert.equal(acked.size, 50);
    assert.deepEqual(new Set(got.map((m) => `${m.partition}/${m.offset}`)), acked, 'every acked record arrives once');
    const inKafka = await kcatConsume(gateway.bootstrap, name);
    assert.equal(inKafka.length, 50);
    assert.deepEqual(new Set(inKafka.map((r) => `${r.partition}/${r.offset}`)), acked);
    const bad = await hub.publish('bad topic', 1).catch((e: { code: string }) => e.code);
    assert.equal(bad, 'invalid_topic');
  });

  it('resumes through dropped connections with no gap and no duplicate', async (t) => {
    const proxy = await startProxy(gateway.port);
    t.after(() => proxy.close());
    const name = topic('resume');
    const hub = client(t, proxy.url);
    const got: FerryMessage[] = [];
    await hub.connect();
    await hub.subscribe(name, (m) => got.push(m)).ready;
    const total = 300;
    const producing = (async () => {
      for (let i = 0; i < total; i += 20) {
        await kcatProduce(gateway.bootstrap, name, Array.from({ length: 20 }, (_, j) => JSON.stringify({ i: i + j })));
        await sleep(30);
      }
    })();
    await waitFor(() => got.length >= 60, 20_000, '60 records before the first cut');
    proxy.cut();
    await waitFor(() => got.length >= 150, 20_000, '150 records after the first cut');
    proxy.block(true);
    proxy.cut();
    await sleep(700);
    proxy.block(false);
    await producing;
    await waitFor(() => got.length >= total, 30_000, `${total} records`);
    await sleep(300);
    const seen = got.map((m) => `${m.partition}/${m.offset}`);
    assert.equal(new Set(seen).size, seen.length, 'no duplicate');
    assert.equal(seen.length, total, 'no gap');
    const inKafka = await kcatConsume(gateway.bootstrap, name);
    assert.deepEqual(new Set(seen), new Set(inKafka.map((r) => `${r.partition}/${r.offset}`)));
  });

  it("'auto' falls back to HTTP when WebSockets are blocked", async (t) => {
    class Blocked {
      constructor() {
        throw new Error('WebSockets are blocked here');
      }
    }
    const hub = client(t, gateway.url, { transport: 'auto', WebSocket: Blocked as never });
    await hub.connect();
    assert.equal(hub.transport, 'sse');
    const name = topic('auto');
    const got: FerryMessage[] = [];
    await hub.subscribe(name, (m) => got.push(m)).ready;
    const ack = await hub.publish(name, { via: 'http' });
    await waitFor(() => got.length === 1, 20_000, 'the record over SSE');
    assert.deepEqual([got[0]?.offset, got[0]?.value], [ack.offset, { via: 'http' }]);
  });
});
