/**
 * The shared vectors in `protocol/vectors/`, checked against the client's
 * own code:
 * - client-valid: each frame is what the client's API sends for the same
 *   request (`publish`, `subscribe` with its options, `unsubscribe`,
 *   `ping`, `auth`, `commit`), captured on the wire from a real
 *   `FerryClient`; also decoded by the test gateway's rules (`codec.ts`,
 *   the fake gateway of the unit tests) to the stated form;
 * - client-invalid: refused with the stated code and id by the test
 *   gateway's rules; the client refuses the ones it can check itself
 *   (topic names, reserved headers) before sending;
 * - server: decoded by the client's `decodeServerFrame`, re-encoded to the
 *   same JSON, and each `message` turned into its record's bytes;
 * - filters: sent by `subscribe({ filter })` exactly as written;
 * - codes: `mayReconnect` and the error codes match the tables.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it, type TestContext } from 'node:test';
import {
  CLIENT_GAVE_UP,
  CLOSE_CODE_NAMES,
  ERROR_CODES,
  closeCodeName,
  FerryClient,
  FerryError,
  decodeServerFrame,
  encodeClientFrame,
  mayReconnect,
  publishFrame,
  toMessage,
  topicError,
  type MessageFrame,
  type SubscribeOptions,
} from '../../src/index.js';
import { decodeClientFrame, encodeServerFrame, type DecodedClientFrame } from '../support/codec.js';
import { FakeGateway, waitFor } from '../support/fake-gateway.js';

const VECTORS = new URL('../../../protocol/vectors/', import.meta.url);

function load<T>(name: string): T {
  return JSON.parse(readFileSync(new URL(name, VECTORS), 'utf8')) as T;
}

interface ValidVector {
  name: string;
  frame: string;
  expect: DecodedClientFrame;
}
interface InvalidVector {
  name: string;
  frame: string;
  code: string;
  id: string | null;
  message_contains?: string;
}
interface ServerVector {
  name: string;
  frame: string;
  record?: { timestamp: number | null; key_b64: string | null; headers: [string, string | null][]; value_b64: string | null };
}
interface FilterVector {
  name: string;
  filter: unknown;
  records?: unknown[];
  error_contains?: string;
}
interface Codes {
  error_codes: { code: string }[];
  close_codes: { code: number; reason: string; sent_by: string; class: 'reconnect' | 'terminal' }[];
}

const bytes = (b64: string): Uint8Array => new Uint8Array(Buffer.from(b64, 'base64'));
type Json = Record<string, unknown>;

/**
 * Makes the request a client-frame vector describes through the client's
 * public API, on a real `FerryClient` against the fake gateway, and returns
 * the frame of that type the client put on the wire.
 */
async function clientSends(t: TestContext, f: Json): Promise<Json> {
  const gw = new FakeGateway({ auth: f.type === 'auth' ? { ttlMs: 60_000 } : undefined } as ConstructorParameters<typeof FakeGateway>[0]);
  const hub = new FerryClient({
    url: 'ws://fake/ws',
    WebSocket: gw.WebSocket,
    liveness: false,
    ...(f.type === 'auth' ? { token: f.token as string } : {}),
  });
  t.after(() => hub.close());
  hub.on('error', () => undefined);
  await hub.connect();
  const topic = f.topic as string;
  switch (f.type) {
    case 'publish': {
      const value = 'value_b64' in f ? bytes(f.value_b64 as string) : f.value;
      const key = 'key_b64' in f ? bytes(f.key_b64 as string) : (f.key as string | undefined);
      void hub
        .publish(topic, value, {
          id: f.id as string,
          ...(key === undefined ? {} : { key }),
          ...(f.headers === undefined ? {} : { headers: f.headers as Record<string, string> }),
          ...(f.traceparent === undefined ? {} : { traceparent: f.traceparent as string }),
          ...(f.partition === undefined ? {} : { partition: f.partition as number }),
        })
        .catch(() => undefined);
      break;
    }
    case 'subscribe': {
      const options: SubscribeOptions = { onError: () => undefined };
      for (const k of ['from', 'group', 'ack', 'filter', 'overflow'] as const) {
        if (k in f) (options as Json)[k] = f[k];
      }
      if ('throttle_ms' in f) options.throttleMs = f.throttle_ms as number;
      hub.subscribe(topic, () => undefined, options);
      break;
    }
    case 'unsubscribe': {
      const sub = hub.subscribe(topic, () => undefined);
      await sub.ready;
      void sub.unsubscribe();
      break;
    }
    case 'ping':
      void hub.ping().catch(() => undefined);
      break;
    case 'commit':
      void hub.commit({ topic, partition: f.partition as number, offset: f.offset as number }).catch(() => undefined);
      break;
    case 'auth':
      break; // sent on connect
  }
  const sent = await waitFor(() => gw.last.of(f.type as string)[0], 2000, `a ${String(f.type)} frame`);
  return sent;
}

