/**
 * Wire frames of protocol v1 (subprotocol `ferry.v1`): JSON text, one
 * object per WebSocket message.
 *
 * The client only encodes client frames and decodes server frames; both
 * shapes are typed here. Optional fields (`from`, `group`, `ack`, `filter`,
 * `overflow`, `auth`, `commit`) are only put on the wire when the caller uses
 * them, so a gateway that does not know them yet still serves plain use.
 */

import { fromBase64, toBase64 } from './base64.js';
import { FerryError } from './errors.js';

/** The WebSocket subprotocol the client offers. */
export const SUBPROTOCOL = 'ferry.v1';
/** The protocol version this client speaks (`welcome.protocol`). */
export const PROTOCOL_VERSION = 1;
/**
 * The capabilities of every v1 gateway that predates `welcome.capabilities`
 * (see the compatibility policy in `protocol/README.md`): a `welcome`
 * without the list means all of these.
 */
export const V1_CAPABILITIES: readonly string[] = ['auth', 'commit', 'filter', 'from', 'group', 'overflow'];
/** Longest request id, in characters. */
export const MAX_ID_CHARS = 64;
/** Longest Kafka topic name. */
export const MAX_TOPIC_LEN = 249;

// ---------------------------------------------------------------- client frames

/**
 * Where a subscription starts:
 * - `'latest'`: records produced from now on (the gateway's default);
 * - `'earliest'`: from the start of each partition;
 * - `{ offsets: { "0": 120 } }`: the next offset to read, per partition;
 * - `{ timestamp: ms }`: the first record at or after this time;
 * - `'snapshot'` (capability `snapshot`): the latest record of every key
 *   (messages with `snapshot: true`), then `snapshot_end`, then live records
 *   from exactly the snapshot's positions. Not with `group`.
 */
export type From = 'latest' | 'earliest' | 'snapshot' | { offsets: Record<string, number> } | { timestamp: number };

/** `publish`: produce one record. Exactly one of `value` / `value_b64`. */
export interface PublishFrame {
  type: 'publish';
  id: string;
  topic: string;
  value?: unknown;
  value_b64?: string;
  key?: string;
  key_b64?: string;
  headers?: Record<string, string>;
  /** W3C trace context (capability `traceparent`); becomes the record's `traceparent` header. */
  traceparent?: string;
  partition?: number;
}

/**
 * What the gateway does when a live subscription's socket does not keep up:
 * - `'disconnect'` (the gateway's default): close with 4000; the client resumes without loss;
 * - `'drop_oldest'`: drop the oldest queued records, then send a `lagged` notice;
 * - `'conflate'`: keep only the latest queued record per key (current-value dashboards).
 */
export type Overflow = 'disconnect' | 'drop_oldest' | 'conflate';

/**
 * When a shared-group record counts as processed (its offset may be committed):
 * - `'auto'` (the default): once the gateway wrote it to the socket;
 * - `'client'`: once the client sent `commit` for it.
 */
export type AckMode = 'auto' | 'client';

/** `subscribe`: receive records of a topic. Options beyond `topic` are sent only when set. */
export interface SubscribeFrame {
  type: 'subscribe';
  id: string;
  topic: string;
  /** With `group`, only `'latest'` or `'earliest'` (where a new group starts). */
  from?: From;
  /** Shared group (1–200 of `[A-Za-z0-9._-]`): each record goes to one socket of the group. */
  group?: string;
  /** Only with `group`. */
  ack?: AckMode;
  filter?: unknown;
  /** Not with `group` (the gateway refuses it with `bad_request`). */
  overflow?: Overflow;
  /** At most one record per key per this many ms (1–60 000), always the newest (capability `throttle`). Not with `group`. */
  throttle_ms?: number;
}

/** `unsubscribe`: stop receiving records of a topic. */
export interface UnsubscribeFrame {
  type: 'unsubscribe';
  id: string;
  topic: string;
}

/** `ping`: liveness check, answered by `pong`. */
export interface PingFrame {
  type: 'ping';
  id: string;
}

/** `auth`: present a token (first time or refresh). */
export interface AuthFrame {
  type: 'auth';
  id?: string;
  token: string;
}

/**
 * `commit`: a record of an `ack: "client"` group subscription is processed.
 * Without `id` there is no reply unless it fails (an `error` without id).
 */
