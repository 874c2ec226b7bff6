/**
 * Failover with the real client: two gateway nodes share one Kafka; clients
 * live on node A (through the client's URL list) move to node B when A is
 * SIGKILLed, and resume there with every record once, in order per
 * partition.
 *
 * Kafka: the broker FERRY_TEST_KAFKA names (host:port), when set. Else a
 * third gateway process runs only to hold an embedded Kafka that both nodes
 * point at, so that killing node A does not take Kafka with it.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { FerryClient, type FerryError, type FerryMessage, type GapFrame, type PublishAck } from '../../src/index.js';
import { startTwoNodes, type Gateway } from '../support/gateway.js';
import { sleep, waitFor } from '../support/fake-gateway.js';

const run = Date.now().toString(36);
const realKafka = process.env.FERRY_TEST_KAFKA?.trim() || undefined;

const CLIENTS = 20;
const RECORDS = 600;

let kafkaHost: Gateway | undefined;
let nodeA: Gateway;
let nodeB: Gateway;

before(async () => {
  await startTwoNodes('failover', run, realKafka, {}, (started) => {
    kafkaHost = started.kafkaHost;
    if (started.nodeA) nodeA = started.nodeA;
    if (started.nodeB) nodeB = started.nodeB;
  });
});

after(async () => {
  await Promise.all([nodeA?.stop(), nodeB?.stop()]);
  await kafkaHost?.stop();
});

describe(`failover between two nodes (${realKafka ? `Kafka at ${realKafka}` : 'embedded Kafka in a third gateway'})`, () => {
  it(`${CLIENTS} clients live on node A move to node B when A is SIGKILLed: every record once, in order per partition`, { timeout: 180_000 }, async (t) => {
    const topic = `it-failover-${run}`;
    const clients: FerryClient[] = [];
    t.after(() => Promise.all(clients.map((c) => c.close())));

    // Create the topic (on the node that holds the embedded Kafka, which creates it there).
    const creator = new FerryClient({ url: (kafkaHost ?? nodeB).url, WebSocket });
    clients.push(creator);
    await creator.connect();
    await creator.publish(topic, { warmup: true });
    await creator.close();

    // Clients on node A, B next in their list.
    const received: FerryMessage[][] = [];
    const errors: FerryError[] = [];
    const gaps: GapFrame[] = [];
    let disconnects = 0;
    const readies: Promise<void>[] = [];
    for (let i = 0; i < CLIENTS; i++) {
      const hub = new FerryClient({ url: [nodeA.url, nodeB.url], WebSocket, reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } });
      clients.push(hub);
      hub.on('error', (e) => errors.push(e));
      hub.on('gap', (g) => gaps.push(g));
      hub.on('disconnect', () => disconnects++);
      const got: FerryMessage[] = [];
      received.push(got);
      readies.push(hub.subscribe(topic, (m) => got.push(m)).ready);
      void hub.connect();
    }
    await Promise.all(readies); // live: every record published from now on is owed to every client
    const subscribers = clients.slice(1);
    assert.ok(subscribers.every((c) => c.welcome?.node === `node-a-${run}`), 'all on node A');

    // A publisher on node B, at a steady pace, before, during and after the failover.
    const publisher = new FerryClient({ url: nodeB.url, WebSocket });
    clients.push(publisher);
    await publisher.connect();
    const acks: PublishAck[] = [];
    const producing = (async () => {
      for (let i = 0; i < RECORDS; i += 10) {
        const batch = Array.from({ length: 10 }, (_, j) => publisher.publish(topic, { i: i + j }, { key: `k${(i + j) % 7}` }));
        acks.push(...(await Promise.all(batch)));
        await sleep(15);
      }
    })();

    await waitFor(() => received.every((got) => got.length >= 100), 30_000, 'every client has 100 records');
    const publishedBefore = acks.length;
    nodeA.process.kill('SIGKILL');
    await once(nodeA.process, 'exit');
    const deliveredBefore = received.map((got) => got.length);
    await producing;
    assert.ok(publishedBefore < RECORDS / 2, `most records are published after the kill (${publishedBefore} before)`);

    await waitFor(
      () => subscribers.every((c) => c.state === 'open' && c.welcome?.node === `node-b-${run}`),
      60_000,
      'every client reconnected to node B',
    );
    await waitFor(
      () => received.every((got) => got.length >= RECORDS),
      60_000,
      `${RECORDS} records at every client (have ${received.map((g) => g.length).join(',')})`,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; counts: ${received.map((g) => g.length).join(',')}`);
    });
    await sleep(500); // anything extra (a duplicate) would arrive meanwhile

    const owed = new Set(acks.map((a) => `${a.partition}/${a.offset}`));
    assert.equal(owed.size, RECORDS);
    received.forEach((got, n) => {
      const places = got.map((m) => `${m.partition}/${m.offset}`);
      assert.equal(new Set(places).size, places.length, `client ${n}: no duplicate`);
      assert.equal(got.length, RECORDS, `client ${n}: every record once`);
      assert.ok(places.every((p) => owed.has(p)), `client ${n}: only published records`);
      const partitions = new Set(got.map((m) => m.partition));
      for (const p of partitions) {
        const offsets = got.filter((m) => m.partition === p).map((m) => m.offset);
        assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), `client ${n}: partition ${p} in order`);
      }
    });
    assert.equal(disconnects, CLIENTS, 'each client lost node A once');
    t.diagnostic(`records per client when A died: ${Math.min(...deliveredBefore)}..${Math.max(...deliveredBefore)} of ${RECORDS}`);
    assert.deepEqual(gaps, [], 'no gap');
    assert.deepEqual(errors.map((e) => `${e.code}: ${e.message}`), [], 'no error');
  });
});
