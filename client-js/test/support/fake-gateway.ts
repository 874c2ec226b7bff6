/**
 * An in-memory Ferry gateway and a fake WebSocket class bound to it, for
 * unit tests of reconnect, resume, offline queue, token and liveness logic.
 *
 * Every client frame is validated with the gateway's rules (`codec.ts`);
 * the extensions (`auth`, subscribe `from`, `ferry-id` de-duplication) are
 * served only when enabled, so a test can play an older gateway or a newer
 * one. A `group` subscription is served like a plain one on this socket
 * (no other members), without `subscribed.partitions`; `commit` frames are
 * checked and recorded in `commits`. A `from: "snapshot"` subscription gets
 * `subscribed`, the latest record of every key (`snapshot: true`, tombstoned
 * keys left out), `snapshot_end` and then live records; `throttle_ms` is
 * checked and accepted but not applied. Events are delivered asynchronously,
 * like a real socket.
 */
import type { WebSocketConstructor, WebSocketLike } from '../../src/index.js';
import { decodeClientFrame } from './codec.js';

/** One stored record. */
export interface FakeRecord {
  topic: string;
  partition: number;
  offset: number;
  timestamp: number;
  key: Uint8Array | null;
  value: Uint8Array;
  headers: Record<string, string>;
  /** The publish id that produced it, if it came from a client. */
  publishId?: string;
  /** A record without value (sent as `"value":null`); `value` is then empty. */
  tombstone?: boolean;
}

export interface FakeGatewayOptions {
  partitions?: number;
  limits?: { max_frame_bytes?: number; max_inflight_publishes?: number; max_subscriptions?: number; publish_rate?: number; publish_burst?: number };
  /**
   * Serve subscribe `from` and report `subscribed.partitions` (issue 4).
   * Default true; false plays a gateway that refuses `from` as unknown
   * (and does not announce it in `welcome.capabilities`).
   */
  supportsFrom?: boolean;
  /**
   * `welcome.capabilities`; default every v1 capability (without `from`
   * when `supportsFrom` is false); `null` sends none (a gateway older
   * than the list).
   */
  capabilities?: string[] | null;
  /** `welcome.protocol`; default 1. */
  protocol?: number;
  /**
   * Require an `auth` frame before `welcome`, with tokens living `ttlMs`
   * (issue 3). A refused token is answered `error unauthorized`; without a
   * valid one within `timeoutMs` (default 1000) the socket closes with 4003.
   */
  auth?: { ttlMs: number; accept?: (token: string) => boolean; timeoutMs?: number };
  /** Answer a publish id seen before with the first ack instead of storing again. Default true. */
  dedupById?: boolean;
  /** Delay acks by this many ms. */
  ackDelayMs?: number;
  /** Topics that do not exist (publish/subscribe answer `unknown_topic`). */
  unknownTopics?: string[];
}

type Json = Record<string, unknown>;

const utf8 = new TextEncoder();

function encodeMessage(r: FakeRecord, snapshot = false): Json {
  const frame: Json = { type: 'message', topic: r.topic, partition: r.partition, offset: r.offset, timestamp: r.timestamp };
  try {
    frame.key = r.key === null ? null : new TextDecoder('utf-8', { fatal: true }).decode(r.key);
  } catch {
    // A key that is not UTF-8 comes as `key_b64`, as from the gateway.
    frame.key = null;
    frame.key_b64 = Buffer.from(r.key as Uint8Array).toString('base64');
  }
  frame.headers = r.headers;
  if (snapshot) frame.snapshot = true;
  if (r.tombstone) frame.value = null;
  else try {
    frame.value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(r.value));
  } catch {
    frame.value_b64 = Buffer.from(r.value).toString('base64');
  }
  return frame;
}

interface Sub {
  /** Next offset to send, per partition. */
  next: number[];
  /** Ack mode of a group subscription. */
  ack?: 'auto' | 'client';
}

