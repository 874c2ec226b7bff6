/**
 * Authentication of the connection: the `auth` frame on every new socket
 * (when a token is configured), token refresh before `expires_at`, and what
 * a failure means: a refused static token ends the client, a refused
 * fetched token fetches another one on a new connection, and a `getToken()`
 * that throws `FerryError('unauthorized')` ends the client for good.
 */

import { backoffDelay, type BackoffBounds } from './backoff.js';
import { FerryError } from './errors.js';
import type { AuthedFrame, ErrorFrame, ServerFrame, WelcomeFrame } from './frames.js';
import type { Link } from './link.js';
import { errorOf } from './publisher.js';
import { TokenSource, refreshDelay, type GetToken } from './token.js';

/** Refresh timing and retries, with defaults filled in. */
export interface RefreshPolicy {
  bounds: BackoffBounds;
  marginMs: number;
  attempts: number;
}

/** Whether `err` (thrown by `getToken()`) says the user has no credentials any more. */
function unauthorized(err: unknown): err is FerryError {
  return err instanceof FerryError && err.code === 'unauthorized' && err.source === 'client';
}

/** The token side of one client. */
export class Auth {
  private readonly tokens: TokenSource;
  private pending: { id: string; settle: (reply: ServerFrame | undefined) => void } | undefined;
  private refreshing: Promise<void> | undefined;
  private refreshSettle: ((err?: FerryError) => void) | undefined;

  constructor(
    private readonly link: Link,
    token: string | undefined,
    getToken: GetToken | undefined,
    private readonly policy: RefreshPolicy,
  ) {
    this.tokens = new TokenSource(token, getToken);
  }

  /** Whether a token is configured (then every socket sends `auth` first). */
  get enabled(): boolean {
    return this.tokens.enabled;
  }

  /**
   * A socket opened: present a token. `current` tells whether the socket is
   * still the client's; `drop` gives up on it (the client reconnects).
   */
  authenticate(current: () => boolean, drop: (reason: string) => void): void {
    this.tokens.forConnect(Date.now(), this.policy.marginMs).then(
      (token) => {
        if (!current()) return;
        this.send(token).catch((err: FerryError) => {
          if (!current()) return;
          if (this.link.connected) return this.link.error(err); // e.g. a gateway without authentication
          if (!this.tokens.refreshable) return this.link.stop(err); // a static token will not get better
          this.link.error(err);
          this.tokens.expire();
          drop('token refused');
        });
      },
      (err: unknown) => {
        if (!current()) return;
        if (unauthorized(err)) return this.link.stop(err);
        this.link.error(new FerryError('token', `getToken() failed: ${String(err)}`, { cause: err }));
        drop('no token');
      },
    );
  }

  /** The gateway closed with 4002 (token expired): fetch a fresh token for the next connection. */
  expired(): void {
    this.tokens.expire();
  }

  /** A `welcome` arrived: it answers a pending `auth`, and says when the token expires. */
  welcome(frame: WelcomeFrame): void {
    if (frame.expires_at === undefined) return;
    this.expiresAt(frame.expires_at);
    this.pending?.settle(frame);
  }

  /** An `authed` arrived (a refresh was accepted). */
  authed(frame: AuthedFrame): void {
    if (frame.expires_at !== undefined) this.expiresAt(frame.expires_at);
    if (frame.id === undefined || frame.id === this.pending?.id) this.pending?.settle(frame);
  }

  /** An `error` arrived; returns whether it answers the pending `auth`. */
  error(frame: ErrorFrame): boolean {
    if (!this.pending || this.pending.id !== frame.id) return false;
    this.pending.settle(frame);
    return true;
  }

  /** The connection is gone: a pending `auth` will get no answer. */
  lost(): void {
    this.pending?.settle(undefined);
  }

  /** The client ends: a running refresh fails with `err`. */
  end(err: FerryError): void {
    this.refreshSettle?.(err);
  }

  /** See `FerryClient.refreshToken()`. */
  refresh(): Promise<void> {
    if (!this.tokens.refreshable) return Promise.reject(new FerryError('token', 'no getToken() configured'));
    this.refreshing ??= new Promise<void>((resolve, reject) => {
      this.refreshSettle = (err) => {
        this.refreshing = this.refreshSettle = undefined;
        if (err) reject(err);
        else resolve();
      };
      this.attempt(0);
    });
    return this.refreshing;
  }

  /** Sends `auth`; resolves on `welcome`/`authed` (or connection loss), rejects on an `error` reply. */
  private send(token: string): Promise<void> {
    const id = this.link.nextId();
    this.pending?.settle(undefined);
    return new Promise<void>((resolve, reject) => {
      this.pending = {
        id,
        settle: (reply) => {
          this.pending = undefined;
          if (reply?.type === 'error') reject(errorOf(reply));
          else resolve();
        },
      };
      this.link.send({ type: 'auth', id, token });
    });
  }

  private expiresAt(expiresAt: number): void {
    this.tokens.expiresAt = expiresAt;
    if (!this.tokens.refreshable) return;
    this.link.later(() => {
      if (this.tokens.expiresAt === expiresAt) this.refresh().catch(() => undefined);
    }, refreshDelay(expiresAt, Date.now(), this.policy.marginMs));
  }

  private attempt(attempt: number): void {
    const retry = (cause: unknown): void => {
      if (!this.refreshSettle) return; // the client ended
      if (attempt + 1 >= this.policy.attempts) {
        const err = new FerryError(cause instanceof FerryError ? cause.code : 'token', `token refresh failed: ${String(cause)}`, { cause });
        this.link.error(err);
        this.refreshSettle(err);
        return;
      }
      this.link.later(() => this.attempt(attempt + 1), backoffDelay(attempt, this.policy.bounds));
    };
    this.tokens.fetch().then(
      (token) => Promise.resolve(this.link.connected ? this.send(token) : undefined).then(() => this.refreshSettle?.(), retry),
      (err: unknown) => (unauthorized(err) ? this.link.stop(err) : retry(err)),
    );
  }
}
