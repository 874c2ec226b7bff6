/**
 * Tokens: a static string, or a `getToken()` callback asked for a fresh token
 * before the current one expires.
 */

/** Returns a token, synchronously or not. */
export type GetToken = () => string | Promise<string>;

/**
 * Hands out tokens. With a callback, concurrent {@link TokenSource.fetch}
 * calls collapse into one call of the callback.
 */
export class TokenSource {
  /** The last token handed out. */
  current: string | undefined;
  /** When {@link current} expires (ms since the epoch), once the gateway said so. */
  expiresAt: number | undefined;
  private pending: Promise<string> | undefined;

  constructor(
    private readonly token: string | undefined,
    private readonly getToken: GetToken | undefined,
  ) {
    this.current = token;
  }

  /** Whether a token is configured at all. */
  get enabled(): boolean {
    return this.token !== undefined || this.getToken !== undefined;
  }

  /** Whether a new token can be fetched (only with `getToken`). */
  get refreshable(): boolean {
    return this.getToken !== undefined;
  }

  /**
   * A token for a new connection: the current one while it is not about to
   * expire (by `marginMs`), else a fresh one.
   */
  forConnect(now: number, marginMs: number): Promise<string> {
    if (this.current !== undefined && (!this.refreshable || this.expiresAt === undefined || this.expiresAt - marginMs > now)) {
      return Promise.resolve(this.current);
    }
    return this.fetch();
  }

  /** Marks the current token as expired (the gateway said so), so the next connect fetches a fresh one. */
  expire(): void {
    if (this.refreshable) this.expiresAt = 0;
  }

  /** A fresh token from `getToken()`; calls made while one is pending share it. */
  fetch(): Promise<string> {
    const getToken = this.getToken;
    if (!getToken) return Promise.resolve(this.token ?? '');
    if (!this.pending) {
      // Asynchronous from the start, so that a getToken() that throws at once
      // still clears `pending` after it was set.
      const pending = Promise.resolve()
        .then(getToken)
        .then((token) => {
          if (typeof token !== 'string' || token === '') throw new TypeError('getToken() returned no token');
          this.current = token;
          this.expiresAt = undefined;
          return token;
        });
      this.pending = pending;
      const clear = (): void => {
        if (this.pending === pending) this.pending = undefined;
      };
      pending.then(clear, clear);
    }
    return this.pending;
  }
}

/**
 * How long to wait before refreshing a token that expires at `expiresAt`:
 * `marginMs` before expiry, or at half of the remaining lifetime when that
 * is later (so a short-lived token refreshes at mid-life instead of in a
 * tight loop), and at once if it already expired.
 */
export function refreshDelay(expiresAt: number, now: number, marginMs: number): number {
  const remaining = expiresAt - now;
  if (remaining <= 0) return 0;
  return Math.max(remaining - marginMs, remaining / 2);
}
