/**
 * Subscription routing: one {@link Channel} per topic on the wire, shared
 * by every local subscriber of the topic. Subscribes each channel on every
 * new connection, resuming from its positions when the gateway announces
 * `from`; hands each `message` to its channel. A refusal that waiting can
 * lift (`unavailable`, `limit` with `retry_after_ms`, ...) is retried after
 * the gateway's delay, with jitter; any other refusal, and an end by the
 * gateway, ends the channel with an error its subscribers see.
 */

import { FerryError } from './errors.js';
import { checkTopic, type FerryMessage, type GapFrame, type MessageFrame, type SnapshotEndFrame } from './frames.js';
import type { Link } from './link.js';
import { errorOf } from './publisher.js';
import { Channel, SubscriptionHandle, type SubscribeOptions } from './subscription.js';

/** Gateway error codes after which a subscribe is tried again on the same connection. */
const TRANSIENT = ['unavailable', 'timeout', 'rate_limited'];

/** The wait before trying a refused subscribe again, when the gateway names none. */
const DEFAULT_RETRY_MS = 1_000;

/**
 * Whether a refused subscribe is tried again: a transient code, or `limit`
 * with `retry_after_ms` (the node is overloaded for now). A `limit` without
 * it is a cap that waiting does not lift (e.g. too many subscriptions on
 * this connection, as older gateways also say for a full node): final.
 */
export function retryable(err: FerryError): boolean {
  return TRANSIENT.includes(err.code) || (err.code === 'limit' && err.retryAfterMs !== undefined);
}

/**
 * The wait before retry: at least the gateway's `retry_after_ms`, plus up to
 * half as much again (at least 100 ms) at random, so that the many clients a
 * node refused at once do not come back in lockstep.
 */
export function retryDelay(retryAfterMs: number | undefined, random: () => number = Math.random): number {
  const base = Math.max(0, retryAfterMs ?? DEFAULT_RETRY_MS);
  return base + Math.floor(random() * Math.max(base / 2, 100));
}

export class Router {
  private readonly channels = new Map<string, Channel>();

  constructor(private readonly link: Link) {}

  /**
   * Adds a local subscriber of `topic`; subscribes on the wire when it is
   * the first one.
   *
   * @throws FerryError `invalid_topic`, or `bad_request` for a second subscriber with other options, or a group with `throttleMs` or a snapshot.
   */
  add(topic: string, onMessage: (message: FerryMessage) => void, options: SubscribeOptions, onEnd?: (err?: FerryError) => void): SubscriptionHandle {
    checkTopic(topic);
    const { from, group, ack, filter, overflow, throttleMs } = options;
    if (group !== undefined && (throttleMs !== undefined || from === 'snapshot')) {
      throw new FerryError('bad_request', 'a group subscription takes no `throttle_ms` and no `from: "snapshot"`');
    }
    const wire = JSON.parse(JSON.stringify({ from, group, ack, filter, overflow, throttle_ms: throttleMs })) as Channel['wire'];
    let channel = this.channels.get(topic);
    if (channel && channel.key !== JSON.stringify(wire)) {
      throw new FerryError('bad_request', `already subscribed to "${topic}" with other options`);
    }
    if (!channel) {
      channel = new Channel(topic, wire);
      this.channels.set(topic, channel);
      if (this.link.connected) this.subscribe(channel);
    }
    const handle = new SubscriptionHandle(channel, onMessage, options.onError, (h) => this.release(h), onEnd, options.onSnapshot);
    channel.handles.add(handle);
    return handle;
  }

  /** A connection opened: subscribe every channel, from where it was. */
  connected(): void {
    for (const channel of this.channels.values()) this.subscribe(channel);
  }

  /** The connection is gone: channels wait for the next one (a pending retry is dropped: the next connection subscribes anyway). */
  disconnected(): void {
    for (const channel of this.channels.values()) {
      channel.live = false;
      channel.requestId = undefined;
      channel.retry = undefined;
    }
  }

  /** Hands a record to its channel. */
  deliver(frame: MessageFrame): void {
    this.channels.get(frame.topic)?.deliver(frame);
  }