/** One accepted socket, seen from the gateway. */
export class FakeConnection {
  /** Text frames received from the client, parsed. */
  readonly received: Json[] = [];
  /** The close code the client closed this socket with, once it did. */
  closedByClient: number | undefined;
  readonly subs = new Map<string, Sub>();
  welcomed = false;
  closed = false;
  /** When true the connection answers nothing and delivers nothing (a dead link). */
  silent = false;
  expiresAt: number | undefined;
  /** Tokens presented in `auth` frames, in order. */
  readonly tokens: string[] = [];
  /** Accepted `commit` frames, in order. */
  readonly commits: { topic: string; partition: number; offset: number }[] = [];
  private expiryTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly gateway: FakeGateway,
    readonly socket: FakeWebSocket,
    readonly protocols: string[],
  ) {}

  /** Frames of one type received from the client. */
  of(type: string): Json[] {
    return this.received.filter((f) => f.type === type);
  }

  /** Acks sent so far. */
  acksSent = 0;

  /** Sends a frame to the client. */
  send(frame: Json): void {
    if (this.closed || this.silent) return;
    if (frame.type === 'ack') this.acksSent++;
    this.socket.deliver(JSON.stringify(frame));
  }

  /** Closes from the gateway side with `code`. */
  close(code: number, reason = ''): void {
    if (this.closed) return;
    this.dispose();
    this.socket.closeFromServer(code, reason);
  }

  /** The socket is gone (either side closed it). */
  dispose(): void {
    this.closed = true;
    clearTimeout(this.expiryTimer);
  }

  welcome(extra: Json = {}): void {
    this.welcomed = true;
    const opts = this.gateway.options;
    const limits = { max_frame_bytes: 65536, max_inflight_publishes: 1000, max_subscriptions: 100, ...opts.limits };
    const all = ['auth', 'commit', 'filter', 'from', 'group', 'overflow', 'snapshot', 'throttle'].filter((c) => c !== 'from' || opts.supportsFrom !== false);
    const capabilities = opts.capabilities === null ? {} : { capabilities: opts.capabilities ?? all };
    this.send({ type: 'welcome', protocol: opts.protocol ?? 1, session: `s${this.gateway.connections.length}`, node: 'fake', limits, ...extra, ...capabilities });
  }

  /** Handles one client text frame. */
  handle(text: string): void {
    const raw = JSON.parse(text) as Json;
    this.received.push(raw);
    if (this.silent) return;
    const g = this.gateway;
    if (g.intercept?.(this, raw)) return;
    const opts = g.options;
    const supportsFrom = opts.supportsFrom ?? true;
    const from = raw.from;
    if (raw.type === 'subscribe' && !supportsFrom && from !== undefined) {
      return this.send({ type: 'error', id: raw.id, code: 'bad_request', message: 'invalid frame: unknown field `from`' });
    }
    const decoded = decodeClientFrame(text);
    if (!decoded.ok) {
      const { id, code, message } = decoded.error;
      return this.send(id === null ? { type: 'error', code, message } : { type: 'error', id, code, message });
    }
    const frame = decoded.frame;
    if (frame.type === 'auth') {
      if (opts.auth) return this.auth(frame.id, frame.token);
      return this.send({ type: 'error', ...(frame.id ? { id: frame.id } : {}), code: 'bad_request', message: 'authentication is off' });
    }
    if (opts.auth && !this.welcomed) {
      return this.send({ type: 'error', id: frame.id, code: 'unauthorized', message: 'authenticate first: send an auth frame' });
    }
    switch (frame.type) {
      case 'ping':
        return this.send({ type: 'pong', id: frame.id });
      case 'publish': {
        if (opts.unknownTopics?.includes(frame.topic)) {
          return this.send({ type: 'error', id: frame.id, code: 'unknown_topic', message: `topic "${frame.topic}" does not exist` });
        }
        const record = g.store(frame);
        const ack = { type: 'ack', id: frame.id, topic: record.topic, partition: record.partition, offset: record.offset };
        if (opts.ackDelayMs) setTimeout(() => this.send(ack), opts.ackDelayMs);
        else this.send(ack);
        return;
      }
      case 'subscribe': {
        if (opts.unknownTopics?.includes(frame.topic)) {
          return this.send({ type: 'error', id: frame.id, code: 'unknown_topic', message: 'no such topic' });
        }
        const ends = g.ends(frame.topic);
        if (frame.from === 'snapshot') return this.snapshot(frame.id, frame.topic, ends);
        const next = ends.map((end, p) => {
          if (from === 'earliest') return 0;
          if (from && typeof from === 'object' && 'offsets' in from) {
            const o = (from as { offsets: Record<string, number> }).offsets[String(p)];
            return o ?? end;
          }
          return end;
        });
        this.subs.set(frame.topic, frame.ack ? { next, ack: frame.ack } : { next });
        const partitions = Object.fromEntries(next.map((o, p) => [String(p), o]));
        this.send({ type: 'subscribed', id: frame.id, topic: frame.topic, ...(supportsFrom && !frame.group ? { partitions } : {}) });
        this.flush(frame.topic);
        return;
      }
      case 'commit': {
        const { id, topic, partition, offset } = frame;
        const sub = this.subs.get(topic);
        const sent = sub && partition < sub.next.length && offset < (sub.next[partition] ?? 0);
        if (sub?.ack !== 'client' || !sent) {
          const message = sub?.ack ? `offset ${offset} of partition ${partition} is not awaiting a commit from this socket` : `no group subscription to "${topic}" on this socket`;
          return this.send({ type: 'error', ...(id === null ? {} : { id }), code: 'bad_request', message });
        }
        this.commits.push({ topic, partition, offset });
        if (id !== null) this.send({ type: 'committed', id, topic, partition, offset });
        return;
      }
      case 'unsubscribe':
        this.subs.delete(frame.topic);
        return this.send({ type: 'unsubscribed', id: frame.id, topic: frame.topic });
    }
  }

  /** Serves a `from: "snapshot"` subscribe: the latest record of each key, `snapshot_end`, then live. */
  private snapshot(id: string, topic: string, ends: number[]): void {
    const positions = Object.fromEntries(ends.map((o, p) => [String(p), o]));
    this.send({ type: 'subscribed', id, topic, partitions: positions });
    const latest = new Map<string, FakeRecord>();
    for (const r of this.gateway.records(topic)) {
      if (r.key !== null) latest.set(Buffer.from(r.key).toString('base64'), r);
    }
    for (const r of latest.values()) if (!r.tombstone) this.send(encodeMessage(r, true));
    if (this.gateway.holdSnapshotEnd) return;
    this.send({ type: 'snapshot_end', topic, positions });
    this.subs.set(topic, { next: [...ends] });
    this.flush(topic);
  }

  /** Starts the auth timeout of an unauthenticated socket. */
  startAuthTimer(): void {
    this.expiryTimer = setTimeout(() => this.close(4003, 'auth_timeout'), this.gateway.options.auth?.timeoutMs ?? 1000);
  }

  private auth(id: string | null, token: string): void {
    this.tokens.push(token);
    const echo = id === null ? {} : { id };
    const accept = this.gateway.options.auth?.accept ?? (() => true);
    if (!accept(token)) return this.send({ type: 'error', ...echo, code: 'unauthorized', message: 'bad token' });
    const ttl = this.gateway.options.auth?.ttlMs ?? 60_000;
    this.expiresAt = Date.now() + ttl;
    clearTimeout(this.expiryTimer);
    this.expiryTimer = setTimeout(() => this.close(4002, 'token_expired'), ttl + 50);
    if (!this.welcomed) this.welcome({ subject: 'tester', expires_at: this.expiresAt });
    else this.send({ type: 'authed', ...echo, expires_at: this.expiresAt });
  }

  /** Sends every record of `topic` this connection has not been sent yet. */
  flush(topic: string): void {
    const sub = this.subs.get(topic);
    if (!sub || this.closed || this.silent) return;
    const log = this.gateway.log.get(topic) ?? [];
    log.forEach((records, p) => {
      while ((sub.next[p] ?? 0) < records.length) {
        const r = records[sub.next[p] ?? 0] as FakeRecord;
        sub.next[p] = r.offset + 1;
        this.send(encodeMessage(r));
      }
    });
  }
}