export interface CommitFrame {
  type: 'commit';
  id?: string;
  topic: string;
  partition: number;
  offset: number;
}

/** Every frame the client sends. */
export type ClientFrame = PublishFrame | SubscribeFrame | UnsubscribeFrame | PingFrame | AuthFrame | CommitFrame;

/** Encodes a client frame as JSON text. Absent (undefined) fields are left out. */
export function encodeClientFrame(frame: ClientFrame): string {
  return JSON.stringify(frame);
}

/** Options of a publish that end up in the frame. */
export interface PublishFields {
  /** Record key: text, or bytes (sent as `key_b64`). */
  key?: string | Uint8Array;
  /** Record headers (UTF-8 text values). */
  headers?: Record<string, string>;
  /**
   * W3C trace context (`00-<32 hex>-<16 hex>-<2 hex>`), carried to Kafka as the
   * record's `traceparent` header and delivered in `headers`. Needs a gateway
   * that announces the `traceparent` capability (an older one answers
   * `bad_request` naming the field); for an older one put it in `headers`.
   */
  traceparent?: string;
  /** Explicit partition; by default Kafka's partitioner picks one from the key. */
  partition?: number;
}

/**
 * Builds a `publish` frame. A `Uint8Array` value goes as `value_b64`; any
 * other value must be JSON-serializable and goes as `value`.
 *
 * @throws FerryError `bad_request` / `invalid_topic` for what the gateway would refuse.
 */
export function publishFrame(id: string, topic: string, value: unknown, fields: PublishFields = {}): PublishFrame {
  checkTopic(topic, id);
  const frame: PublishFrame = { type: 'publish', id, topic };
  if (value instanceof Uint8Array) {
    frame.value_b64 = toBase64(value);
  } else {
    if (JSON.stringify(value) === undefined) {
      throw new FerryError('bad_request', 'value is not JSON-serializable (use a Uint8Array for bytes)', {
        requestId: id,
      });
    }
    frame.value = value;
  }
  const { key, headers, traceparent, partition } = fields;
  if (key instanceof Uint8Array) frame.key_b64 = toBase64(key);
  else if (key !== undefined) frame.key = key;
  if (headers !== undefined) {
    for (const name in headers) {
      if (typeof headers[name] !== 'string') {
        throw new FerryError('bad_request', `header ${JSON.stringify(name)} must be a string`, { requestId: id });
      }
      if (/^ferry-/i.test(name)) {
        throw new FerryError('bad_request', `header ${name}: ferry-* headers are reserved`, { requestId: id });
      }
    }
    frame.headers = headers;
  }
  if (traceparent !== undefined) {
    const ids = /^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/.exec(traceparent);
    if (!ids || /^0+$/.test(ids[1]!) || /^0+$/.test(ids[2]!)) {
      throw new FerryError('bad_request', '`traceparent` must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>', { requestId: id });
    }
    if (Object.keys(headers ?? {}).some((h) => h.toLowerCase() === 'traceparent')) {
      throw new FerryError('bad_request', 'give `traceparent` once: as the option or in `headers`, not both', { requestId: id });
    }
    frame.traceparent = traceparent;
  }
  if (partition !== undefined) {
    if (!Number.isInteger(partition) || partition < 0) {
      throw new FerryError('bad_request', '`partition` must be a non-negative integer', { requestId: id });
    }
    frame.partition = partition;
  }
  return frame;
}

/** Why a topic name would be refused by the gateway, or `undefined` if it is legal. */
export function topicError(topic: string): string | undefined {
  if (typeof topic !== 'string' || topic === '') return 'topic must not be empty';
  if (topic.length > MAX_TOPIC_LEN) return `topic is longer than ${MAX_TOPIC_LEN} characters`;
  if (topic === '.' || topic === '..') return 'topic may not be "." or ".."';
  if (topic.startsWith('__')) return 'topics starting with "__" are internal to Kafka';
  if (!/^[A-Za-z0-9._-]+$/.test(topic)) {
    return "topic may only contain ASCII letters, digits, '.', '_' and '-'";
  }
  return undefined;
}

/** Throws `invalid_topic` for an illegal topic name. */
export function checkTopic(topic: string, requestId?: string): void {
  const why = topicError(topic);
  if (why !== undefined) throw new FerryError('invalid_topic', why, requestId === undefined ? {} : { requestId });
}

