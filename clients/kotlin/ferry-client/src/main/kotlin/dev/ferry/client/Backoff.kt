package dev.ferry.client

import kotlin.math.min
import kotlin.math.pow
import kotlin.random.Random

/**
 * Exponential backoff with "full jitter": the delay before retry number
 * `attempt` (0-based) is uniform in `[0, min(maxDelayMs, initialDelayMs * multiplier^attempt))`.
 * Spreading retries over the whole window keeps a crowd of devices that lost
 * the same gateway from coming back in lockstep.
 */
public data class Backoff(
    /** Upper bound of the first delay. */
    val initialDelayMs: Long = 250,
    /** Upper bound of any delay. */
    val maxDelayMs: Long = 30_000,
    /** Growth of the upper bound per attempt. */
    val multiplier: Double = 2.0,
) {
    init {
        require(initialDelayMs > 0 && maxDelayMs >= initialDelayMs && multiplier >= 1.0) { "bad backoff bounds: $this" }
    }

    /** The window's upper bound for [attempt]. */
    public fun cap(attempt: Int): Long {
        val grown = initialDelayMs * multiplier.pow(attempt.coerceAtLeast(0).coerceAtMost(62))
        return min(maxDelayMs.toDouble(), grown).toLong()
    }

    /** The delay before retry number [attempt]. */
    public fun delayMs(attempt: Int, random: Random = Random.Default): Long {
        val cap = cap(attempt)
        return if (cap <= 0) 0 else random.nextLong(cap)
    }
}
