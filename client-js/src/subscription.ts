/**
 * Subscriptions: one wire subscription per topic ({@link Channel}), shared by
 * every local subscriber of that topic ({@link SubscriptionHandle}), and the
 * async-iterator view of one ({@link createStream}).
 *
 * A channel remembers, per partition, the offset after the last record it
 * delivered. On reconnect it resubscribes `from: { offsets }` those positions
 * and drops any record below them, so the application sees each record once
 * and in order per partition. A group channel keeps no positions: the group's
 * committed offsets are its resume point, and records may come again.
 *
 * A `from: 'snapshot'` channel keeps no positions until `snapshot_end`,
 * which sets them; the snapshot's records do not move them. So a reconnect
 * before `snapshot_end` asks for the snapshot again, and one after it
 * resumes from offsets without it.
 */

import { callSafely } from './emitter.js';
import { FerryError } from './errors.js';
import type { AckMode, FerryMessage, From, MessageFrame, Overflow, SubscribeFrame } from './frames.js';
import { toMessage } from './frames.js';

/** Options of `subscribe()` and `stream()`; all but `onError` go to the gateway only when set. */
export interface SubscribeOptions {
  /** Where to start (default: the gateway's, i.e. `'latest'`); with `group`, where a new group starts (`'latest'` or `'earliest'` only). */
  from?: From;
  /**
   * Shared group (1–200 of `[A-Za-z0-9._-]`): each record goes to one socket
   * among all sockets subscribed with this group, on every gateway node.
   * At least once: a record may be delivered again (after a reconnect, or
   * when a member left without processing it).
   */
  group?: string;
  /** With `group`: `'client'` commits a record only after `client.commit(message)`; default `'auto'` (once sent). */
  ack?: AckMode;
  /** Gateway-side filter, in its wire form (see the protocol). */
  filter?: unknown;
  /** What the gateway does when this socket does not keep up (default `'disconnect'`). */
  overflow?: Overflow;
  /**
   * At most one record per key per this many ms (1–60 000), always the
   * newest, so a key's last value is never lost (capability `throttle`).
   * Not with `group`.
   */
  throttleMs?: number;
  /**
   * With `from: 'snapshot'`: called with `true` when the gateway starts a
   * snapshot (again after a connection lost before its end: drop what came
   * of the previous one), and with `false` at its end (`snapshot_end`).
   */
  onSnapshot?: (starting: boolean) => void;
  /** Called when the gateway refuses the subscription; default: the client's `error` event. */
  onError?: (error: FerryError) => void;
}

/** A live subscription of one local subscriber. */
export interface Subscription {
  readonly topic: string;
  /**
   * Resolves once the gateway confirmed the subscription; rejects if it
   * refused it for good, if the gateway lacks a capability its options need
   * (`unsupported`), or with `timeout` when the first confirmation did not
   * come within the client's `timeoutMs` (the subscription goes on). A
   * refusal that waiting can lift (`unavailable`, `limit` with
   * `retry_after_ms`, ...) is retried and leaves it pending.
   */
  readonly ready: Promise<void>;
  /** `false` once unsubscribed or failed. */
  readonly active: boolean;
  /** Per partition, the offset after the last record delivered (the resume point); empty for a group. */
  positions(): Record<string, number>;
  /** Stops delivery to this subscriber; resolves once the gateway confirmed (or at once when offline). */
  unsubscribe(): Promise<void>;
}

type WireOptions = Omit<SubscribeFrame, 'type' | 'id' | 'topic'>;

/** One wire subscription (per topic) and its resume positions. */
export class Channel {
  readonly handles = new Set<SubscriptionHandle>();
  /** Partition -> next offset to deliver. */
  readonly next = new Map<number, number>();
  /** Id of the subscribe request in flight, if any. */
  requestId: string | undefined;
  /** Whether the gateway confirmed the subscription on the current connection. */
  live = false;
  /** Marks the retry scheduled after a refusal; cleared (cancelling it) by a new subscribe or a lost connection. */
  retry: object | undefined;
  readonly key: string;
  private readyResolve!: () => void;
  private readyReject!: (err: FerryError) => void;
  readonly ready = new Promise<void>((resolve, reject) => {
    this.readyResolve = resolve;
    this.readyReject = reject;
  });