  /** A snapshot is complete: its positions are the channel's. */
  snapshotEnd(frame: SnapshotEndFrame): void {
    this.channels.get(frame.topic)?.snapshot(false, frame.positions);
  }

  /** Records were skipped: continue the channel where the gateway resumed. */
  gap(frame: GapFrame): void {
    const channel = this.channels.get(frame.topic);
    if (channel && typeof frame.partition === 'number' && typeof frame.resumed_at === 'number') {
      channel.next.set(frame.partition, frame.resumed_at);
    }
    this.link.gap(frame);
  }

  /** The gateway ended a subscription on its own (e.g. `forbidden` after a token refresh). */
  endedByGateway(topic: string, reason = 'closed'): void {
    const channel = this.channels.get(topic);
    if (!channel) return;
    this.channels.delete(topic);
    const err = new FerryError(reason, `the gateway ended the subscription to "${topic}" (${reason})`, { source: 'gateway' });
    channel.end(err, (e) => this.link.error(e));
  }

  /** The client ends: every channel ends with `err` (reported to `onError` when `report`). */
  endAll(err: FerryError, report: boolean): void {
    const channels = [...this.channels.values()];
    this.channels.clear();
    for (const channel of channels) channel.end(err, report ? () => undefined : undefined);
  }

  private subscribe(channel: Channel): void {
    const link = this.link;
    const missing = channel.needs().filter((c) => !link.has(c));
    if (missing.length > 0) {
      this.channels.delete(channel.topic);
      const why = `the gateway does not announce ${missing.map((c) => `"${c}"`).join(', ')}, which this subscription to "${channel.topic}" needs`;
      channel.end(new FerryError('unsupported', why), (e) => link.error(e));
      return;
    }
    const positions = channel.next.size > 0;
    const resume = positions && link.has('from');
    if (positions && !resume) {
      // A gateway without `from`: continue live, and tell the app what may be missing.
      const message = 'the gateway does not announce "from": resubscribed live, records produced while disconnected may be missing';
      link.gap({ type: 'gap', topic: channel.topic, reason: 'resume_refused', message, positions: channel.positions() });
    }
    const id = link.nextId();
    channel.requestId = id;
    channel.retry = undefined;
    link.requests.expect(id, link.timeoutMs, (outcome) => {
      if (channel.requestId !== id || this.channels.get(channel.topic) !== channel) return;
      channel.requestId = undefined;
      if (outcome instanceof FerryError) {
        if (outcome.code !== 'timeout') return; // connection lost: subscribed again on the next one
        channel.timedOut(outcome);
        return link.abandon(`no reply to subscribe "${channel.topic}"`);
      }
      if (outcome.type === 'subscribed') return channel.confirmed(outcome.partitions);
      if (outcome.type !== 'error') return;
      const err = errorOf(outcome);
      if (retryable(err)) {
        // Tried again on this connection after the delay (a new connection subscribes at once instead).
        const retry = {};
        channel.retry = retry;
        link.later(() => {
          if (channel.retry !== retry) return;
          channel.retry = undefined;
          if (link.connected && this.channels.get(channel.topic) === channel && !channel.requestId && !channel.live) this.subscribe(channel);
        }, retryDelay(err.retryAfterMs));
        return;
      }
      // Final: the subscription ends, and the app hears of it (onError, else the error event).
      this.channels.delete(channel.topic);
      channel.end(err, (e) => link.error(e));
    });
    link.send(channel.frame(id, resume));
  }

  /** The last subscriber of a channel left: unsubscribe on the wire. */
  private release(handle: SubscriptionHandle): Promise<void> {
    const channel = handle.channel;
    channel.handles.delete(handle);
    if (channel.handles.size > 0 || this.channels.get(channel.topic) !== channel) return Promise.resolve();
    this.channels.delete(channel.topic);
    if (channel.requestId !== undefined) this.link.requests.settle(channel.requestId, new FerryError('closed', 'unsubscribed'));
    channel.requestId = undefined;
    if (!this.link.connected) return Promise.resolve();
    return this.link.request({ type: 'unsubscribe', id: this.link.nextId(), topic: channel.topic }).then(
      () => undefined,
      () => undefined,
    );
  }
}