/** A frame without its `id` (the client chooses request ids itself). */
const withoutId = (f: Json): Json => {
  const { id: _id, ...rest } = f;
  return rest;
};

describe('protocol/vectors/client-valid.json', () => {
  const vectors = load<ValidVector[]>('client-valid.json');
  it('has vectors', () => assert.ok(vectors.length >= 8));
  for (const v of vectors) {
    it(`the client sends it: ${v.name}`, async (t) => {
      const want = JSON.parse(v.frame) as Json;
      const sent = await clientSends(t, want);
      assert.deepEqual(withoutId(sent), withoutId(want));
      if (want.type === 'publish') assert.equal(sent.id, want.id, 'a publish keeps the id the caller chose');
      else assert.equal(typeof sent.id, 'string', 'the client always sends an id');
    });
    it(`the test gateway decodes it as the gateway does: ${v.name}`, () => {
      const decoded = decodeClientFrame(v.frame);
      assert.ok(decoded.ok, JSON.stringify(decoded));
      assert.deepEqual(decoded.frame, v.expect);
    });
  }
});

describe('protocol/vectors/client-invalid.json', () => {
  const vectors = load<InvalidVector[]>('client-invalid.json');
  it('has vectors', () => assert.ok(vectors.length >= 20));
  for (const v of vectors) {
    it(`refuses: ${v.name}`, () => {
      const decoded = decodeClientFrame(v.frame);
      assert.ok(!decoded.ok, `accepted as ${JSON.stringify(decoded)}`);
      assert.equal(decoded.error.code, v.code);
      assert.equal(decoded.error.id, v.id);
      assert.ok(decoded.error.message.length > 0);
      if (v.message_contains) assert.ok(decoded.error.message.includes(v.message_contains), `${decoded.error.message} lacks ${v.message_contains}`);
      const parsed = (() => {
        try {
          return JSON.parse(v.frame) as { type?: string; headers?: Record<string, string> };
        } catch {
          return undefined;
        }
      })();
      if (parsed?.type === 'publish' && Object.keys(parsed.headers ?? {}).some((h) => /^ferry-/i.test(h))) {
        assert.throws(
          () => publishFrame('x', 't', 1, { headers: parsed.headers as Record<string, string> }),
          (e) => e instanceof FerryError && e.code === 'bad_request',
        );
      }
      if (v.code === 'invalid_topic') {
        // The client refuses these itself, before anything is sent.
        const { topic } = JSON.parse(v.frame) as { topic: string };
        assert.ok(topicError(topic), `client accepts topic ${JSON.stringify(topic)}`);
        assert.throws(
          () => publishFrame('x', topic, 1),
          (e) => e instanceof FerryError && e.code === 'invalid_topic',
        );
      }
    });
  }
});

