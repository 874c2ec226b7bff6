/** Bounds of an exponential backoff. */
export interface BackoffOptions {
  /** Upper bound of the first delay, in ms. Default 250. */
  initialDelayMs?: number;
  /** Upper bound of any delay, in ms. Default 30 000. */
  maxDelayMs?: number;
  /** Growth of the upper bound per attempt. Default 2. */
  multiplier?: number;
}

/** {@link BackoffOptions} with every default filled in. */
export type BackoffBounds = Required<BackoffOptions>;

/** Fills in the defaults of {@link BackoffOptions}. */
export function backoffBounds(options: BackoffOptions = {}, defaults?: BackoffOptions): BackoffBounds {
  return {
    initialDelayMs: options.initialDelayMs ?? defaults?.initialDelayMs ?? 250,
    maxDelayMs: options.maxDelayMs ?? defaults?.maxDelayMs ?? 30_000,
    multiplier: options.multiplier ?? defaults?.multiplier ?? 2,
  };
}

/**
 * The delay before retry number `attempt` (0-based), with "full jitter":
 * a uniform random value in `[0, min(maxDelayMs, initialDelayMs * multiplier^attempt))`.
 * Spreading retries over the whole window keeps a crowd of clients that lost
 * the same gateway from coming back in lockstep.
 */
export function backoffDelay(attempt: number, bounds: BackoffBounds, random: () => number = Math.random): number {
  const cap = Math.min(bounds.maxDelayMs, bounds.initialDelayMs * bounds.multiplier ** Math.max(0, attempt));
  return Math.floor(random() * cap);
}
