/**
 * The client's side of the contract, against the fake gateway: who made an
 * error (`source`), operation timeouts, `unauthorized` from getToken(), the
 * browser's `online` event, the close code of sockets the client gives up
 * on, `welcome.protocol` and `welcome.capabilities`, and the closed event
 * map.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CLIENT_GAVE_UP, FerryError, mayReconnect, type FerryClient } from '../../src/index.js';
import { sleep, waitFor } from '../support/fake-gateway.js';
import { outcome, setup } from './helpers.js';

describe('error source', () => {
  it('tells the gateway\'s errors from the client\'s own', async (t) => {
    const { hub } = setup(t, { unknownTopics: ['nope'] });
    await hub.connect();
    const gateway = await outcome(hub.publish('nope', 1));
    assert.ok(!gateway.ok && gateway.error.code === 'unknown_topic' && gateway.error.source === 'gateway', JSON.stringify(gateway));
    const local = await outcome(hub.publish('a b', 1));
    assert.ok(!local.ok && local.error.code === 'invalid_topic' && local.error.source === 'client');
    const big = await outcome(hub.publish('t', 'x'.repeat(70_000)));
    assert.ok(!big.ok && big.error.code === 'too_large' && big.error.source === 'client');
    assert.equal(new FerryError('closed', 'x').source, 'client');
  });

  it('ping() while not connected is not_connected, not the gateway\'s unavailable', async (t) => {
    const { hub } = setup(t);
    const r = await outcome(hub.ping());
    assert.ok(!r.ok && r.error.code === 'not_connected' && r.error.source === 'client');
  });
});

describe('operation timeouts', () => {
  it('ping() rejects with timeout when no pong comes', async (t) => {
    const { gw, hub } = setup(t, {}, { timeoutMs: 40 });
    await hub.connect();
    gw.intercept = (_conn, f) => f.type === 'ping'; // swallowed
    const started = Date.now();
    const r = await outcome(hub.ping());
    assert.ok(!r.ok && r.error.code === 'timeout' && r.error.source === 'client', JSON.stringify(r));
    assert.ok(Date.now() - started >= 35);
    assert.equal(hub.state, 'open');
  });

  it('a sent publish without ack rejects with timeout (outcome unknown) and is not sent again', async (t) => {
    const { gw, hub } = setup(t, {}, { publishTimeoutMs: 50 });
    await hub.connect();
    gw.intercept = (_conn, f) => f.type === 'publish';
    const r = await outcome(hub.publish('t', 1));
    assert.ok(!r.ok && r.error.code === 'timeout' && r.error.source === 'client', JSON.stringify(r));
    assert.match(r.error.message, /outcome is unknown/);
    gw.intercept = undefined;
    assert.ok(await hub.publish('t', 2), 'later publishes go on');
    assert.equal(gw.last.of('publish').length, 2);
  });

  it('a queued publish is not timed while offline', async (t) => {
    const { gw, hub } = setup(t, {}, { publishTimeoutMs: 30 });
    gw.refuse = true;
    void hub.connect();
    const pending = hub.publish('t', 1);
    await sleep(80);
    gw.refuse = false;
    const ack = await pending;
    assert.equal(ack.offset, 0);
  });

  it('an unconfirmed subscribe rejects ready with timeout, drops the socket with 4100 and subscribes again', async (t) => {
    const { gw, hub } = setup(t, {}, { timeoutMs: 40 });
    let swallowed = 0;
    gw.intercept = (_conn, f) => f.type === 'subscribe' && swallowed++ === 0;
    await hub.connect();
    const disconnects: number[] = [];
    hub.on('disconnect', (d) => disconnects.push(d.code));
    const got: unknown[] = [];
    const sub = hub.subscribe('s', (m) => got.push(m.value));
    const r = await outcome(sub.ready);
    assert.ok(!r.ok && r.error.code === 'timeout', JSON.stringify(r));
    await waitFor(() => gw.connections.length === 2 && gw.last.subs.has('s'), 2000, 'subscribed on a new connection');
    assert.deepEqual(disconnects, [CLIENT_GAVE_UP]);
    assert.equal(gw.connections[0]?.closedByClient, CLIENT_GAVE_UP);
    gw.produce('s', 'after');
    await waitFor(() => got.length === 1);
    assert.ok(sub.active);
  });
});

describe('sockets the client gives up on', () => {
  it('are closed with 4100, a reconnect code that is not the gateway\'s slow-consumer 4000', async (t) => {
    const { gw, hub } = setup(t, {}, { connectTimeoutMs: 30 });
    gw.autoWelcome = false;
    const disconnects: number[] = [];
    hub.on('disconnect', (d) => disconnects.push(d.code));
    void hub.connect();
    await waitFor(() => gw.connections.length >= 2, 2000, 'second attempt');
    gw.autoWelcome = true;
    await waitFor(() => hub.state === 'open', 2000, 'open');
    assert.equal(gw.connections[0]?.closedByClient, 4100);
    assert.equal(disconnects[0], 4100);
    assert.ok(mayReconnect(CLIENT_GAVE_UP));
  });
});

describe('getToken() and unauthorized', () => {
  it('a getToken() that throws FerryError unauthorized stops the client for good', async (t) => {
    let calls = 0;
    const { gw, hub, errors } = setup(
      t,
      { auth: { ttlMs: 60_000 } },
      {
        getToken: () => {
          calls++;
          throw new FerryError('unauthorized', 'the user logged out');
        },
      },
    );
    const pending = outcome(hub.publish('t', 1));
    const r = await outcome(hub.connect());
    assert.ok(!r.ok && r.error.code === 'unauthorized', JSON.stringify(r));
    assert.equal(hub.state, 'closed');
    assert.equal(errors.at(-1)?.code, 'unauthorized');
    const p = await pending;
    assert.ok(!p.ok && p.error.code === 'unauthorized');
    await sleep(50);
    assert.equal(calls, 1, 'not retried');
    assert.equal(gw.connections.length, 1);
  });

  it('unauthorized from a refresh also stops the client', async (t) => {
    let n = 0;
    const { hub, errors } = setup(
      t,
      { auth: { ttlMs: 60_000 } },
      {
        getToken: () => {
          if (++n > 1) throw new FerryError('unauthorized', 'session revoked');
          return 'tok-1';
        },
      },
    );
    await hub.connect();
    const r = await outcome(hub.refreshToken());
    assert.ok(!r.ok && r.error.code === 'unauthorized', JSON.stringify(r));
    await waitFor(() => hub.state === 'closed');
    assert.equal(errors.at(-1)?.code, 'unauthorized');
  });

  it('any other getToken() failure is retried on the next connection', async (t) => {
    let calls = 0;
    const { hub } = setup(
      t,
      { auth: { ttlMs: 60_000 } },
      {
        getToken: () => {
          if (++calls < 3) throw new Error('IdP down');
          return 'tok';
        },
      },
    );
    await hub.connect();
    assert.equal(calls, 3);
  });
});

describe('online event', () => {
  it('reconnects at once when the browser says it is back online', async (t) => {
    const listeners = new Map<string, () => void>();
    const g = globalThis as { addEventListener?: unknown; removeEventListener?: unknown };
    g.addEventListener = (type: string, fn: () => void) => listeners.set(type, fn);
    g.removeEventListener = (type: string) => listeners.delete(type);
    t.after(() => {
      delete g.addEventListener;
      delete g.removeEventListener;
    });
    // A long backoff: without the event the client would wait seconds.
    const { gw, hub } = setup(t, {}, { reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000 } });
    await hub.connect();
    gw.refuse = true;
    gw.last.close(1006);
    await waitFor(() => hub.state === 'reconnecting');
    await sleep(20);
    assert.equal(gw.connections.length, 1);
    gw.refuse = false;
    const started = Date.now();
    listeners.get('online')?.();
    await waitFor(() => hub.state === 'open', 1000, 'open after online');
    assert.ok(Date.now() - started < 500);
    await hub.close();
    assert.ok(!listeners.has('online'), 'listener removed on close');
  });
});

describe('welcome', () => {
  it('a gateway speaking another protocol version ends the client', async (t) => {
    const { gw, hub, errors } = setup(t, { protocol: 2 });
    const r = await outcome(hub.connect());
    assert.ok(!r.ok && r.error.code === 'protocol', JSON.stringify(r));
    assert.match(r.error.message, /protocol 2/);
    assert.equal(hub.state, 'closed');
    assert.equal(errors.at(-1)?.code, 'protocol');
    await sleep(30);
    assert.equal(gw.connections.length, 1, 'no reconnect');
  });

  it('a subscription needing a capability the gateway lacks fails with unsupported, sending nothing', async (t) => {
    const { gw, hub } = setup(t, { capabilities: ['auth', 'from'] });
    await hub.connect();
    const sub = hub.subscribe('jobs', () => undefined, { group: 'workers', onError: () => undefined });
    const r = await outcome(sub.ready);
    assert.ok(!r.ok && r.error.code === 'unsupported' && r.error.source === 'client', JSON.stringify(r));
    assert.match(r.error.message, /"group"/);
    const filtered = hub.subscribe('f', () => undefined, { filter: { key: { eq: 'k' } }, onError: () => undefined });
    const f = await outcome(filtered.ready);
    assert.ok(!f.ok && f.error.code === 'unsupported');
    const c = await outcome(hub.commit({ topic: 'jobs', partition: 0, offset: 1 }));
    assert.ok(!c.ok && c.error.code === 'unsupported');
    await sleep(10);
    assert.equal(gw.last.of('subscribe').length, 0);
    assert.equal(gw.last.of('commit').length, 0);
  });

  it('a welcome without capabilities (an older gateway) means every v1 capability: resume uses from', async (t) => {
    const { gw, hub } = setup(t, { capabilities: null });
    const got: unknown[] = [];
    hub.subscribe('s', (m) => got.push(m.value));
    await hub.connect();
    await waitFor(() => gw.last.subs.has('s'));
    gw.produce('s', 1);
    await waitFor(() => got.length === 1);
    gw.last.close(1001);
    await waitFor(() => gw.connections.length === 2 && gw.last.subs.has('s'));
    assert.ok(gw.last.of('subscribe')[0]?.from, 'resumed with from');
    assert.equal(hub.welcome?.capabilities, undefined);
  });
});

describe('event map', () => {
  it('is closed: an unknown event name does not compile', () => {
    const typeCheckOnly = (hub: FerryClient): void => {
      // @ts-expect-error 'stat' is not an event of FerryClient
      hub.on('stat', () => undefined);
      hub.on('lagged', (notice) => notice.dropped);
    };
    assert.equal(typeof typeCheckOnly, 'function');
  });
});