describe('protocol/vectors/server.json', () => {
  const vectors = load<ServerVector[]>('server.json');
  it('has vectors', () => assert.ok(vectors.length >= 8));
  for (const v of vectors) {
    it(`decodes and re-encodes: ${v.name}`, () => {
      const frame = decodeServerFrame(v.frame);
      assert.deepEqual(frame, JSON.parse(v.frame));
      assert.deepEqual(JSON.parse(encodeServerFrame(frame as { type: string } & Record<string, unknown>)), JSON.parse(v.frame));
    });
  }

  it('turns message frames into values, keys and headers', () => {
    const byName = new Map(vectors.map((v) => [v.name, decodeServerFrame(v.frame) as MessageFrame]));
    const json = toMessage(byName.get('message with json value') as MessageFrame);
    assert.deepEqual(json, {
      topic: 'dashboard',
      partition: 0,
      offset: 43,
      timestamp: 1764087000000,
      key: 'k',
      headers: { h: 'v' },
      value: { temp: 21.5 },
    });
    const bin = toMessage(byName.get('message with binary value and key') as MessageFrame);
    assert.deepEqual(bin.value, new Uint8Array([0xff, 0x00, 0x01]));
    assert.deepEqual(bin.key, new Uint8Array([0xc3, 0x28]));
    const tomb = toMessage(byName.get('message tombstone') as MessageFrame);
    assert.equal(tomb.value, null);
    assert.equal(tomb.key, 'k');
    assert.ok(!('snapshot' in tomb), 'a live record has no snapshot flag');
  });

  it('marks a snapshot’s records and decodes snapshot_end', () => {
    const frames = vectors.map((v) => decodeServerFrame(v.frame) as Json);
    const snapshot = frames.filter((f) => f.type === 'message' && f.snapshot === true);
    assert.ok(snapshot.length >= 1, 'a snapshot message vector');
    for (const f of snapshot) {
      const m = toMessage(f as unknown as MessageFrame);
      assert.equal(m.snapshot, true);
      assert.equal(typeof m.key, 'string');
      assert.notEqual(m.value, null);
    }
    for (const f of frames.filter((f) => f.type === 'message' && f.snapshot === undefined)) {
      assert.ok(!('snapshot' in toMessage(f as unknown as MessageFrame)), JSON.stringify(f));
    }
    const ends = frames.filter((f) => f.type === 'snapshot_end');
    assert.ok(ends.some((f) => Object.keys(f.positions as object).length > 1), 'a snapshot_end over several partitions');
    for (const f of ends) {
      assert.equal(typeof f.topic, 'string');
      for (const [p, o] of Object.entries(f.positions as Record<string, unknown>)) {
        assert.match(p, /^\d+$/);
        assert.ok(Number.isSafeInteger(o) && (o as number) >= 0, `${p}: ${String(o)}`);
      }
    }
  });

  it('turns every message vector into the bytes of its record', () => {
    const messages = vectors.filter((v) => v.record);
    assert.ok(messages.length >= 7);
    const asBytes = (x: unknown): Uint8Array | null => {
      if (x === null) return null;
      if (x instanceof Uint8Array) return x;
      return new TextEncoder().encode(typeof x === 'string' ? x : JSON.stringify(x));
    };
    for (const v of messages) {
      const record = v.record as NonNullable<ServerVector['record']>;
      const m = toMessage(decodeServerFrame(v.frame) as MessageFrame);
      assert.equal(m.timestamp, record.timestamp, v.name);
      assert.deepEqual(asBytes(m.key), record.key_b64 === null ? null : bytes(record.key_b64), v.name);
      const headers = Object.fromEntries(record.headers.map(([k, b]) => [k, b === null ? null : bytes(b)]));
      assert.deepEqual(Object.fromEntries(Object.entries(m.headers).map(([k, h]) => [k, asBytes(h)])), headers, v.name);
      // A JSON value is parsed: compare it as JSON; a value_b64 record as bytes.
      if (record.value_b64 === null) assert.equal(m.value, null, v.name);
      else if (m.value instanceof Uint8Array) assert.deepEqual(m.value, bytes(record.value_b64), v.name);
      else assert.deepEqual(m.value, JSON.parse(Buffer.from(record.value_b64, 'base64').toString('utf8')), v.name);
    }
  });

  it('decodes binary header values from headers_b64', () => {
    const m = toMessage(
      decodeServerFrame(
        '{"type":"message","topic":"t","partition":0,"offset":1,"key":null,"headers":{"a":"x","n":null},"headers_b64":{"b":"/w=="},"value":1}',
      ) as MessageFrame,
    );
    assert.deepEqual(m.headers, { a: 'x', n: null, b: new Uint8Array([0xff]) });
    assert.equal(m.timestamp, null);
  });
});