/** Whether `id` is a legal request id (1 to 64 characters). */
export function validId(id: unknown): id is string {
  if (typeof id !== 'string') return false;
  const chars = [...id].length;
  return chars >= 1 && chars <= MAX_ID_CHARS;
}

// ---------------------------------------------------------------- server frames

/** Per-connection limits announced in `welcome`. */
export interface Limits {
  /** Largest frame the client may send; a larger one closes the socket with 1009. */
  max_frame_bytes: number;
  /** Publishes that may await their ack at once. */
  max_inflight_publishes: number;
  /** Topics the connection may subscribe to. */
  max_subscriptions: number;
  /** Sustained publishes per second (when the gateway limits the rate). */
  publish_rate?: number;
  /** Publishes allowed at once above the sustained rate. */
  publish_burst?: number;
  /** Connections one subject may hold on a node (with authentication). */
  max_connections_per_subject?: number;
}

/** First frame of every connection (after `auth`, when the gateway requires one). */
export interface WelcomeFrame {
  type: 'welcome';
  protocol: number;
  session: string;
  node: string;
  limits: Limits;
  /** The authenticated subject (the token's `sub`), with authentication on. */
  subject?: string;
  /** When the presented token expires, in ms since the epoch; refresh before. */
  expires_at?: number;
  /**
   * What the gateway can do beyond the first v1 release (`from`, `filter`,
   * `overflow`, `group`, `commit`, `auth`); absent from older gateways,
   * which have all of {@link V1_CAPABILITIES}.
   */
  capabilities?: string[];
}

/** Kafka stored the record of publish `id`. */
export interface AckFrame {
  type: 'ack';
  id: string;
  topic: string;
  partition: number;
  offset: number;
}

/** The subscription is live: every record from the reported start offsets on arrives. */
export interface SubscribedFrame {
  type: 'subscribed';
  id: string;
  topic: string;
  /** Partition -> the offset delivery starts at (absent for a group, and on gateways before resume support). */
  partitions?: Record<string, number>;
}

/** The subscription is gone. Without `id` the gateway ended it, and `reason` says why (e.g. `forbidden`). */
export interface UnsubscribedFrame {
  type: 'unsubscribed';
  id?: string;
  topic: string;
  reason?: string;
}

/** Reply to a `commit` that had an `id`. */
export interface CommittedFrame {
  type: 'committed';
  id: string;
  topic: string;
  partition: number;
  offset: number;
}

/** Reply to `ping`. */
export interface PongFrame {
  type: 'pong';
  id: string;
}

/** An in-band token refresh was accepted. */
export interface AuthedFrame {
  type: 'authed';
  id?: string;
  expires_at?: number;
}

/** A request failed; the socket stays open. */
export interface ErrorFrame {
  type: 'error';
  id?: string;
  code: string;
  message: string;
  /** Sent with `unavailable`, and with `limit` when the node is overloaded for now: a suggested delay before retrying. */
  retry_after_ms?: number;
}

/** One Kafka record of a subscribed topic, as on the wire. */
export interface MessageFrame {
  type: 'message';
  topic: string;
  partition: number;
  offset: number;
  timestamp?: number | null;
  key?: string | null;
  key_b64?: string;
  headers?: Record<string, string | null>;
  headers_b64?: Record<string, string>;
  value?: unknown;
  value_b64?: string;
  /** `true` on the records of a snapshot (`from: "snapshot"`). */
  snapshot?: boolean;
}

/**
 * The snapshot of a `from: "snapshot"` subscription is complete: live
 * records follow from `positions` (partition -> next offset), which are also
 * where to resume from.
 */
export interface SnapshotEndFrame {
  type: 'snapshot_end';
  topic: string;
  positions: Record<string, number>;
}

/**
 * Records will not be delivered: a requested start offset is no longer (or
 * not yet) in Kafka and delivery resumes at `resumed_at` (`reason`
 * `retention` or `beyond_end`). The client also emits one with reason
 * `resume_refused` when a gateway without resume support refused `from` on
 * a reconnect, so records produced while disconnected may be missing.
 */
