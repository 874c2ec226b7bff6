/** Tokens: in-band `auth`, refresh before expiry, collapsing, retries; against the fake gateway. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sleep, waitFor } from '../support/fake-gateway.js';
import { outcome, setup } from './helpers.js';

describe('tokens', () => {
  it('sends a static token in an auth frame before welcome, on every connection', async (t) => {
    const { gw, hub } = setup(t, { auth: { ttlMs: 60_000 } }, { token: 'static-1' });
    await hub.connect();
    assert.deepEqual(gw.last.tokens, ['static-1']);
    assert.equal(gw.last.received[0]?.type, 'auth');
    gw.last.close(1012);
    await waitFor(() => gw.connections.length === 2 && hub.state === 'open');
    assert.deepEqual(gw.last.tokens, ['static-1']);
  });

  it('sends no auth frame without a token (plain use of today\'s gateway)', async (t) => {
    const { gw, hub } = setup(t);
    await hub.connect();
    await hub.publish('t', 1);
    assert.equal(gw.last.of('auth').length, 0);
  });

  it('refreshes with getToken() before expiry and keeps the connection', async (t) => {
    let n = 0;
    const { gw, hub, errors } = setup(t, { auth: { ttlMs: 800 } }, { getToken: () => `tok-${++n}`, tokenRefresh: { marginMs: 300 } });
    await hub.connect();
    assert.deepEqual(gw.last.tokens, ['tok-1']);
    // Refresh happens at max(ttl - margin, ttl / 2) = 500 ms, well before the 800 ms expiry.
    await waitFor(() => gw.last.tokens.length >= 3, 5000, 'two refreshes');
    assert.deepEqual(gw.last.tokens.slice(0, 3), ['tok-1', 'tok-2', 'tok-3']);
    assert.equal(gw.connections.length, 1, 'never expired');
    assert.equal(hub.state, 'open');
    assert.equal(errors.length, 0);
    assert.ok(await hub.publish('t', 1));
  });

  it('collapses concurrent refreshes into one getToken() call', async (t) => {
    let calls = 0;
    const { gw, hub } = setup(
      t,
      { auth: { ttlMs: 60_000 } },
      {
        getToken: async () => {
          calls++;
          await sleep(10);
          return `tok-${calls}`;
        },
      },
    );
    await hub.connect();
    assert.equal(calls, 1);
    await Promise.all([hub.refreshToken(), hub.refreshToken(), hub.refreshToken()]);
    assert.equal(calls, 2);
    assert.deepEqual(gw.last.tokens, ['tok-1', 'tok-2']);
  });

  it('retries a failed refresh with backoff, then reports it as an error', async (t) => {
    let calls = 0;
    const { hub, errors } = setup(
      t,
      { auth: { ttlMs: 60_000 } },
      {
        getToken: () => {
          calls++;
          if (calls > 1) throw new Error('identity provider down');
          return 'tok-1';
        },
        tokenRefresh: { maxAttempts: 3, initialDelayMs: 5, maxDelayMs: 10 },
      },
    );
    await hub.connect();
    const r = await outcome(hub.refreshToken());
    assert.ok(!r.ok);
    assert.equal(r.error.code, 'token');
    assert.equal(calls, 4, '1 connect + 3 refresh attempts');
    assert.equal(errors.length, 1);
    assert.match(errors[0]?.message ?? '', /identity provider down/);
  });

  it('retries a refresh the gateway refused, and succeeds with the next token', async (t) => {
    let n = 0;
    const { gw, hub, errors } = setup(
      t,
      { auth: { ttlMs: 60_000, accept: (tok) => tok !== 'tok-2' } },
      { getToken: () => `tok-${++n}`, tokenRefresh: { initialDelayMs: 5, maxDelayMs: 10 } },
    );
    await hub.connect();
    await hub.refreshToken();
    assert.deepEqual(gw.last.tokens, ['tok-1', 'tok-2', 'tok-3']);
    assert.equal(errors.length, 0);
  });

  it('reconnects after 4002 (token expired) with a fresh token', async (t) => {
    let n = 0;
    const { gw, hub } = setup(t, { auth: { ttlMs: 60_000 } }, { getToken: () => `tok-${++n}` });
    await hub.connect();
    gw.last.expiresAt = Date.now() - 1;
    gw.last.close(4002, 'token expired');
    await waitFor(() => gw.connections.length === 2 && hub.state === 'open');
    assert.deepEqual(gw.last.tokens, ['tok-2']);
  });

  it('reuses an unexpired token on reconnect without calling getToken()', async (t) => {
    let calls = 0;
    const { gw, hub } = setup(t, { auth: { ttlMs: 600_000 } }, { getToken: () => `tok-${++calls}` });
    await hub.connect();
    gw.last.close(1001);
    await waitFor(() => gw.connections.length === 2 && hub.state === 'open');
    assert.equal(calls, 1);
    assert.deepEqual(gw.last.tokens, ['tok-1']);
  });

  it('treats a getToken() failure on connect as a failed attempt and retries', async (t) => {
    let calls = 0;
    const { hub, errors } = setup(
      t,
      { auth: { ttlMs: 60_000 } },
      {
        getToken: () => {
          if (++calls < 3) throw new Error('not yet');
          return 'ok';
        },
      },
    );
    await hub.connect();
    assert.equal(calls, 3);
    assert.equal(errors.filter((e) => e.code === 'token').length, 2);
  });

  it("reports the refusal of today's gateway (no auth support) and stays usable", async (t) => {
    const { gw, hub, errors } = setup(t, {}, { token: 'tok' });
    await hub.connect();
    await waitFor(() => errors.length === 1);
    assert.equal(errors[0]?.code, 'bad_request');
    assert.equal(gw.last.of('auth').length, 1);
    assert.ok(await hub.publish('t', 1));
  });

  it('gives up when the gateway refuses a static token (retrying cannot help)', async (t) => {
    const { gw, hub } = setup(t, { auth: { ttlMs: 60_000, accept: () => false } }, { token: 'bad' });
    const r = await outcome(hub.connect());
    assert.ok(!r.ok);
    assert.equal(r.error.code, 'unauthorized');
    assert.equal(hub.state, 'closed');
    await sleep(30);
    assert.equal(gw.connections.length, 1);
  });

  it('reconnects with a fresh token when the gateway refuses one from getToken()', async (t) => {
    let n = 0;
    const { gw, hub, errors } = setup(t, { auth: { ttlMs: 60_000, accept: (tok) => tok !== 'tok-1' } }, { getToken: () => `tok-${++n}` });
    await hub.connect();
    assert.equal(gw.connections.length, 2);
    assert.deepEqual(gw.last.tokens, ['tok-2']);
    assert.equal(errors[0]?.code, 'unauthorized');
  });

  it('matches the authed reply by id and reconnects after an auth timeout (4003)', async (t) => {
    const { gw, hub } = setup(t, { auth: { ttlMs: 60_000, timeoutMs: 30 } }, { getToken: () => 'tok' });
    gw.intercept = (_conn, f) => f.type === 'auth' && gw.connections.length === 1; // the first socket never hears back
    await hub.connect();
    assert.equal(gw.connections.length, 2);
    assert.equal(gw.connections[0]?.closed, true);
    gw.intercept = undefined;
    await hub.refreshToken();
    const refresh = gw.last.of('auth')[1];
    assert.equal(typeof refresh?.id, 'string');
  });
});
