/**
 * Every frame of the shared vectors in `protocol/vectors/` is decoded and
 * encoded here:
 * - client-valid: decoded (gateway rules) to the stated normalized form, then
 *   re-encoded by the client's own `publishFrame`/`encodeClientFrame` and
 *   decoded again to the same form;
 * - client-invalid: refused with the stated code and id; the client refuses
 *   the `invalid_topic` ones itself before sending;
 * - server: decoded by the client's `decodeServerFrame`, re-encoded to the
 *   same JSON, and `message` frames turned into the stated bytes.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import {
  FerryError,
  decodeServerFrame,
  encodeClientFrame,
  publishFrame,
  toMessage,
  topicError,
  type MessageFrame,
} from '../../src/index.js';
import { decodeClientFrame, encodeServerFrame, type DecodedClientFrame } from '../support/codec.js';

const VECTORS = new URL('../../../protocol/vectors/', import.meta.url);

function load<T>(name: string): T[] {
  return JSON.parse(readFileSync(new URL(name, VECTORS), 'utf8')) as T[];
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
}
interface ServerVector {
  name: string;
  frame: string;
}

const bytes = (b64: string): Uint8Array => new Uint8Array(Buffer.from(b64, 'base64'));

/** Re-encodes a decoded frame with the client's encoder, as an application would publish it. */
function clientEncode(frame: DecodedClientFrame, valueAsJson: boolean): string {
  if (frame.type === 'auth') return encodeClientFrame({ type: 'auth', ...(frame.id === null ? {} : { id: frame.id }), token: frame.token });
  if (frame.type === 'commit') {
    const { id, topic, partition, offset } = frame;
    return encodeClientFrame({ type: 'commit', ...(id === null ? {} : { id }), topic, partition, offset });
  }
  if (frame.type !== 'publish') return encodeClientFrame(frame);
  const raw = bytes(frame.value_b64);
  const value: unknown = valueAsJson ? JSON.parse(Buffer.from(raw).toString('utf8')) : raw;
  const key = frame.key_b64 === null ? undefined : bytes(frame.key_b64);
  const text = key && Buffer.from(key).toString('utf8');
  const keyOpt = key === undefined ? {} : { key: text !== undefined && Buffer.from(text, 'utf8').equals(key) ? text : key };
  return encodeClientFrame(
    publishFrame(frame.id, frame.topic, value, {
      ...keyOpt,
      ...(Object.keys(frame.headers).length ? { headers: frame.headers } : {}),
      ...(frame.partition === null ? {} : { partition: frame.partition }),
    }),
  );
}

describe('protocol/vectors/client-valid.json', () => {
  const vectors = load<ValidVector>('client-valid.json');
  it('has vectors', () => assert.ok(vectors.length >= 8));
  for (const v of vectors) {
    it(`decodes and re-encodes: ${v.name}`, () => {
      const decoded = decodeClientFrame(v.frame);
      assert.ok(decoded.ok, JSON.stringify(decoded));
      assert.deepEqual(decoded.frame, v.expect);

      const expect = v.expect;
      if (expect.type !== 'publish') {
        const again = decodeClientFrame(clientEncode(expect, false));
        assert.ok(again.ok);
        assert.deepEqual(again.frame, expect);
        return;
      }
      // Bytes (Uint8Array) keep every byte: value_b64 round-trips exactly.
      const asBytes = decodeClientFrame(clientEncode(expect, false));
      assert.ok(asBytes.ok);
      assert.deepEqual(asBytes.frame, expect);
      assert.match(clientEncode(expect, false), /"value_b64":/);
      // A JSON value goes as `value` and means the same JSON.
      const jsonText = Buffer.from(bytes(expect.value_b64)).toString('utf8');
      let isJson = true;
      try {
        JSON.parse(jsonText);
      } catch {
        isJson = false;
      }
      if (isJson) {
        const encoded = clientEncode(expect, true);
        assert.match(encoded, /"value":/);
        const again = decodeClientFrame(encoded);
        assert.ok(again.ok && again.frame.type === 'publish');
        assert.deepEqual(JSON.parse(Buffer.from(again.frame.value_b64, 'base64').toString('utf8')), JSON.parse(jsonText));
        assert.deepEqual({ ...again.frame, value_b64: '' }, { ...expect, value_b64: '' });
      }
    });
  }
});

describe('protocol/vectors/client-invalid.json', () => {
  const vectors = load<InvalidVector>('client-invalid.json');
  it('has vectors', () => assert.ok(vectors.length >= 20));
  for (const v of vectors) {
    it(`refuses: ${v.name}`, () => {
      const decoded = decodeClientFrame(v.frame);
      assert.ok(!decoded.ok, `accepted as ${JSON.stringify(decoded)}`);
      assert.equal(decoded.error.code, v.code);
      assert.equal(decoded.error.id, v.id);
      assert.ok(decoded.error.message.length > 0);
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
  const vectors = load<ServerVector>('server.json');
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
  });
  it('encodes large binary values', () => {
    const big = new Uint8Array(200_000).map((_, i) => i % 256);
    const frame = publishFrame('a', 't', big);
    assert.deepEqual(bytes(frame.value_b64 as string), big);
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
