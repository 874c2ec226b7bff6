/**
 * The gateway's side of protocol v1, in TypeScript, for tests only: decode
 * and validate a client frame exactly as `protocol/src/client.rs` does
 * (checked against the shared vectors), and encode server frames.
 *
 * The fake gateway of the unit tests uses it, so every frame the client
 * sends in a unit test is validated by the same rules as the real gateway.
 */

import type { AckMode, From, Overflow } from '../../src/index.js';

const MAX_ID_CHARS = 64;
const FIELDS = ['type', 'id', 'topic', 'value', 'value_b64', 'key', 'key_b64', 'headers', 'traceparent', 'partition', 'token', 'from', 'overflow', 'filter', 'group', 'ack', 'offset', 'throttle_ms'];
const OVERFLOW = ['disconnect', 'drop_oldest', 'conflate'];
/** `MAX_THROTTLE_MS`: the longest `subscribe.throttle_ms`. */
const MAX_THROTTLE_MS = 60_000;
const ALLOWED: Record<string, string[]> = {
  publish: ['topic', 'value', 'value_b64', 'key', 'key_b64', 'headers', 'traceparent', 'partition'],
  subscribe: ['topic', 'from', 'overflow', 'filter', 'group', 'ack', 'throttle_ms'],
  unsubscribe: ['topic'],
  ping: [],
};

/** A decoded client frame in the normalized form of `protocol/vectors/client-valid.json`. */
export type DecodedClientFrame =
  | {
      type: 'publish';
      id: string;
      topic: string;
      value_b64: string;
      key_b64: string | null;
      headers: Record<string, string>;
      partition: number | null;
    }
  | { type: 'subscribe'; id: string; topic: string; from: From; overflow?: Overflow; filter?: unknown; throttle_ms?: number; group?: string; ack?: AckMode }
  | { type: 'commit'; id: string | null; topic: string; partition: number; offset: number }
  | { type: 'unsubscribe'; id: string; topic: string }
  | { type: 'ping'; id: string }
  | { type: 'auth'; id: string | null; token: string };

/** Why a frame was refused, as the gateway's `error` frame says it. */
export interface DecodeError {
  code: 'bad_request' | 'invalid_topic';
  id: string | null;
  message: string;
}

export type DecodeResult = { ok: true; frame: DecodedClientFrame } | { ok: false; error: DecodeError };

function validId(id: unknown): id is string {
  return typeof id === 'string' && [...id].length >= 1 && [...id].length <= MAX_ID_CHARS;
}

/** The Kafka topic-name rules of `protocol/src/topic.rs`. */
export function topicProblem(topic: string): string | undefined {
  if (topic === '') return 'topic must not be empty';
  if (topic.length > 249) return 'topic is longer than 249 characters';
  if (topic === '.' || topic === '..') return 'topic may not be "." or ".."';
  if (topic.startsWith('__')) return 'topics starting with "__" are internal to Kafka';
  if (!/^[A-Za-z0-9._-]+$/.test(topic)) return 'bad character';
  return undefined;
}

/** Why a subscribe `from` is refused (`StartFrom::parse`), or undefined. */
export function startFromProblem(from: unknown): string | undefined {
  const bad = '`from` must be "latest", "earliest", "snapshot", {"offsets":{"0":120}} or {"timestamp":ms}';
  if (from === 'latest' || from === 'earliest' || from === 'snapshot') return undefined;
  if (typeof from !== 'object' || from === null || Array.isArray(from) || Object.keys(from).length !== 1) return bad;
  const f = from as Record<string, unknown>;
  if ('timestamp' in f) return Number.isInteger(f.timestamp) && (f.timestamp as number) >= 0 ? undefined : bad;
  const offsets = f.offsets;
  if (typeof offsets !== 'object' || offsets === null || Array.isArray(offsets)) return bad;
  for (const [p, o] of Object.entries(offsets)) {
    const partition = /^\+?\d+$/.test(p) ? Number(p) : NaN;
    if (!(partition >= 0 && partition < 2 ** 31) || !Number.isInteger(o) || (o as number) < 0) return `bad offset entry "${p}": ${JSON.stringify(o)}`;
  }
  return undefined;
}