  constructor(
    readonly topic: string,
    readonly wire: WireOptions,
  ) {
    this.key = JSON.stringify(wire);
    this.ready.catch(() => undefined);
  }

  /** Builds the subscribe frame; with `resume`, starts after the delivered records. */
  frame(id: string, resume: boolean): SubscribeFrame {
    const frame: SubscribeFrame = { type: 'subscribe', id, topic: this.topic, ...this.wire };
    if (resume && this.next.size > 0) frame.from = { offsets: this.positions() };
    return frame;
  }

  /** Per partition, the next offset to deliver. */
  positions(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [partition, offset] of this.next) out[partition] = offset;
    return out;
  }

  /**
   * The gateway confirmed; `offsets` (if it sent them) seed partitions not
   * seen yet, except for a snapshot that starts (its end sets them).
   */
  confirmed(offsets: Record<string, number> | undefined): void {
    this.live = true;
    if (this.wire.from === 'snapshot' && this.next.size === 0) {
      offsets = undefined;
      this.snapshot(true);
    }
    for (const p in offsets) {
      const offset = offsets[p];
      if (typeof offset === 'number' && !this.next.has(Number(p))) this.next.set(Number(p), offset);
    }
    this.readyResolve();
  }

  /** `snapshot_end` (`starting` false) sets the positions; tells the subscribers. */
  snapshot(starting: boolean, positions?: Record<string, number>): void {
    for (const p in positions) this.next.set(Number(p), positions[p] as number);
    for (const handle of [...this.handles]) if (handle.onSnapshot) callSafely(handle.onSnapshot, starting);
  }

  /** No confirmation in time: `ready` rejects (the subscription itself goes on, on the next connection). */
  timedOut(err: FerryError): void {
    this.readyReject(err);
  }

  /** The capabilities the gateway must announce for this subscription's options. */
  needs(): string[] {
    const { from, filter, overflow, group, ack, throttle_ms } = this.wire;
    const needs: string[] = [];
    if (from !== undefined) needs.push(from === 'snapshot' ? 'snapshot' : 'from');
    if (throttle_ms !== undefined) needs.push('throttle');
    if (filter !== undefined) needs.push('filter');
    if (overflow !== undefined) needs.push('overflow');
    if (group !== undefined || ack !== undefined) needs.push('group');
    return needs;
  }

  /**
   * Delivers a record to every subscriber unless it was delivered before (a
   * group's records always: at least once; a snapshot's too, without moving the positions).
   */
  deliver(frame: MessageFrame): void {
    if (!this.wire.group && !frame.snapshot) {
      const next = this.next.get(frame.partition);
      if (next !== undefined && frame.offset < next) return;
      this.next.set(frame.partition, frame.offset + 1);
    }
    const message = toMessage(frame);
    for (const handle of [...this.handles]) callSafely(handle.onMessage, message);
  }

  /**
   * The subscription is over: with `fallback`, as a failure reported to each
   * subscriber's `onError` (else to `fallback`); without, as a quiet end.
   */
  end(err: FerryError, fallback?: (err: FerryError) => void): void {
    this.readyReject(err);
    for (const handle of [...this.handles]) handle.end(err, fallback);
  }
}

/** One local subscriber of a {@link Channel}. */
export class SubscriptionHandle implements Subscription {
  active = true;

  constructor(
    readonly channel: Channel,
    readonly onMessage: (message: FerryMessage) => void,
    private readonly onError: ((err: FerryError) => void) | undefined,
    private readonly release: (handle: SubscriptionHandle) => Promise<void>,
    private readonly onEnd?: (err?: FerryError) => void,
    readonly onSnapshot?: (starting: boolean) => void,
  ) {}