/** The fake WebSocket the client is handed (`gateway.WebSocket`). */
export class FakeWebSocket implements WebSocketLike {
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  /** 0 connecting, 1 open, 3 closed. */
  readyState = 0;
  connection: FakeConnection | undefined;

  constructor(
    readonly gateway: FakeGateway,
    readonly url: string,
    protocols?: string | string[],
  ) {
    const list = protocols === undefined ? [] : Array.isArray(protocols) ? protocols : [protocols];
    setImmediate(() => {
      if (this.readyState !== 0) return;
      if (gateway.refuse) {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: '' });
        return;
      }
      this.readyState = 1;
      const conn = new FakeConnection(gateway, this, list);
      this.connection = conn;
      gateway.connections.push(conn);
      this.onopen?.({});
      if (gateway.options.auth) conn.startAuthTimer();
      else if (gateway.autoWelcome) conn.welcome();
    });
  }

  send(data: string): void {
    if (this.readyState === 0) throw new Error('send while connecting');
    if (this.readyState !== 1) return;
    const conn = this.connection as FakeConnection;
    this.gateway.sentBytes += data.length;
    setImmediate(() => {
      if (!conn.closed) conn.handle(data);
    });
  }

  close(code = 1000, reason = ''): void {
    if (this.readyState === 3) return;
    const wasConnecting = this.readyState === 0;
    this.readyState = 3;
    if (this.connection) this.connection.closedByClient = code;
    this.connection?.dispose();
    setImmediate(() => this.onclose?.({ code: wasConnecting ? 1006 : code, reason }));
  }

  /** Gateway -> client text frame. */
  deliver(text: string): void {
    setImmediate(() => {
      if (this.readyState === 1) this.onmessage?.({ data: text });
    });
  }

  closeFromServer(code: number, reason: string): void {
    setImmediate(() => {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason });
    });
  }
}

