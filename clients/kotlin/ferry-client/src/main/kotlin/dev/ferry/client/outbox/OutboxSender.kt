package dev.ferry.client.outbox

import dev.ferry.client.Backoff
import dev.ferry.client.Codes
import dev.ferry.client.ConnectionState
import dev.ferry.client.FerryClient
import dev.ferry.client.FerryException
import dev.ferry.client.HttpPublisher
import dev.ferry.client.PublishAck
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.withTimeoutOrNull
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.atomic.AtomicLong

/** How an [OutboxSender] sends. */
public data class OutboxSenderConfig(
    /** Events in flight at once over the WebSocket (the client also caps this by the gateway's limit). */
    val window: Int = 500,
    /** Events per `POST /v1/publish`. */
    val httpBatch: Int = 500,
    /** After the WebSocket has been down this long, events go over HTTP (0 turns the fallback off). */
    val httpFallbackAfterMs: Long = 5_000,
    /** Waits after a transient failure (`unavailable`, `rate_limited`, a lost connection) when the gateway names none. */
    val retry: Backoff = Backoff(initialDelayMs = 500, maxDelayMs = 30_000),
)

/**
 * Sends an [Outbox] through a [FerryClient]: the oldest events first, a
 * window of them in flight over the WebSocket (acks may come out of order),
 * or in gzip batches over `POST /v1/publish` while the socket is down. An
 * event leaves the outbox only when acked, or when the gateway refused it
 * for good (a code in [Codes.PERMANENT_PUBLISH_ERRORS]: counted in
 * [OutboxStats.rejected] and reported on [rejections]). Any other failure
 * keeps it for a retry with the same id.
 */
public class OutboxSender(
    private val outbox: Outbox,
    private val client: FerryClient,
    private val config: OutboxSenderConfig = OutboxSenderConfig(),
    private val http: HttpPublisher? = client.httpPublisher(),
) {
    private val inFlight = ConcurrentHashMap<Long, Job>()
    private val wake = Channel<Unit>(Channel.CONFLATED)
    private val acked = AtomicLong()
    private val _pending = MutableStateFlow(outbox.size)
    private val _rejections = MutableStateFlow<FerryException?>(null)
    private var failures = 0
    private var holdUntil = 0L
    @Volatile private var paused = false
    private var job: Job? = null

    /** Events acked since this sender started. */
    public val ackedCount: Long get() = acked.get()

    /** Events still in the outbox (updated on every ack). */
    public val pending: StateFlow<Int> = _pending.asStateFlow()

    /** The latest permanent refusal of an event, for logging. */
    public val rejections: StateFlow<FerryException?> = _rejections.asStateFlow()

    /** Called after each ack, with the event and where Kafka stored it (e.g. for progress reporting). */
    public var onAck: ((Outbox.Event, PublishAck) -> Unit)? = null

    /** Starts sending in [scope]; returns the sending job. */
    public fun start(scope: CoroutineScope): Job {
        check(job == null) { "already started" }
        return scope.launch(Dispatchers.Default) { run(this) }.also { job = it }
    }

    /** Call after appending to the outbox: sends at once instead of at the next poll. */
    public fun poke() {
        wake.trySend(Unit)
    }

    /** Network-aware hook: stops sending (the client's socket and the HTTP fallback) until [resume]. */
    public suspend fun pause() {
        paused = true
        client.pause()
    }

    /** The network is back: reconnect and send at once. */
    public suspend fun resume() {
        paused = false
        holdUntil = 0
        failures = 0
        client.resume()
        poke()
    }

    /** Waits until the outbox is empty. */
    public suspend fun awaitEmpty() {
        pending.first { it == 0 }
    }

    private suspend fun run(scope: CoroutineScope) {
        var downSince = 0L
        while (true) {
            val now = System.currentTimeMillis()
            val open = client.state.value == ConnectionState.OPEN
            downSince = if (open) 0L else if (downSince == 0L) now else downSince
            val useHttp = !open && http != null && config.httpFallbackAfterMs > 0 && now - downSince >= config.httpFallbackAfterMs
            if (paused || now < holdUntil) {
                waitFor(if (paused) 1_000 else holdUntil - now)
                continue
            }
            if (useHttp) {
                // The socket is down: take back what waits in the client's queue, send it over HTTP.
                for ((_, j) in inFlight) j.cancel()
                val batch = outbox.peek(config.httpBatch)
                if (batch.isEmpty()) { waitFor(1_000); continue }
                sendHttp(batch)
                continue
            }
            val room = config.window - inFlight.size
            val batch = if (room > 0) outbox.peek(room, inFlight.keys) else emptyList()
            for (event in batch) {
                inFlight[event.seq] = scope.launch { sendWs(event) }
            }
            waitFor(if (open) 1_000 else 250)
        }
    }

    private suspend fun waitFor(ms: Long) {
        withTimeoutOrNull(ms.coerceAtLeast(1)) { wake.receive() }
    }

    private suspend fun sendWs(event: Outbox.Event) {
        try {
            val ack = client.publish(event.topic, event.value, event.publishOptions())
            done(event, ack)
        } catch (e: CancellationException) {
            throw e
        } catch (e: FerryException) {
            failed(event, e)
        } finally {
            inFlight.remove(event.seq)
            wake.trySend(Unit)
        }
    }

    private suspend fun sendHttp(batch: List<Outbox.Event>) {
        val records = batch.map { HttpPublisher.Record(it.id, it.topic, it.value, it.publishOptions()) }
        val results = try {
            withTimeoutOrNull(60_000) { http!!.publish(records) } ?: throw FerryException("timeout", "POST /v1/publish took too long")
        } catch (e: FerryException) {
            hold(e)
            return
        }
        var transient: FerryException? = null
        for ((event, result) in batch.zip(results)) {
            if (result.ack != null) done(event, result.ack) else {
                val e = result.error!!
                if (e.code in Codes.PERMANENT_PUBLISH_ERRORS) failed(event, e) else transient = e
            }
        }
        transient?.let { hold(it) }
    }

    private fun done(event: Outbox.Event, ack: PublishAck) {
        outbox.ack(event.seq)
        acked.incrementAndGet()
        failures = 0
        _pending.value = outbox.size
        onAck?.invoke(event, ack)
    }

    private fun failed(event: Outbox.Event, e: FerryException) {
        if (e.code in Codes.PERMANENT_PUBLISH_ERRORS && e.source == FerryException.Source.GATEWAY) {
            outbox.reject(event.seq)
            _pending.value = outbox.size
            _rejections.value = e
        } else {
            hold(e)
        }
    }

    /** A transient failure: wait before sending more (the event stays in the outbox). */
    private fun hold(e: FerryException) {
        val wait = e.retryAfterMs ?: config.retry.delayMs(failures++)
        holdUntil = maxOf(holdUntil, System.currentTimeMillis() + wait)
    }
}
