/** The small modules: backoff, close codes, token timing, the outbox, the emitter. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffBounds, backoffDelay } from '../../src/backoff.js';
import { mayReconnect } from '../../src/codes.js';
import { Emitter } from '../../src/emitter.js';
import { FerryError } from '../../src/errors.js';
import { MemoryStorage, Outbox, type QueuedPublish } from '../../src/queue.js';
import { TokenSource, refreshDelay } from '../../src/token.js';
import { sleep } from '../support/fake-gateway.js';

describe('backoff', () => {
  const bounds = backoffBounds({ initialDelayMs: 100, maxDelayMs: 1000, multiplier: 2 });
  it('uses full jitter: [0, min(max, initial * 2^attempt))', () => {
    assert.equal(backoffDelay(0, bounds, () => 0), 0);
    assert.equal(backoffDelay(0, bounds, () => 0.999), 99);
    assert.equal(backoffDelay(1, bounds, () => 0.5), 100);
    assert.equal(backoffDelay(3, bounds, () => 0.999), 799);
    assert.equal(backoffDelay(4, bounds, () => 0.999), 999, 'capped');
    assert.equal(backoffDelay(60, bounds, () => 0.5), 500, 'capped, no overflow');
  });
  it('stays within bounds for random draws', () => {
    for (let attempt = 0; attempt < 20; attempt++) {
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, bounds);
        assert.ok(d >= 0 && d < Math.min(1000, 100 * 2 ** attempt), `${attempt}: ${d}`);
      }
    }
  });
  it('has defaults', () => {
    assert.deepEqual(backoffBounds(), { initialDelayMs: 250, maxDelayMs: 30_000, multiplier: 2 });
    assert.deepEqual(backoffBounds({}, { initialDelayMs: 1000 }).initialDelayMs, 1000);
  });
});

describe('close codes', () => {
  it('splits "may reconnect" from terminal', () => {
    for (const c of [1001, 1005, 1006, 1011, 1012, 1013, 1014, 4000, 4001, 4002, 4499]) assert.ok(mayReconnect(c), String(c));
    for (const c of [1000, 1002, 1003, 1007, 1008, 1009, 1010, 4500, 4999, 3000]) assert.ok(!mayReconnect(c), String(c));
  });
});

describe('token timing', () => {
  it('refreshes marginMs before expiry, at mid-life for short tokens, at once when expired', () => {
    assert.equal(refreshDelay(1_000_000 + 3_600_000, 1_000_000, 30_000), 3_570_000);
    assert.equal(refreshDelay(1000 + 2000, 1000, 30_000), 1000);
    assert.equal(refreshDelay(1000, 2000, 30_000), 0);
  });
  it('collapses concurrent fetches and reuses a token that is not about to expire', async () => {
    let calls = 0;
    const src = new TokenSource(undefined, async () => {
      calls++;
      await sleep(5);
      return `t${calls}`;
    });
    const [a, b] = await Promise.all([src.fetch(), src.fetch()]);
    assert.equal(a, 't1');
    assert.equal(b, 't1');
    assert.equal(calls, 1);
    src.expiresAt = 10_000;
    assert.equal(await src.forConnect(1_000, 500), 't1');
    assert.equal(await src.forConnect(9_600, 500), 't2');
    assert.equal(calls, 2);
  });
  it('refuses an empty token', async () => {
    const src = new TokenSource(undefined, () => '');
    await assert.rejects(src.fetch(), /no token/);
  });
  it('hands out a static token without refreshing', async () => {
    const src = new TokenSource('s', undefined);
    assert.ok(src.enabled && !src.refreshable);
    src.expiresAt = 0;
    assert.equal(await src.forConnect(10, 5), 's');
  });
});

describe('outbox', () => {
  const entry = (id: string, seq = 0): QueuedPublish => ({ id, topic: 't', frame: '{}', seq });
  it('is bounded: reject-new throws queue_full', () => {
    const box = new Outbox({ maxSize: 2 }, () => undefined);
    box.push(entry('a'));
    box.push(entry('b'));
    assert.throws(
      () => box.push(entry('c')),
      (e) => e instanceof FerryError && e.code === 'queue_full' && e.requestId === 'c',
    );
    assert.equal(box.size, 2);
  });
  it('is bounded: drop-oldest evicts the head', () => {
    const box = new Outbox({ maxSize: 2, overflow: 'drop-oldest' }, () => undefined);
    box.push(entry('a'));
    box.push(entry('b'));
    assert.equal(box.push(entry('c'))?.id, 'a');
    assert.deepEqual(
      box.drain().map((e) => e.id),
      ['b', 'c'],
    );
  });
  it('maxSize 0 queues nothing', () => {
    const box = new Outbox({ maxSize: 0, overflow: 'drop-oldest' }, () => undefined);
    assert.throws(() => box.push(entry('a')), /full/);
  });
  it('puts entries back at the head without duplicates', () => {
    const box = new Outbox({}, () => undefined);
    box.push(entry('c'));
    box.unshift([entry('a'), entry('b'), entry('c')]);
    assert.deepEqual(
      box.drain().map((e) => e.id),
      ['a', 'b', 'c'],
    );
  });
  it('mirrors to storage, loads in seq order, and reports storage failures', async () => {
    const storage = new MemoryStorage();
    const box = new Outbox({ storage }, () => undefined);
    box.push(entry('b', 2));
    box.push(entry('a', 1));
    assert.deepEqual(
      (await box.load()).map((e) => e.id),
      ['a', 'b'],
    );
    box.forget('a');
    await sleep(1);
    assert.deepEqual([...storage.entries.keys()], ['b']);

    const failures: FerryError[] = [];
    const broken = new Outbox(
      { storage: { load: () => Promise.reject(new Error('x')), put: () => Promise.reject(new Error('y')), delete: () => Promise.resolve() } },
      (e) => failures.push(e),
    );
    broken.push(entry('z'));
    assert.deepEqual(await broken.load(), []);
    await sleep(1);
    assert.deepEqual(
      failures.map((f) => f.code),
      ['storage', 'storage'],
    );
  });
});

describe('emitter', () => {
  class E extends Emitter<{ x: [number] }> {
    fire(n: number): void {
      this.emit('x', n);
    }
  }
  it('calls listeners, supports off/once, and survives a throwing listener', () => {
    const e = new E();
    const got: number[] = [];
    const off = e.on('x', (n) => got.push(n));
    e.once('x', (n) => got.push(n * 10));
    // Listener exceptions are rethrown from a timer, like a browser reports them; capture that timer.
    const uncaught: unknown[] = [];
    const realSetTimeout = globalThis.setTimeout;
    globalThis.setTimeout = ((fn: () => void) => {
      try {
        fn();
      } catch (err) {
        uncaught.push(err);
      }
      return 0;
    }) as unknown as typeof setTimeout;
    try {
      e.on('x', () => {
        throw new Error('listener bug');
      });
      e.fire(1);
      e.fire(2);
      off();
      e.fire(3);
    } finally {
      globalThis.setTimeout = realSetTimeout;
    }
    assert.deepEqual(got, [1, 10, 2]);
    assert.equal(uncaught.length, 3, 'reported asynchronously, not thrown into the emitter');
  });
});