  get topic(): string {
    return this.channel.topic;
  }

  get ready(): Promise<void> {
    return this.channel.ready;
  }

  positions(): Record<string, number> {
    return this.channel.positions();
  }

  unsubscribe(): Promise<void> {
    if (!this.active) return Promise.resolve();
    this.active = false;
    return this.release(this);
  }

  /** Ends this subscriber: as a failure (to `onError`, else `fallback`) when `fallback` is given, else quietly. */
  end(err: FerryError, fallback?: (err: FerryError) => void): void {
    if (!this.active) return;
    this.active = false;
    this.channel.handles.delete(this);
    if (this.onEnd) this.onEnd(fallback ? err : undefined);
    else if (fallback) callSafely(this.onError ?? fallback, err);
  }
}

/** Options of `stream()`. */
export interface StreamOptions extends Omit<SubscribeOptions, 'onError' | 'onSnapshot'> {
  /** Aborting it ends the stream (like `close()`). */
  signal?: AbortSignal;
  /**
   * Most records buffered for a consumer that reads slower than they arrive.
   * Past it the stream fails with a `stream_overflow` error rather than grow without
   * bound. Default 10 000.
   */
  bufferSize?: number;
}

/** Records of a topic as an async iterator. `break` out of `for await`, `close()`, or abort `signal` to stop. */
export interface FerryStream<T = unknown> extends AsyncIterableIterator<FerryMessage<T>> {
  readonly subscription: Subscription;
  /** Ends the stream and unsubscribes; buffered records are discarded. */
  close(): Promise<void>;
}

/** Builds a stream over `subscribe(onMessage, onEnd)`; `onEnd` gets an error for a failure, nothing for a quiet end. */
export function createStream<T>(
  subscribe: (onMessage: (m: FerryMessage) => void, onEnd: (e?: FerryError) => void) => Subscription,
  options: StreamOptions,
): FerryStream<T> {
  const limit = options.bufferSize ?? 10_000;
  const buffer: FerryMessage<T>[] = [];
  let waiting: { resolve: (r: IteratorResult<FerryMessage<T>>) => void; reject: (e: unknown) => void } | undefined;
  let failure: FerryError | undefined;
  let ended = false;

  const end = (err?: FerryError): void => {
    if (ended) return;
    ended = true;
    options.signal?.removeEventListener('abort', onAbort);
    if (err) failure = err;
    if (waiting) {
      const w = waiting;
      waiting = undefined;
      if (failure) {
        w.reject(failure);
        failure = undefined;
      } else w.resolve({ value: undefined, done: true });
    }
  };
  const onAbort = (): void => void stream.close();

  const subscription = subscribe(
    (message) => {
      if (ended) return;
      if (waiting) {
        const w = waiting;
        waiting = undefined;
        w.resolve({ value: message as FerryMessage<T>, done: false });
      } else if (buffer.length >= limit) {
        void subscription.unsubscribe();
        end(new FerryError('stream_overflow', `stream buffer full (${limit} records): read faster or raise bufferSize`));
      } else buffer.push(message as FerryMessage<T>);
    },
    (err) => end(err),
  );

  const stream: FerryStream<T> = {
    subscription,
    next(): Promise<IteratorResult<FerryMessage<T>>> {
      const value = buffer.shift();
      if (value) return Promise.resolve({ value, done: false });
      if (failure) {
        const err = failure;
        failure = undefined;
        return Promise.reject(err);
      }
      if (ended) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve, reject) => (waiting = { resolve, reject }));
    },
    async return(): Promise<IteratorResult<FerryMessage<T>>> {
      await stream.close();
      return { value: undefined, done: true };
    },
    async close(): Promise<void> {
      buffer.length = 0;
      failure = undefined;
      end();
      await subscription.unsubscribe();
    },
    [Symbol.asyncIterator]() {
      return stream;
    },
  };
  if (options.signal?.aborted) void stream.close();
  else options.signal?.addEventListener('abort', onAbort);
  return stream;
}