describe('decodeServerFrame', () => {
  it('refuses text that is not a frame', () => {
    for (const bad of ['nope', '[1]', '{"x":1}', '{"type":"ack","id":"a","topic":"t","partition":"0","offset":1}']) {
      assert.throws(
        () => decodeServerFrame(bad),
        (e) => e instanceof FerryError && e.code === 'protocol',
        bad,
      );
    }
  });
  it('passes unknown frame types through (forward compatibility)', () => {
    assert.deepEqual(decodeServerFrame('{"type":"future","x":1}'), { type: 'future', x: 1 });
  });
});

const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

describe('publishFrame', () => {
  it('puts bytes in value_b64 and key_b64, JSON in value, and only the options used', () => {
    assert.equal(
      encodeClientFrame(publishFrame('a', 't', new Uint8Array([0xff, 0, 1]), { key: new Uint8Array([0xc3, 0x28]) })),
      '{"type":"publish","id":"a","topic":"t","value_b64":"/wAB","key_b64":"wyg="}',
    );
    assert.equal(
      encodeClientFrame(publishFrame('b', 't', { x: [1, 'y'] }, { key: 'k', headers: { h: 'v' }, partition: 2 })),
      '{"type":"publish","id":"b","topic":"t","value":{"x":[1,"y"]},"key":"k","headers":{"h":"v"},"partition":2}',
    );
    assert.equal(encodeClientFrame(publishFrame('c', 't', null)), '{"type":"publish","id":"c","topic":"t","value":null}');
  });
  it('refuses what the gateway would refuse', () => {
    const bad = (fn: () => unknown, code: string): void =>
      assert.throws(fn, (e) => e instanceof FerryError && e.code === code);
    bad(() => publishFrame('a', 't', undefined), 'bad_request');
    bad(() => publishFrame('a', 't', () => 1), 'bad_request');
    bad(() => publishFrame('a', 't', 1, { partition: -1 }), 'bad_request');
    bad(() => publishFrame('a', 't', 1, { partition: 1.5 }), 'bad_request');
    bad(() => publishFrame('a', 't', 1, { headers: { h: 1 as unknown as string } }), 'bad_request');
    bad(() => publishFrame('a', 'a b', 1), 'invalid_topic');
    bad(() => publishFrame('a', 't', 1, { headers: { 'Ferry-Id': 'x' } }), 'bad_request');
    bad(() => publishFrame('a', 't', 1, { traceparent: 'abc' }), 'bad_request');
    bad(() => publishFrame('a', 't', 1, { traceparent: TRACEPARENT, headers: { Traceparent: 'x' } }), 'bad_request');
  });
  it('sends a traceparent as its own field, beside the headers', () => {
    const frame = publishFrame('a', 't', 1, { traceparent: TRACEPARENT, headers: { h: 'v' } });
    assert.deepEqual(frame.headers, { h: 'v' });
    assert.equal(frame.traceparent, TRACEPARENT);
  });
  it('encodes large binary values', () => {
    const big = new Uint8Array(200_000).map((_, i) => i % 256);
    const frame = publishFrame('a', 't', big);
    assert.deepEqual(bytes(frame.value_b64 as string), big);
  });
});

describe('snapshot frames', () => {
  it('decodes snapshot_end, and the snapshot flag of a message', () => {
    const end = decodeServerFrame('{"type":"snapshot_end","topic":"devices","positions":{"0":1200,"1":980}}');
    assert.deepEqual(end, { type: 'snapshot_end', topic: 'devices', positions: { '0': 1200, '1': 980 } });
    assert.throws(() => decodeServerFrame('{"type":"snapshot_end","topic":"devices"}'), (e) => e instanceof FerryError && e.code === 'protocol');
    const frame = decodeServerFrame('{"type":"message","topic":"devices","partition":1,"offset":7,"key":"d1","headers":{},"value":{"on":true},"snapshot":true}');
    assert.equal(toMessage(frame as MessageFrame).snapshot, true);
    const live = toMessage(decodeServerFrame('{"type":"message","topic":"devices","partition":1,"offset":8,"key":"d1","headers":{},"value":null}') as MessageFrame);
    assert.ok(!('snapshot' in live));
    assert.equal(live.value, null);
  });
});

