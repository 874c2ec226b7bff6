/**
 * Requests awaiting their reply: one handler per request id, each settled
 * exactly once, by the reply, by the operation timeout, or by the loss of
 * the connection.
 */

import { FerryError } from './errors.js';
import type { ServerFrame } from './frames.js';

/** What a waiting request gets: the reply frame, or why none will come (`timeout`, `connection_lost`). */
export type Outcome = ServerFrame | FerryError;

/** The requests of one client, across connections. */
export class Requests {
  private readonly waiting = new Map<string, { settle: (outcome: Outcome) => void; timer: ReturnType<typeof setTimeout> }>();

  /** Waits for the reply to request `id`; after `timeoutMs` without one, `settle` gets a `timeout` error. */
  expect(id: string, timeoutMs: number, settle: (outcome: Outcome) => void): void {
    const timer = setTimeout(() => {
      this.waiting.delete(id);
      settle(new FerryError('timeout', `no reply to request ${id} within ${timeoutMs} ms`, { requestId: id }));
    }, timeoutMs);
    this.waiting.set(id, { settle, timer });
  }

  /** Hands a reply to the request waiting for it; returns whether one was. */
  reply(id: string, frame: ServerFrame): boolean {
    return this.settle(id, frame);
  }

  /** Settles request `id` with `outcome`; returns whether it was waiting. */
  settle(id: string, outcome: Outcome): boolean {
    const waiting = this.waiting.get(id);
    if (!waiting) return false;
    this.waiting.delete(id);
    clearTimeout(waiting.timer);
    waiting.settle(outcome);
    return true;
  }

  /** The connection is gone: every waiting request gets `connection_lost`. */
  lost(): void {
    for (const id of [...this.waiting.keys()]) {
      this.settle(id, new FerryError('connection_lost', 'connection lost before the reply', { requestId: id }));
    }
  }
}