export interface GapFrame {
  type: 'gap';
  topic: string;
  partition?: number;
  /** The offset that was asked for. */
  requested?: number;
  /** The offset delivery continues at. */
  resumed_at?: number;
  reason?: string;
  [field: string]: unknown;
}

/** An `overflow: "drop_oldest"` or `"conflate"` subscription dropped `dropped` records while the socket was behind. */
export interface LaggedFrame {
  type: 'lagged';
  topic: string;
  dropped: number;
}

/** A frame of a type this client does not know; ignored, for forward compatibility. */
export interface UnknownFrame {
  type: string;
  [field: string]: unknown;
}

/** Every frame the gateway sends. */
export type ServerFrame =
  | WelcomeFrame
  | AckFrame
  | SubscribedFrame
  | UnsubscribedFrame
  | CommittedFrame
  | PongFrame
  | AuthedFrame
  | ErrorFrame
  | MessageFrame
  | SnapshotEndFrame
  | GapFrame
  | LaggedFrame;

/** Required fields per known frame type: `s` string, `n` number, `o` object. */
const REQUIRED: Record<string, Record<string, 's' | 'n' | 'o'>> = {
  welcome: { protocol: 'n', session: 's', node: 's', limits: 'o' },
  ack: { id: 's', topic: 's', partition: 'n', offset: 'n' },
  subscribed: { id: 's', topic: 's' },
  unsubscribed: { topic: 's' },
  pong: { id: 's' },
  error: { code: 's', message: 's' },
  message: { topic: 's', partition: 'n', offset: 'n' },
  snapshot_end: { topic: 's', positions: 'o' },
  gap: { topic: 's' },
  lagged: { topic: 's', dropped: 'n' },
};

const TYPES = { s: 'string', n: 'number', o: 'object' } as const;

/**
 * Decodes one text frame from the gateway. Known frame types are checked for
 * their required fields; unknown types are returned as they are.
 *
 * @throws FerryError `protocol` for text that is not a frame.
 */
export function decodeServerFrame(text: string): ServerFrame | UnknownFrame {
  let frame: unknown;
  try {
    frame = JSON.parse(text);
  } catch (err) {
    throw new FerryError('protocol', 'gateway frame is not JSON', { cause: err });
  }
  if (typeof frame !== 'object' || frame === null || typeof (frame as UnknownFrame).type !== 'string') {
    throw new FerryError('protocol', 'gateway frame has no type');
  }
  const f = frame as UnknownFrame;
  const required = REQUIRED[f.type];
  for (const field in required) {
    const want = TYPES[required[field] as 's' | 'n' | 'o'];
    if (typeof f[field] !== want || f[field] === null) {
      throw new FerryError('protocol', `${f.type} frame without a valid ${field}`);
    }
  }
  return f;
}

// ---------------------------------------------------------------- messages

/** A record delivered to the application. */
export interface FerryMessage<T = unknown> {
  topic: string;
  partition: number;
  offset: number;
  /** Record timestamp, ms since the epoch, when Kafka has one. */
  timestamp: number | null;
  /** Key as text, bytes (when not UTF-8), or `null` for no key. */
  key: string | Uint8Array | null;
  /** Headers: text values, bytes for values that are not UTF-8, `null` for a header without value. */
  headers: Record<string, string | Uint8Array | null>;
  /**
   * The value: parsed JSON when the record is JSON, a `Uint8Array` when it is
   * not, `null` for a tombstone (or the JSON value `null`).
   */
  value: T | Uint8Array | null;
  /** `true` on the records of a snapshot (`from: 'snapshot'`); absent on live records. */
  snapshot?: true;
}

/** Turns a wire `message` frame into a {@link FerryMessage}. */
export function toMessage<T = unknown>(frame: MessageFrame): FerryMessage<T> {
  const headers: FerryMessage['headers'] = { ...frame.headers };
  for (const name in frame.headers_b64) headers[name] = fromBase64(frame.headers_b64[name] as string);
  return {
    topic: frame.topic,
    partition: frame.partition,
    offset: frame.offset,
    timestamp: frame.timestamp ?? null,
    key: frame.key_b64 !== undefined ? fromBase64(frame.key_b64) : (frame.key ?? null),
    headers,
    value: frame.value_b64 !== undefined ? fromBase64(frame.value_b64) : ((frame.value ?? null) as T | null),
    ...(frame.snapshot && { snapshot: true }),
  };
}
