/**
 * The publish pipeline: accepted publishes wait in the {@link Outbox} and go
 * out while a connection is attached, at most `limits.max_inflight_publishes`
 * unacked and paced to `limits.publish_rate` / `publish_burst`. Each settles
 * exactly once: acked, failed by the gateway, or rejected by the client.
 *
 * When the connection drops, unacked publishes go back to the head of the
 * queue and are sent again with the same id on the next connection (or are
 * rejected with `connection_lost` when `resendInFlight` is off). A sent
 * publish without an answer within the publish timeout rejects with
 * `timeout` (outcome unknown) and is not sent again.
 */

import { FerryError, type FerryErrorDetails } from './errors.js';
import type { AckFrame, ErrorFrame, Limits } from './frames.js';
import { Outbox, type OfflineQueueOptions, type QueuedPublish } from './queue.js';

/** Where Kafka stored a published record. */
export interface PublishAck {
  topic: string;
  partition: number;
  offset: number;
}

/** Outcome of a publish restored from offline storage (its promise belonged to an earlier client). */
export interface RestoredPublishResult {
  id: string;
  topic: string;
  ack?: PublishAck;
  error?: FerryError;
}

/** A publish waiting to be sent or acked. `resolve`/`reject` are absent for entries restored from storage. */
interface Outgoing extends QueuedPublish {
  done?: boolean;
  /** The publish timeout, while sent and unanswered. */
  timer?: ReturnType<typeof setTimeout>;
  resolve?: (ack: PublishAck) => void;
  reject?: (err: FerryError) => void;
}

/** The open connection, as the publisher sees it. */
export interface Link {
  send(text: string): void;
  limits: Limits;
}

/** Turns an `error` frame into a {@link FerryError} (source `gateway`). */
export function errorOf(frame: ErrorFrame): FerryError {
  const details: FerryErrorDetails = { source: 'gateway' };
  if (frame.id !== undefined) details.requestId = frame.id;
  const retry = frame.retry_after_ms;
  if (typeof retry === 'number' && Number.isFinite(retry) && retry >= 0) details.retryAfterMs = retry;
  return new FerryError(frame.code, frame.message, details);
}

/** Queues, sends and settles publishes. */
export class Publisher {
  private readonly outbox: Outbox<Outgoing>;
  private readonly inflight = new Map<string, Outgoing>();
  private link: Link | undefined;
  private restoring: Promise<void> | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private lastSeq = 0;
  /** Publish tokens available under `limits.publish_rate`, and when last refilled. */
  private bucket = 0;
  private bucketAt = 0;

  /**
   * @param own tells the ids this client made, so that restoring from storage skips them.
   * @param onError storage failures.
   * @param onRestored outcomes of publishes restored from storage.
   */
  constructor(
    options: OfflineQueueOptions,
    private readonly resendInFlight: boolean,
    private readonly timeoutMs: number,
    own: (id: string) => boolean,
    onError: (err: FerryError) => void,
    private readonly onRestored: (result: RestoredPublishResult) => void,
  ) {
    this.outbox = new Outbox(options, onError);
    if (this.outbox.storage) {
      this.restoring = this.outbox.load().then((entries) => {
        this.outbox.unshift(entries.filter((e) => !own(e.id) && !this.inflight.has(e.id)));
        this.restoring = undefined;
        this.pump();
      });
    }
  }

  /** Publishes waiting to be sent. */
  get queued(): number {
    return this.outbox.size;
  }

  /**
   * Accepts an encoded publish frame. Rejects with `queue_full` when the
   * queue's overflow policy refuses it.
   */
  add(id: string, topic: string, frame: string): Promise<PublishAck> {
    return new Promise<PublishAck>((resolve, reject) => {
      this.lastSeq = Math.max(Date.now(), this.lastSeq + 1);
      const evicted = this.outbox.push({ id, topic, frame, seq: this.lastSeq, resolve, reject });
      if (evicted) this.settle(evicted, new FerryError('queue_full', 'dropped from the full offline queue', { requestId: evicted.id }));
      this.pump();
    });
  }

  /** A connection is ready: start sending. */
  attach(link: Link): void {
    this.link = link;
    this.bucketAt = Date.now();
    this.bucket = link.limits.publish_burst ?? link.limits.publish_rate ?? 0;
    this.pump();
  }

