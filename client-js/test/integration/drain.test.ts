/**
 * Draining a node for an upgrade, with the real client: two gateway nodes
 * share one Kafka, both with the admin API on (one token, one control topic
 * per run). 500 clients live on node A (first in their URL list [A, B])
 * while a publisher on node B keeps a steady stream going. The admin API
 * drains A over 5 seconds: A answers 503 on `/readyz` and to new upgrades,
 * closes its sockets with 1012 spread over the 5 seconds and exits 0; every
 * client reconnects to B with jitter and resumes there, with every record
 * once, in order per partition.
 *
 * Kafka: the broker FERRY_TEST_KAFKA names (host:port), when set. Else a
 * third gateway process holds an embedded Kafka that both nodes point at;
 * it has the admin API on too, so that it creates the control topic (a node
 * cannot create topics on another process's embedded Kafka).
 *
 * A missing binary fails. A binary without the admin API (no `ferry drain`)
 * skips with the reason, except under CI=true, where it fails.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { FerryClient, type FerryError, type FerryMessage, type GapFrame, type PublishAck } from '../../src/index.js';
import { requireGatewayBinary, startTwoNodes, type Gateway } from '../support/gateway.js';
import { sleep } from '../support/fake-gateway.js';

const run = Date.now().toString(36);
const realKafka = process.env.FERRY_TEST_KAFKA?.trim() || undefined;

const CLIENTS = 500;
const DRAIN_SECONDS = 5;
/** Records the publisher sends per tick, and the pause between ticks (about 20 records/s, 10 000 deliveries/s). */
const PER_TICK = 2;
const TICK_MS = 100;
/** The whole test, start to end; every wait below takes from it. */
const BUDGET_MS = 240_000;

const ADMIN_TOKEN = randomBytes(32).toString('hex');
const adminEnv = {
  FERRY_ADMIN_ENABLED: 'true',
  FERRY_ADMIN_TOKEN: ADMIN_TOKEN,
  FERRY_ADMIN_LISTEN: '127.0.0.1:0',
  FERRY_ADMIN_CONTROL_TOPIC: `it-control-${run}`,
};

/** Why this binary cannot run the test, when it cannot. */
let lacks: string | undefined;
let kafkaHost: Gateway | undefined;
let nodeA: Gateway;
let nodeB: Gateway;

/** The process's exit code, once it has exited. */
function exitOf(node: Gateway): Promise<number | string> {
  const child = node.process;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode ?? (child.signalCode as string));
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal as string))));
}

/** `/readyz` status, or 0 when nothing listens any more. */
async function readyz(node: Gateway): Promise<number> {
  try {
    return (await fetch(`http://127.0.0.1:${node.port}/readyz`)).status;
  } catch {
    return 0;
  }
}

/** The HTTP status a new WebSocket upgrade gets (101 when accepted), or 0 when nothing listens. */
function upgradeStatus(node: Gateway): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(node.url, ['ferry.v1']);
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('upgrade', () => {
      resolve(101);
      ws.terminate();
    });
    ws.once('error', () => resolve(0));
  });
}

before(async () => {
  const help = execFileSync(requireGatewayBinary(), ['--help'], { encoding: 'utf8' });
  if (!/^\s+drain\b/m.test(help)) {
    lacks = `${requireGatewayBinary()} has no admin API (no \`ferry drain\` in its --help)`;
    return;
  }
  await startTwoNodes('drain', run, realKafka, adminEnv, (started) => {
    kafkaHost = started.kafkaHost;
    if (started.nodeA) nodeA = started.nodeA;
    if (started.nodeB) nodeB = started.nodeB;
  });
});

after(async () => {
  await Promise.all([nodeA?.stop(), nodeB?.stop()]);
  await kafkaHost?.stop();
});

