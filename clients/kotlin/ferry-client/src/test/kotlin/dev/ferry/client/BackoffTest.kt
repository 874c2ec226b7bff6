package dev.ferry.client

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import kotlin.random.Random

class BackoffTest {
    @Test
    fun `the window doubles from the initial delay up to the cap`() {
        val b = Backoff(initialDelayMs = 250, maxDelayMs = 30_000)
        assertEquals(listOf(250L, 500L, 1_000L, 2_000L, 4_000L, 8_000L, 16_000L, 30_000L, 30_000L), (0..8).map { b.cap(it) })
        assertEquals(30_000L, b.cap(10_000), "no overflow on huge attempt numbers")
        assertEquals(250L, b.cap(-3))
    }

    @Test
    fun `delays are full jitter over the window`() {
        val b = Backoff(initialDelayMs = 1_000, maxDelayMs = 8_000)
        val random = Random(42)
        for (attempt in 0..6) {
            val delays = (1..2_000).map { b.delayMs(attempt, random) }
            val cap = b.cap(attempt)
            assertTrue(delays.all { it in 0 until cap }, "attempt $attempt within [0, $cap)")
            // Spread over the whole window, not bunched at the top.
            assertTrue(delays.min() < cap / 10 && delays.max() > cap * 9 / 10, "attempt $attempt spread: ${delays.min()}..${delays.max()}")
            assertTrue(delays.average() in cap * 0.4..cap * 0.6, "attempt $attempt mean ${delays.average()}")
        }
    }

    @Test
    fun `bad bounds are refused`() {
        assertThrows<IllegalArgumentException> { Backoff(initialDelayMs = 0) }
        assertThrows<IllegalArgumentException> { Backoff(initialDelayMs = 10, maxDelayMs = 5) }
        assertThrows<IllegalArgumentException> { Backoff(multiplier = 0.5) }
    }

    @Test
    fun `the token bucket paces at the gateway's rate after the burst`() {
        val bucket = TokenBucket(ratePerSec = 1_000.0, burst = 10.0)
        var now = System.nanoTime()
        repeat(10) { assertEquals(0L, bucket.take(now)) }
        val wait = bucket.take(now)
        assertTrue(wait in 1..2, "wait $wait ms for the next token")
        now += 5_000_000 // 5 ms: 5 tokens
        repeat(5) { assertEquals(0L, bucket.take(now)) }
        assertTrue(bucket.take(now) > 0)
        assertEquals(0L, TokenBucket(0.0, 0.0).take(now), "no rate announced: no pacing")
    }
}