describe('codec (the gateway rules) for groups and commit, beyond the vectors', () => {
  const refused = (frame: object): { code: string; id: string | null } => {
    const r = decodeClientFrame(JSON.stringify(frame));
    assert.ok(!r.ok, `accepted ${JSON.stringify(frame)}`);
    return { code: r.error.code, id: r.error.id };
  };
  it('checks commit like auth: optional id, only topic/partition/offset, topic rules', () => {
    assert.deepEqual(refused({ type: 'commit', id: 'c', topic: 't', partition: 0, offset: 1, group: 'g' }), { code: 'bad_request', id: 'c' });
    assert.deepEqual(refused({ type: 'commit', id: '', topic: 't', partition: 0, offset: 1 }), { code: 'bad_request', id: null });
    assert.deepEqual(refused({ type: 'commit', topic: 't', partition: -1, offset: 1 }), { code: 'bad_request', id: null });
    assert.deepEqual(refused({ type: 'commit', id: 'c', topic: '__t', partition: 0, offset: 1 }), { code: 'invalid_topic', id: 'c' });
    assert.deepEqual(refused({ type: 'commit', topic: 't', partition: 0, offset: 1.5 }), { code: 'bad_request', id: null });
  });
  it('allows group/ack only on subscribe, offset only on commit', () => {
    assert.deepEqual(refused({ type: 'subscribe', id: 's', topic: 't', group: 'g', from: { timestamp: 5 } }), { code: 'bad_request', id: 's' });
    assert.deepEqual(refused({ type: 'subscribe', id: 's', topic: 't', group: 'x'.repeat(201) }), { code: 'bad_request', id: 's' });
    assert.deepEqual(refused({ type: 'publish', id: 'p', topic: 't', value: 1, group: 'g' }), { code: 'bad_request', id: 'p' });
    assert.deepEqual(refused({ type: 'ping', id: 'p', offset: 1 }), { code: 'bad_request', id: 'p' });
    const ok = decodeClientFrame(JSON.stringify({ type: 'subscribe', id: 's', topic: 't', group: 'x'.repeat(200), ack: 'auto', from: 'latest' }));
    assert.ok(ok.ok && ok.frame.type === 'subscribe' && ok.frame.ack === 'auto');
  });
});

describe('protocol/vectors/filters.json', () => {
  const vectors = load<FilterVector[]>('filters.json');
  it('has valid and refused filters', () => {
    assert.ok(vectors.filter((v) => v.records).length >= 10);
    assert.ok(vectors.filter((v) => v.error_contains).length >= 10);
  });
  for (const v of vectors.filter((x) => x.records)) {
    it(`subscribe sends the filter as written: ${v.name}`, async (t) => {
      const sent = await clientSends(t, { type: 'subscribe', topic: 't', filter: v.filter });
      assert.deepEqual(sent.filter, v.filter);
    });
  }
});

describe('protocol/vectors/codes.json', () => {
  const codes = load<Codes>('codes.json');
  it('error codes: the client knows exactly the protocol\'s', () => {
    assert.deepEqual([...ERROR_CODES], codes.error_codes.map((e) => e.code));
  });
  it('close codes: mayReconnect() classifies each as the table does', () => {
    for (const c of codes.close_codes) assert.equal(mayReconnect(c.code), c.class === 'reconnect', `${c.code} ${c.reason}`);
    assert.equal(codes.close_codes.find((c) => c.sent_by === 'client')?.code, CLIENT_GAVE_UP);
  });
  it('close codes: closeCodeName() names exactly those the table names', () => {
    const named = codes.close_codes.filter((c) => c.reason !== '');
    assert.deepEqual(Object.fromEntries(named.map((c) => [String(c.code), c.reason])), { ...CLOSE_CODE_NAMES });
    for (const c of codes.close_codes) assert.equal(closeCodeName(c.code), c.reason || undefined, String(c.code));
  });
});