describe(`draining a node through the admin API (${realKafka ? `Kafka at ${realKafka}` : 'embedded Kafka in a third gateway'})`, () => {
  it(
    `${CLIENTS} clients on node A move to node B during a ${DRAIN_SECONDS} s drain: every record once, A exits 0`,
    { timeout: BUDGET_MS + 30_000 },
    async (t) => {
      if (lacks) {
        if (process.env.CI === 'true') assert.fail(`${lacks} (CI=true: a missing feature is a failure, not a skip)`);
        return t.skip(lacks);
      }
      const deadline = Date.now() + BUDGET_MS;
      /** Waits for `check` (polled every 50 ms) within what is left of the budget; the failure names the step and its state. */
      const step = async (what: string, check: () => boolean, state: () => string = () => ''): Promise<void> => {
        while (!check()) {
          if (Date.now() > deadline) throw new Error(`drain test: no "${what}" within the ${BUDGET_MS / 1000} s budget${state() ? `; ${state()}` : ''}`);
          await sleep(50);
        }
      };
      /** Awaits `promise` within what is left of the budget. */
      const within = async <T>(what: string, promise: Promise<T>): Promise<T> => {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const expired = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`drain test: no "${what}" within the ${BUDGET_MS / 1000} s budget`)), Math.max(deadline - Date.now(), 1));
        });
        try {
          return await Promise.race([promise, expired]);
        } finally {
          clearTimeout(timer);
        }
      };
      const topic = `it-drain-${run}`;
      const nodeOf = (name: string): string => `${name}-${run}`;
      const clients: FerryClient[] = [];
      t.after(() => Promise.all(clients.map((c) => c.close())));

      assert.ok(nodeA.admin && nodeB.admin, 'both nodes serve the admin API');

      // Create the topic (on the node that holds the embedded Kafka, which creates it there).
      const creator = new FerryClient({ url: (kafkaHost ?? nodeB).url, WebSocket });
      clients.push(creator);
      await within('topic created', creator.connect().then(() => creator.publish(topic, { warmup: true })));
      await creator.close();

      // The clients, on node A, B next in their list; connected in batches so that a loaded machine sees no handshake storm.
      const received: FerryMessage[][] = [];
      /** Per client: the highest offset received per partition. */
      const latest: Map<number, number>[] = [];
      const errors: FerryError[] = [];
      const gaps: GapFrame[] = [];
      /** Per client: the close codes of its lost connections and failed attempts, with when. */
      const disconnects: { code: number; at: number }[][] = [];
      const subscribers: FerryClient[] = [];
      for (let first = 0; first < CLIENTS; first += 50) {
        const readies: Promise<void>[] = [];
        for (let i = first; i < Math.min(CLIENTS, first + 50); i++) {
          const hub = new FerryClient({ url: [nodeA.url, nodeB.url], WebSocket });
          clients.push(hub);
          subscribers.push(hub);
          hub.on('error', (e) => errors.push(e));
          hub.on('gap', (g) => gaps.push(g));
          const lost: { code: number; at: number }[] = [];
          disconnects.push(lost);
          hub.on('disconnect', (d) => lost.push({ code: d.code, at: Date.now() }));
          const got: FerryMessage[] = [];
          received.push(got);
          const top = new Map<number, number>();
          latest.push(top);
          const onMessage = (m: FerryMessage): void => {
            got.push(m);
            top.set(m.partition, Math.max(m.offset, top.get(m.partition) ?? -1));
          };
          readies.push(hub.subscribe(topic, onMessage).ready);
          void hub.connect();
        }
        // Live: every record published from now on is owed to every client.
        await within(`clients ${first}..${first + readies.length - 1} subscribed on node A`, Promise.all(readies));
      }
      const onA = subscribers.filter((c) => c.welcome?.node === nodeOf('node-a')).length;
      assert.equal(onA, CLIENTS, 'every client starts on node A');

      // A publisher on node B: a steady stream before, during and after the drain.
      const publisher = new FerryClient({ url: nodeB.url, WebSocket });
      clients.push(publisher);
      await within('publisher connected to node B', publisher.connect());
      const acks: PublishAck[] = [];
      let publishing = true;
      let sent = 0;
      let publishFailed: unknown;
      const producing = (async () => {
        while (publishing) {
          const batch = Array.from({ length: PER_TICK }, () => {
            const i = sent++;
            return publisher.publish(topic, { i }, { key: `k${i % 7}` });
          });
          acks.push(...(await Promise.all(batch)));
          await sleep(TICK_MS);
        }
      })();
      producing.catch((err: unknown) => (publishFailed = err)); // awaited below; this only ends the waits early
      const counts = (): string => {
        const n = received.map((g) => g.length);
        const failed = publishFailed === undefined ? '' : `; the publisher failed: ${publishFailed instanceof Error ? publishFailed.message : JSON.stringify(publishFailed)}`;
        return `records per client ${Math.min(...n)}..${Math.max(...n)} of ${acks.length} acked${failed}`;
      };
      await step('every client receives the stream on node A', () => publishFailed !== undefined || received.every((got) => got.length >= 10), counts);
      if (publishFailed !== undefined) await producing;

      // Drain node A.
      const drainedAt = Date.now();
      const res = await within('drain answered', fetch(`${nodeA.admin}/admin/v1/drain`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ seconds: DRAIN_SECONDS }),
      }));
      const body = (await res.json()) as { draining?: boolean; seconds?: number; connections?: number };
      assert.equal(res.status, 202, `drain accepted: ${JSON.stringify(body)}`);
      assert.deepEqual(body, { draining: true, seconds: DRAIN_SECONDS, connections: CLIENTS });
      const exited = exitOf(nodeA);

      // While A drains: /readyz 503 and new upgrades refused, until it is gone.
      const readiness: number[] = [];
      const upgrades: number[] = [];
      let aGone = false;
      void exited.then(() => (aGone = true));
      while (!aGone) {
        if (Date.now() > deadline) throw new Error(`drain test: node A still runs ${BUDGET_MS / 1000} s in; ${counts()}`);
        const [ready, upgrade] = await Promise.all([readyz(nodeA), upgradeStatus(nodeA)]);
        if (!aGone) {
          readiness.push(ready);
          upgrades.push(upgrade);
        }
        await Promise.race([sleep(250), exited]);
      }
      const exitCode = await exited;
      const drainMs = Date.now() - drainedAt;
      assert.equal(exitCode, 0, `node A exits 0 once drained (log ${nodeA.logFile})`);
      const answered = readiness.filter((s) => s !== 0);
      assert.ok(answered.length >= 1, 'node A answered /readyz during the drain');
      assert.deepEqual([...new Set(answered)], [503], '/readyz is 503 on node A throughout the drain');
      assert.deepEqual([...new Set(upgrades.filter((s) => s !== 0))], [503], 'node A refuses new WebSockets with 503 while draining');

      // Every client lands on B; the stream goes on a while there, then ends with one record per partition.
      await step(
        'every client reconnected to node B',
        () => subscribers.every((c) => c.state === 'open' && c.welcome?.node === nodeOf('node-b')),
        () => `${subscribers.filter((c) => c.welcome?.node === nodeOf('node-b')).length} of ${CLIENTS} on B`,
      );
      const movedAt = acks.length;
      await step('20 more records published after the move', () => publishFailed !== undefined || acks.length >= movedAt + 20, counts);
      publishing = false;
      await within('publisher stopped', producing);
      const partitions = [...new Set(acks.map((a) => a.partition))];
      const endMarkers = Promise.all(partitions.map((partition) => publisher.publish(topic, { end: partition }, { partition })));
      acks.push(...(await within('end of stream published', endMarkers)));
      const owed = new Set(acks.map((a) => `${a.partition}/${a.offset}`));
      assert.equal(owed.size, acks.length);
      // The last record of each partition is the end marker: a client that has it has had its partition's whole stream.
      const ends = new Map(acks.slice(-partitions.length).map((a) => [a.partition, a.offset]));
      const complete = (top: Map<number, number>): boolean => [...ends].every(([p, offset]) => (top.get(p) ?? -1) >= offset);
      await step('every client received the end of every partition', () => latest.every(complete), () => {
        const behind = latest.filter((top) => !complete(top)).length;
        return `${behind} clients short of the end; ${counts()}`;
      });

      received.forEach((got, n) => {
        const places = got.map((m) => `${m.partition}/${m.offset}`);
        assert.equal(new Set(places).size, places.length, `client ${n}: no duplicate`);
        assert.ok(places.every((p) => owed.has(p)), `client ${n}: only published records`);
        const had = new Set(places);
        const missing = [...owed].filter((p) => !had.has(p));
        assert.deepEqual(missing, [], `client ${n}: no gap`);
        for (const p of partitions) {
          const offsets = got.filter((m) => m.partition === p).map((m) => m.offset);
          assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), `client ${n}: partition ${p} in order`);
        }
      });
      disconnects.forEach((lost, n) => {
        assert.equal(lost[0]?.code, 1012, `client ${n}: closed by the drain with 1012`);
        assert.equal(lost.filter((d) => d.code === 1012).length, 1, `client ${n}: closed once by the drain`);
      });
      // A reconnect attempt that failed on a loaded machine is allowed (the client tries again), but reported.
      const retries = disconnects.flatMap((lost) => lost.slice(1).map((d) => d.code));
      if (retries.length > 0) t.diagnostic(`failed reconnect attempts: ${retries.length} (codes ${[...new Set(retries)].join(', ')})`);
      const closes = disconnects.map((lost) => (lost[0]?.at ?? drainedAt) - drainedAt);
      const spread = Math.max(...closes) - Math.min(...closes);
      assert.ok(spread >= (DRAIN_SECONDS * 1000) / 2, `closes spread over the drain (${spread} ms between first and last)`);
      assert.deepEqual(gaps, [], 'no gap notice');
      assert.deepEqual(errors.map((e) => `${e.code}: ${e.message}`), [], 'no error');
      t.diagnostic(`${acks.length} records to ${CLIENTS} clients; node A drained and exited in ${drainMs} ms; closes spread over ${spread} ms; /readyz 503 on ${answered.length} probes`);
    },
  );
});