  /** The connection is gone: unacked publishes go back to the queue (or fail). */
  detach(): void {
    this.link = undefined;
    clearTimeout(this.timer);
    this.timer = undefined;
    const unacked = [...this.inflight.values()];
    this.inflight.clear();
    for (const entry of unacked) clearTimeout(entry.timer);
    if (this.resendInFlight) this.outbox.unshift(unacked);
    else {
      for (const entry of unacked) {
        this.settle(entry, new FerryError('connection_lost', 'connection lost before the ack: outcome unknown', { requestId: entry.id }));
      }
    }
  }

  /** Settles the publish an `ack` is about. */
  onAck(frame: AckFrame): void {
    const entry = this.inflight.get(frame.id);
    if (!entry) return;
    this.inflight.delete(frame.id);
    clearTimeout(entry.timer);
    this.settle(entry, { topic: frame.topic, partition: frame.partition, offset: frame.offset });
    this.pump();
  }

  /** Settles the publish an `error` is about; returns false when it is about no publish. */
  onError(frame: ErrorFrame): boolean {
    const entry = frame.id === undefined ? undefined : this.inflight.get(frame.id);
    if (!entry) return false;
    this.inflight.delete(entry.id);
    clearTimeout(entry.timer);
    const err = errorOf(frame);
    if (err.code === 'rate_limited') {
      // Not produced: send it again (same id) once the gateway's rate
      // allows, i.e. when the bucket has one token again.
      this.outbox.unshift([entry]);
      this.bucket = 0;
      const rate = this.link?.limits.publish_rate;
      this.schedule(rate ? Math.ceil(1000 / rate) : 1_000);
    } else {
      this.settle(entry, err);
      this.pump();
    }
    return true;
  }

  /** Rejects every unsettled publish with `err` (the client is closing). */
  rejectAll(err: FerryError): void {
    this.detach();
    for (const entry of this.outbox.drain()) this.settle(entry, err);
  }

  /** Sends queued publishes while attached, the window has room and the rate allows. */
  private pump(): void {
    const link = this.link;
    if (!link || this.restoring || this.timer) return;
    const { max_inflight_publishes: window, max_frame_bytes: maxBytes, publish_rate: rate, publish_burst: burst } = link.limits;
    while (this.outbox.size > 0 && this.inflight.size < (window || Infinity)) {
      if (rate) {
        // A token bucket mirroring the gateway's.
        const now = Date.now();
        this.bucket = Math.min(burst ?? rate, this.bucket + ((now - this.bucketAt) * rate) / 1000);
        this.bucketAt = now;
        if (this.bucket < 1) return this.schedule(Math.ceil(((1 - this.bucket) * 1000) / rate));
        this.bucket--;
      }
      const entry = this.outbox.shift() as Outgoing;
      if (entry.done) continue;
      const bytes = new TextEncoder().encode(entry.frame).length;
      if (bytes > maxBytes) {
        // The gateway would close the socket with 1009 (terminal): refuse it here instead.
        this.settle(entry, new FerryError('too_large', `frame of ${bytes} bytes is over max_frame_bytes (${maxBytes})`, { requestId: entry.id }));
        continue;
      }
      this.inflight.set(entry.id, entry);
      entry.timer = setTimeout(() => this.expire(entry), this.timeoutMs);
      link.send(entry.frame);
    }
  }

  /** A sent publish got no answer in time: it fails with `timeout` (outcome unknown) and is not sent again. */
  private expire(entry: Outgoing): void {
    if (this.inflight.get(entry.id) !== entry) return;
    this.inflight.delete(entry.id);
    const why = `no ack within ${this.timeoutMs} ms: the outcome is unknown`;
    this.settle(entry, new FerryError('timeout', why, { requestId: entry.id }));
    this.pump();
  }

  /** Pumps again after `ms`; nothing is sent until then. */
  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pump();
    }, ms);
  }

  /** Settles a publish exactly once and deletes it from storage. */
  private settle(entry: Outgoing, outcome: PublishAck | FerryError): void {
    if (entry.done) return;
    entry.done = true;
    clearTimeout(entry.timer);
    this.outbox.forget(entry.id);
    const error = outcome instanceof FerryError ? outcome : undefined;
    if (entry.resolve && entry.reject) {
      if (error) entry.reject(error);
      else entry.resolve(outcome as PublishAck);
    } else {
      this.onRestored(error ? { id: entry.id, topic: entry.topic, error } : { id: entry.id, topic: entry.topic, ack: outcome as PublishAck });
    }
  }
}
