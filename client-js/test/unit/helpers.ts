import type { TestContext } from 'node:test';
import { FerryClient, type FerryClientOptions, type FerryError, type ConnectionState } from '../../src/index.js';
import { FakeGateway, type FakeGatewayOptions } from '../support/fake-gateway.js';

/** A fake gateway and a client wired to it, closed when the test ends. */
export function setup(t: TestContext, gatewayOptions: FakeGatewayOptions = {}, clientOptions: Partial<FerryClientOptions> = {}) {
  const gw = new FakeGateway(gatewayOptions);
  const hub = new FerryClient({
    url: 'ws://fake/ws',
    WebSocket: gw.WebSocket,
    reconnect: { initialDelayMs: 5, maxDelayMs: 20 },
    liveness: false,
    ...clientOptions,
  });
  const errors: FerryError[] = [];
  const states: ConnectionState[] = [];
  hub.on('error', (e) => errors.push(e));
  hub.on('state', (s) => states.push(s));
  t.after(() => hub.close());
  return { gw, hub, errors, states };
}

/** Settles a promise into a value, for asserting on rejections without unhandled ones. */
export async function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: FerryError }> {
  try {
    return { ok: true, value: await p };
  } catch (error) {
    return { ok: false, error: error as FerryError };
  }
}