/** The fake gateway plus its Kafka. */
export class FakeGateway {
  readonly connections: FakeConnection[] = [];
  /** topic -> partition -> records. */
  readonly log = new Map<string, FakeRecord[][]>();
  /** New sockets fail at once (gateway down) while true. */
  refuse = false;
  /** Send `welcome` on open (when no auth is configured). */
  autoWelcome = true;
  /** A snapshot stops before `snapshot_end` (and the live records) while true: a connection lost mid-snapshot. */
  holdSnapshotEnd = false;
  /** Sees each client frame first; returns true when it answered the frame itself. */
  intercept: ((conn: FakeConnection, frame: Json) => boolean) | undefined;
  sentBytes = 0;
  private readonly acked = new Map<string, FakeRecord>();
  private roundRobin = 0;
  /** The constructor to pass as `options.WebSocket`. */
  readonly WebSocket: WebSocketConstructor;

  constructor(readonly options: FakeGatewayOptions = {}) {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const gateway = this;
    this.WebSocket = class extends FakeWebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(gateway, url, protocols);
      }
    };
  }

  /** The newest connection. */
  get last(): FakeConnection {
    const conn = this.connections[this.connections.length - 1];
    if (!conn) throw new Error('no connection yet');
    return conn;
  }

  /** Next offset per partition of `topic`. */
  ends(topic: string): number[] {
    return this.partitions(topic).map((records) => records.length);
  }

  private partitions(topic: string): FakeRecord[][] {
    let parts = this.log.get(topic);
    if (!parts) {
      parts = Array.from({ length: this.options.partitions ?? 3 }, () => []);
      this.log.set(topic, parts);
    }
    return parts;
  }

  /** Stores a decoded publish (de-duplicated by id unless disabled). */
  store(frame: { id: string; topic: string; value_b64: string; key_b64: string | null; headers: Record<string, string>; partition: number | null }): FakeRecord {
    const seen = this.acked.get(frame.id);
    if (seen && (this.options.dedupById ?? true)) return seen;
    const record = this.produce(frame.topic, new Uint8Array(Buffer.from(frame.value_b64, 'base64')), {
      key: frame.key_b64 === null ? null : new Uint8Array(Buffer.from(frame.key_b64, 'base64')),
      headers: frame.headers,
      ...(frame.partition === null ? {} : { partition: frame.partition }),
      publishId: frame.id,
    });
    this.acked.set(frame.id, record);
    return record;
  }

  /** Appends a record (as a producer outside the gateway would) and fans it out. */
  produce(
    topic: string,
    value: unknown,
    opts: { key?: Uint8Array | string | null; partition?: number; headers?: Record<string, string>; publishId?: string; tombstone?: boolean } = {},
  ): FakeRecord {
    const parts = this.partitions(topic);
    const partition = opts.partition ?? this.roundRobin++ % parts.length;
    const records = parts[partition] as FakeRecord[];
    const record: FakeRecord = {
      topic,
      partition,
      offset: records.length,
      timestamp: Date.now(),
      key: typeof opts.key === 'string' ? utf8.encode(opts.key) : (opts.key ?? null),
      value: opts.tombstone ? new Uint8Array() : value instanceof Uint8Array ? value : utf8.encode(JSON.stringify(value)),
      headers: opts.headers ?? {},
      ...(opts.publishId === undefined ? {} : { publishId: opts.publishId }),
      ...(opts.tombstone ? { tombstone: true } : {}),
    };
    records.push(record);
    for (const conn of this.connections) conn.flush(topic);
    return record;
  }

  /** Every record of a topic, partition by partition. */
  records(topic: string): FakeRecord[] {
    return (this.log.get(topic) ?? []).flat();
  }
}

/** Polls `check` until it is truthy (returns it) or `timeoutMs` passes (throws). */
export async function waitFor<T>(check: () => T, timeoutMs = 2_000, what = 'condition'): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Sleeps `ms`. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