/** A valid `from` in its normalized form (partition keys as canonical integers). */
function normalizeFrom(from: unknown): unknown {
  if (typeof from === 'string') return from;
  const f = from as { timestamp?: number; offsets?: Record<string, number> };
  if (f.timestamp !== undefined) return { timestamp: f.timestamp };
  return { offsets: Object.fromEntries(Object.entries(f.offsets ?? {}).map(([p, o]) => [String(Number(p)), o])) };
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function b64Bytes(text: string): Uint8Array | undefined {
  return B64.test(text) ? new Uint8Array(Buffer.from(text, 'base64')) : undefined;
}

/**
 * The raw JSON text of each member of a top-level object, so that a publish
 * `value` is taken byte for byte as the client wrote it. `text` must already
 * be known to be valid JSON.
 */
export function rawMembers(text: string): Record<string, string> {
  let i = 0;
  const out: Record<string, string> = {};
  const skipWs = (): void => {
    while (i < text.length && ' \t\n\r'.includes(text[i] as string)) i++;
  };
  const skipString = (): void => {
    i++;
    while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
  };
  const skipValue = (): void => {
    const c = text[i];
    if (c === '"') return skipString();
    if (c === '{' || c === '[') {
      let depth = 0;
      do {
        const d = text[i];
        if (d === '"') {
          skipString();
          continue;
        }
        if (d === '{' || d === '[') depth++;
        else if (d === '}' || d === ']') depth--;
        i++;
      } while (depth > 0);
      return;
    }
    while (i < text.length && !',}] \t\n\r'.includes(text[i] as string)) i++;
  };
  skipWs();
  i++; // {
  skipWs();
  if (text[i] === '}') return out;
  for (;;) {
    skipWs();
    const keyStart = i;
    skipString();
    const key = JSON.parse(text.slice(keyStart, i)) as string;
    skipWs();
    i++; // :
    skipWs();
    const start = i;
    skipValue();
    out[key] = text.slice(start, i);
    skipWs();
    if (text[i++] === '}') return out;
  }
}

/** Decodes and validates one client text frame like the gateway. */
export function decodeClientFrame(text: string): DecodeResult {
  const fail = (code: DecodeError['code'], id: string | null, message: string): DecodeResult => ({
    ok: false,
    error: { code, id, message },
  });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return fail('bad_request', null, 'invalid frame: not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return fail('bad_request', null, 'invalid frame: not an object');
  }
  const f = parsed as Record<string, unknown>;
  const echo = validId(f.id) ? f.id : null;

  // What serde refuses while parsing (the id is echoed when usable).
  const unknown = Object.keys(f).find((k) => !FIELDS.includes(k));
  if (unknown !== undefined) return fail('bad_request', echo, `invalid frame: unknown field \`${unknown}\``);
  if (typeof f.type !== 'string') return fail('bad_request', echo, 'invalid frame: missing field `type`');
  for (const k of ['id', 'topic', 'value_b64', 'key', 'key_b64', 'traceparent', 'token', 'overflow', 'group', 'ack']) {
    if (k in f && f[k] !== null && typeof f[k] !== 'string') return fail('bad_request', echo, `invalid frame: \`${k}\` is not a string`);
  }
  if ('headers' in f && f.headers !== null) {
    const h = f.headers;
    if (typeof h !== 'object' || Array.isArray(h) || Object.values(h).some((v) => typeof v !== 'string')) {
      return fail('bad_request', echo, 'invalid frame: `headers` must map names to strings');
    }
  }
  if ('partition' in f && f.partition !== null) {
    const p = f.partition;
    if (typeof p !== 'number' || !Number.isInteger(p) || p < -(2 ** 31) || p >= 2 ** 31) {
      return fail('bad_request', echo, 'invalid frame: `partition` is not an i32');
    }
  }
  if ('offset' in f && f.offset !== null) {
    const o = f.offset;
    if (typeof o !== 'number' || !Number.isSafeInteger(o)) return fail('bad_request', echo, 'invalid frame: `offset` is not an i64');
  }
  if ('throttle_ms' in f && f.throttle_ms !== null) {
    const ms = f.throttle_ms;
    if (typeof ms !== 'number' || !Number.isSafeInteger(ms) || ms < 0) return fail('bad_request', echo, 'invalid frame: `throttle_ms` is not a u64');
  }

  // Validation after parsing.
  const present = (k: string): boolean => (k === 'value' ? k in f : f[k] !== undefined && f[k] !== null);
  if (f.type === 'auth') {
    // The one frame whose id is optional.
    const authId = present('id') ? f.id : null;
    if (authId !== null && !validId(authId)) return fail('bad_request', null, '`id` must be 1 to 64 characters');
    const extra = FIELDS.slice(2).find((k) => k !== 'token' && present(k));
    if (extra !== undefined) return fail('bad_request', authId, `field \`${extra}\` is not allowed in an auth frame`);
    if (typeof f.token !== 'string' || f.token === '') return fail('bad_request', authId, 'missing field `token`');
    return { ok: true, frame: { type: 'auth', id: authId, token: f.token } };
  }
  if (f.type === 'commit') {
    // Like auth, the id is optional (no reply without one, unless it fails).
    if (present('id') && !validId(f.id)) return fail('bad_request', null, '`id` must be 1 to 64 characters');
    const commitId = present('id') ? (f.id as string) : null;
    const extra = FIELDS.slice(2).find((k) => present(k) && !['topic', 'partition', 'offset'].includes(k));
    if (extra !== undefined) return fail('bad_request', commitId, `field \`${extra}\` is not allowed in a commit frame`);
    if (!present('topic') || !present('partition') || !present('offset')) {
      return fail('bad_request', commitId, 'a commit needs `topic`, `partition` and `offset`');
    }
    const [topic, partition, offset] = [f.topic as string, f.partition as number, f.offset as number];
    if (partition < 0 || offset < 0) return fail('bad_request', commitId, '`partition` and `offset` must not be negative');
    const problem = topicProblem(topic);
    if (problem !== undefined) return fail('invalid_topic', commitId, problem);
    return { ok: true, frame: { type: 'commit', id: commitId, topic, partition, offset } };
  }
  if (!present('id')) return fail('bad_request', null, 'missing field `id`');
  if (!validId(f.id)) return fail('bad_request', null, '`id` must be 1 to 64 characters');
  const id = f.id;
  const allowed = ALLOWED[f.type];
  if (!allowed) return fail('bad_request', id, `unknown frame type ${JSON.stringify(f.type)}`);
  const extra = FIELDS.slice(2).find((k) => present(k) && !allowed.includes(k));
  if (extra !== undefined) return fail('bad_request', id, `field \`${extra}\` is not allowed in a ${f.type} frame`);
  if (f.type === 'ping') return { ok: true, frame: { type: 'ping', id } };
  if (!present('topic')) return fail('bad_request', id, 'missing field `topic`');
  const topic = f.topic as string;
  const problem = topicProblem(topic);
  if (problem !== undefined) return fail('invalid_topic', id, problem);
  if (f.type === 'subscribe') {
    const why = present('from') ? startFromProblem(f.from) : undefined;
    if (why !== undefined) return fail('bad_request', id, why);
    const overflow = present('overflow') ? (f.overflow as string) : 'disconnect';
    if (!OVERFLOW.includes(overflow)) return fail('bad_request', id, `unknown overflow ${JSON.stringify(overflow)}`);
    const group = present('group') ? (f.group as string) : undefined;
    const ack = present('ack') ? (f.ack as string) : undefined;
    if (ack !== undefined && group === undefined) return fail('bad_request', id, '`ack` needs `group`');
    if (ack !== undefined && ack !== 'auto' && ack !== 'client') return fail('bad_request', id, `unknown ack ${JSON.stringify(ack)}: use "auto" or "client"`);
    if (group !== undefined) {
      if (!/^[A-Za-z0-9._-]{1,200}$/.test(group)) return fail('bad_request', id, '`group` must be 1 to 200 of [A-Za-z0-9._-]');
      if (present('overflow')) return fail('bad_request', id, "`overflow` does not apply to a group subscription: a member's records wait for it to read them and are never dropped; remove `overflow`");
      if (present('from') && f.from !== 'latest' && f.from !== 'earliest') {
        return fail('bad_request', id, 'a group starts from its committed offsets; `from` may only be "latest" or "earliest" (for a new group)');
      }
    }
    const throttle = present('throttle_ms') ? (f.throttle_ms as number) : undefined;
    if (throttle !== undefined && group !== undefined) {
      return fail('bad_request', id, '`throttle_ms` does not apply to a group subscription: each record goes to one member, which must see it; remove `throttle_ms`');
    }
    if (throttle !== undefined && (throttle < 1 || throttle > MAX_THROTTLE_MS)) return fail('bad_request', id, `\`throttle_ms\` must be 1 to ${MAX_THROTTLE_MS}`);
    const frame: DecodedClientFrame = { type: 'subscribe', id, topic, from: present('from') ? (normalizeFrom(f.from) as From) : 'latest' };
    if (overflow !== 'disconnect') frame.overflow = overflow as Overflow;
    if (present('filter')) frame.filter = f.filter;
    if (throttle !== undefined) frame.throttle_ms = throttle;
    if (group !== undefined) {
      frame.group = group;
      frame.ack = ack ?? 'auto';
    }
    return { ok: true, frame };
  }
  if (f.type === 'unsubscribe') return { ok: true, frame: { type: 'unsubscribe', id, topic } };

  let value: Uint8Array;
  if (present('value') && present('value_b64')) return fail('bad_request', id, 'give either `value` or `value_b64`, not both');
  if (present('value')) value = new TextEncoder().encode(rawMembers(text).value);
  else if (present('value_b64')) {
    const bytes = b64Bytes(f.value_b64 as string);
    if (!bytes) return fail('bad_request', id, '`value_b64` is not valid base64');
    value = bytes;
  } else return fail('bad_request', id, 'a publish needs `value` or `value_b64`');
  let key: Uint8Array | null = null;
  if (present('key') && present('key_b64')) return fail('bad_request', id, 'give either `key` or `key_b64`, not both');
  if (present('key')) key = new TextEncoder().encode(f.key as string);
  else if (present('key_b64')) {
    const bytes = b64Bytes(f.key_b64 as string);
    if (!bytes) return fail('bad_request', id, '`key_b64` is not valid base64');
    key = bytes;
  }
  const reserved = Object.keys((f.headers as Record<string, string> | null | undefined) ?? {}).find((h) => h.toLowerCase().startsWith('ferry-'));
  if (reserved !== undefined) return fail('bad_request', id, `header ${JSON.stringify(reserved)} is reserved: \`ferry-\` headers are set by the gateway`);
  const partition = present('partition') ? (f.partition as number) : null;
  if (partition !== null && partition < 0) return fail('bad_request', id, '`partition` must not be negative');
  const headers = { ...((f.headers as Record<string, string> | null | undefined) ?? {}) };
  if (present('traceparent')) {
    const traceparent = f.traceparent as string;
    const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/.exec(traceparent);
    if (!m) return fail('bad_request', id, '`traceparent` must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>');
    if (/^0+$/.test(m[1]!) || /^0+$/.test(m[2]!)) return fail('bad_request', id, '`traceparent` has an all-zero trace or parent id');
    if (Object.keys(headers).some((h) => h.toLowerCase() === 'traceparent')) {
      return fail('bad_request', id, 'give `traceparent` once: as the field or in `headers`, not both');
    }
    headers.traceparent = traceparent;
  }
  const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64');
  return {
    ok: true,
    frame: {
      type: 'publish',
      id,
      topic,
      value_b64: b64(value),
      key_b64: key === null ? null : b64(key),
      headers,
      partition,
    },
  };
}

/** Encodes a server frame (any object with a `type`) as the gateway would. */
export function encodeServerFrame(frame: { type: string } & Record<string, unknown>): string {
  return JSON.stringify(frame);
}
