package dev.ferry.client

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.ExperimentalCoroutinesApi
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.channels.BufferOverflow
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asSharedFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeoutOrNull
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.Response
import okhttp3.WebSocket
import okhttp3.WebSocketListener
import java.security.SecureRandom
import java.util.concurrent.TimeUnit

/**
 * One WebSocket to a Ferry gateway, kept alive.
 *
 * Life of a connection: open the socket (offering `ferry.v1`, with the token
 * as `Authorization: Bearer`), wait for `welcome` (and check its protocol
 * version), resubscribe every subscription from its resume point, and send
 * the queued publishes. When the socket drops with a code in the reconnect
 * range (or does not answer pings), the client waits a backoff delay with
 * full jitter and starts over, at once after [resume]. On a terminal code it
 * closes for good.
 *
 * All state lives on one serial dispatcher, so nothing here takes a lock
 * across a suspension; OkHttp's reader thread hands each frame over and
 * waits, which turns a slow collector into TCP backpressure.
 *
 * ```kotlin
 * val client = FerryClient(FerryClientOptions(url = "wss://hub.example.com/ws", tokenProvider = { fetchJwt() }))
 * client.connect()
 * val ack = client.publish("telemetry", PublishValue.json("""{"temp":21.5}"""))
 * client.subscribe("commands").messages.collect { println(it.text) }
 * ```
 */
@OptIn(ExperimentalCoroutinesApi::class)
public class FerryClient(public val options: FerryClientOptions) {
    private val serial = Dispatchers.Default.limitedParallelism(1)
    private val scope = CoroutineScope(SupervisorJob() + serial)
    private val http: OkHttpClient = (options.okHttpClient ?: OkHttpClient()).newBuilder()
        .pingInterval(options.pingIntervalMs, TimeUnit.MILLISECONDS)
        .readTimeout(0, TimeUnit.MILLISECONDS)
        .build()

    private val _state = MutableStateFlow(ConnectionState.CLOSED)
    private val _events = MutableSharedFlow<ClientEvent>(extraBufferCapacity = 256, onBufferOverflow = BufferOverflow.DROP_OLDEST)

    /** The connection state. */
    public val state: StateFlow<ConnectionState> = _state.asStateFlow()

    /** What happens to the connection (never blocks the client: a slow collector loses the oldest events). */
    public val events: SharedFlow<ClientEvent> = _events.asSharedFlow()

    /** The current connection's `welcome`, while open. */
    @Volatile
    public var welcome: ServerFrame.Welcome? = null
        private set

    // ---- state below is touched only on `serial`
    private var ws: WebSocket? = null
    private var generation = 0
    private var connected = false
    private var capabilities: Set<String> = emptySet()
    private var attempt = 0
    private var openedAt = 0L
    private var paused = false
    private var ended: FerryException? = null
    private var retryJob: Job? = null
    private var refreshJob: Job? = null
    private var token: String? = options.token
    private var tokenStale = false
    private val requests = HashMap<String, CompletableDeferred<ServerFrame>>()
    private val subscriptions = LinkedHashMap<String, Subscription>()
    private val publishes = LinkedHashMap<String, PendingPublish>()
    private var inflight = 0
    private var bucket = TokenBucket(0.0, 0.0)
    private var drainScheduled = false

    private val idPrefix = ByteArray(6).also { SecureRandom().nextBytes(it) }.joinToString("") { "%02x".format(it) }
    private var idCounter = 0L

    private class PendingPublish(val id: String, val topic: String, val frame: String, val done: CompletableDeferred<PublishAck>) {
        var sent = false
    }

    /** The current connection's capabilities (empty while not open). */
    public suspend fun capabilities(): Set<String> = withContext(serial) { capabilities }

    /** A fresh request id, unique to this client instance. */
    public fun nextId(): String = synchronized(this) { "$idPrefix-${(++idCounter).toString(36)}" }

    /**
     * Starts connecting (nothing happens unless `CLOSED`) and waits until the
     * connection is open. Throws if the client ends before that (a terminal
     * close, a refused token); cancelling the wait leaves the client connecting.
     */
    public suspend fun connect() {
        withContext(serial) {
            if (_state.value == ConnectionState.CLOSED) {
                ended = null
                attempt = 0
                paused = false
                setState(ConnectionState.CONNECTING)
                openSocket()
            }
        }
        awaitOpen()
    }

    /** Waits until the connection is open; throws if the client closes first. */
    public suspend fun awaitOpen() {
        val s = state.first { it == ConnectionState.OPEN || it == ConnectionState.CLOSED }
        if (s == ConnectionState.CLOSED) throw withContext(serial) { ended } ?: FerryException("closed", "the client is closed")
    }

    /**
     * Closes the connection and stops reconnecting: every publish not yet
     * acked fails with `closed`, every subscription's flow fails with
     * `closed`. [connect] may be called again afterwards.
     */
    public suspend fun close() {
        withContext(serial) {
            val socket = ws
            detach()
            socket?.close(1000, "")
            finish(FerryException("closed", "the client was closed"), report = false)
        }
    }

    /**
     * Network-aware hook: the device lost its network (or the app wants
     * silence). Closes the socket and does not reconnect until [resume];
     * publishes wait in the queue, subscriptions keep their positions.
     */
    public suspend fun pause(): Unit = withContext(serial) {
        if (ended != null || paused) return@withContext
        paused = true
        retryJob?.cancel()
        val socket = ws
        val wasOpen = connected
        detach()
        socket?.close(1000, "paused")
        setState(ConnectionState.PAUSED)
        if (wasOpen) _events.tryEmit(ClientEvent.Disconnected(1000, "paused", willReconnect = true))
    }

    /** The network is back: connect now (also cuts a running backoff delay short). */
    public suspend fun resume(): Unit = withContext(serial) {
        if (ended != null) return@withContext
        val wasPaused = paused
        paused = false
        if (wasPaused || _state.value == ConnectionState.RECONNECTING) {
            retryJob?.cancel()
            attempt = 0
            if (ws == null) {
                setState(ConnectionState.RECONNECTING)
                openSocket()
            }
        }
    }

    /**
     * Publishes one record and waits until Kafka stored it. While not
     * connected it waits in the queue and is sent on reconnect with the same
     * id (a publish in flight when the connection dropped is sent again, so
     * it may be stored twice, with the same `ferry-id`). Throws a
     * [FerryException] with the gateway's code (`unknown_topic`,
     * `unavailable`, …) or the client's (`queue_full`, `closed`, `timeout`, …).
     */
    public suspend fun publish(topic: String, value: PublishValue, options: PublishOptions = PublishOptions()): PublishAck {
        val id = options.id ?: nextId()
        val frame = ClientFrames.publish(id, topic, value, options)
        val done = CompletableDeferred<PublishAck>()
        withContext(serial) {
            ended?.let { throw FerryException("closed", "the client is closed", requestId = id) }
            val existing = publishes[id]
            if (existing != null) {
                // The same id while the first is in flight: one answer for both, as on the gateway.
                existing.done.invokeOnCompletion { e -> if (e != null) done.completeExceptionally(e) else done.complete(existing.done.getCompleted()) }
                return@withContext
            }
            if (publishes.size >= this@FerryClient.options.maxQueuedPublishes) {
                throw FerryException("queue_full", "${publishes.size} publishes already wait", requestId = id)
            }
            publishes[id] = PendingPublish(id, topic, frame, done)
            drain()
        }
        val ack = try {
            withTimeoutOrNull(this.options.publishTimeoutMs) { done.await() }
        } catch (e: CancellationException) {
            // The caller gave up: the publish leaves the queue (it may still be in flight).
            withContext(NonCancellable + serial) { forgetPublish(id) }
            throw e
        }
        if (ack == null) {
            withContext(serial) { forgetPublish(id) }
            throw FerryException("timeout", "no ack within ${this.options.publishTimeoutMs} ms: the record may or may not be stored", requestId = id)
        }
        return ack
    }

    /**
     * Subscribes to [topic]. Collect [Subscription.messages] to get the
     * records. One subscription per topic per client.
     *
     * @throws FerryException `invalid_topic`, or `bad_request` when the topic is already subscribed.
     */
    public suspend fun subscribe(topic: String, options: SubscribeOptions = SubscribeOptions()): Subscription {
        ClientFrames.subscribe("check", topic, options) // validates before anything changes
        return withContext(serial) {
            ended?.let { throw it }
            if (subscriptions.containsKey(topic)) throw FerryException("bad_request", "already subscribed to \"$topic\": unsubscribe first")
            val sub = Subscription(topic, options) { release(it) }
            subscriptions[topic] = sub
            if (connected) sendSubscribe(sub)
            sub
        }
    }

    /**
     * Marks a record of an `ack = CLIENT` group subscription processed and
     * waits for `committed`.
     */
    public suspend fun commit(message: FerryMessage) {
        val reply = request { id ->
            if (!capabilities.contains("commit")) throw FerryException("unsupported", "the gateway does not announce \"commit\"")
            ClientFrames.commit(id, message.topic, message.partition, message.offset)
        }
        if (reply !is ServerFrame.Committed) throw FerryException("protocol", "unexpected reply to commit: ${reply.raw}")
    }

    /** An application-level round trip; returns it in ms. */
    public suspend fun ping(): Long {
        val started = System.nanoTime()
        request { id -> ClientFrames.ping(id) }
        return (System.nanoTime() - started) / 1_000_000
    }

    /** Fetches a fresh token from the provider and presents it on the open connection (`auth` → `authed`). */
    public suspend fun refreshToken() {
        val provider = options.tokenProvider ?: throw FerryException("token", "no token provider configured")
        val fresh = fetchToken(provider)
        withContext(serial) { token = fresh; tokenStale = false }
        val reply = request { id ->
            if (!capabilities.contains("auth")) throw FerryException("unsupported", "the gateway does not announce \"auth\"")
            ClientFrames.auth(id, fresh)
        }
        if (reply is ServerFrame.Authed) reply.expiresAt?.let { withContext(serial) { scheduleRefresh(it) } }
    }

    /** The `POST /v1/publish` endpoint next to this client's WebSocket URL, using the same token. */
    public fun httpPublisher(): HttpPublisher = HttpPublisher(HttpPublisher.urlFor(options.url), http) { currentToken() }

    internal suspend fun currentToken(): String? {
        val cached = withContext(serial) { token.takeUnless { tokenStale } }
        if (cached != null || options.tokenProvider == null) return cached
        val fresh = fetchToken(options.tokenProvider)
        withContext(serial) { token = fresh; tokenStale = false }
        return fresh
    }

    // ------------------------------------------------------------------ connection

    private suspend fun fetchToken(provider: TokenProvider): String = try {
        provider.token()
    } catch (e: FerryException) {
        throw e
    } catch (e: Exception) {
        throw FerryException("token", "the token provider failed: $e", cause = e)
    }

    /** Opens the next socket (on `serial`). */
    private fun openSocket() {
        val gen = ++generation
        scope.launch {
            val provider = options.tokenProvider
            if (provider != null && (token == null || tokenStale)) {
                try {
                    val fresh = fetchToken(provider)
                    token = fresh
                    tokenStale = false
                } catch (e: FerryException) {
                    if (gen != generation) return@launch
                    if (e.code == "unauthorized") return@launch finish(e, report = true)
                    _events.tryEmit(ClientEvent.Error(e))
                    return@launch lost(gen, Codes.CLIENT_GAVE_UP, "no token")
                }
            }
            if (gen != generation || ended != null || paused) return@launch
            val request = Request.Builder().url(options.url).header("Sec-WebSocket-Protocol", SUBPROTOCOL)
            token?.let { request.header("Authorization", "Bearer $it") }
            ws = http.newWebSocket(request.build(), Listener(gen))
            launch {
                delay(options.connectTimeoutMs)
                if (gen == generation && !connected) drop(gen, "no welcome in time")
            }
        }
    }

    private inner class Listener(private val gen: Int) : WebSocketListener() {
        /** The gateway's close code, once its close frame arrived. */
        @Volatile private var closeCode: Int? = null

        override fun onMessage(webSocket: WebSocket, text: String) {
            val frame = try {
                ServerFrame.decode(text)
            } catch (e: FerryException) {
                _events.tryEmit(ClientEvent.Error(e))
                return
            }
            // Waits for the frame to be handled: a full subscription buffer stops the reading.
            runBlocking(serial) { if (gen == generation) onFrame(gen, frame) }
        }

        override fun onClosing(webSocket: WebSocket, code: Int, reason: String) {
            closeCode = code
            webSocket.close(code, null)
            scope.launch { lost(gen, code, reason) }
        }

        override fun onClosed(webSocket: WebSocket, code: Int, reason: String) {
            scope.launch { lost(gen, code, reason) }
        }

        override fun onFailure(webSocket: WebSocket, t: Throwable, response: Response?) {
            val status = response?.code
            scope.launch {
                if (gen != generation) return@launch
                if (status != null && status != 101) {
                    val body = try { response.body.string().trim() } catch (_: Exception) { "" }
                    if (status == 401) tokenStale = true
                    if (!Codes.mayRetryUpgrade(status) || (status == 401 && options.tokenProvider == null)) {
                        detach()
                        return@launch finish(FerryException("closed", "the gateway refused the upgrade: HTTP $status $body"), report = true)
                    }
                    _events.tryEmit(ClientEvent.Error(FerryException("connection_lost", "upgrade refused: HTTP $status $body")))
                }
                // The connection may fail after the gateway's close frame
                // (say, the gateway exited before our echo reached it): the
                // gateway's code still says what happened.
                val code = closeCode ?: 1006
                lost(gen, code, if (code == 1006) t.message ?: "connection failed" else "closed by the gateway")
            }
        }
    }

    private suspend fun onFrame(gen: Int, frame: ServerFrame) {
        when (frame) {
            is ServerFrame.Message -> subscriptions[frame.message.topic]?.let {
                try {
                    it.deliver(frame.message)
                } catch (_: Exception) {
                    // the subscription ended while waiting for its collector
                }
            }
            is ServerFrame.Ack -> onAck(frame)
            is ServerFrame.Welcome -> onWelcome(gen, frame)
            is ServerFrame.Authed -> {
                frame.expiresAt?.let { scheduleRefresh(it) }
                frame.id?.let { requests.remove(it)?.complete(frame) }
            }
            is ServerFrame.Error -> onError(frame)
            is ServerFrame.Gap -> {
                val sub = subscriptions[frame.topic]
                val p = frame.partition
                val at = frame.resumedAt
                if (sub != null && p != null && at != null) sub.skipTo(p, at)
                _events.tryEmit(ClientEvent.Gap(frame))
            }
            is ServerFrame.Lagged -> _events.tryEmit(ClientEvent.Lagged(frame))
            is ServerFrame.SnapshotEnd -> subscriptions[frame.topic]?.let {
                try {
                    it.endSnapshot(frame.positions)
                } catch (_: Exception) {
                    // the subscription ended while waiting for its collector
                }
            }
            is ServerFrame.Unsubscribed -> {
                val id = frame.id
                if (id == null) {
                    subscriptions.remove(frame.topic)?.let {
                        val reason = frame.reason ?: "closed"
                        it.end(FerryException(reason, "the gateway ended the subscription to \"${frame.topic}\" ($reason)", FerryException.Source.GATEWAY))
                    }
                } else requests.remove(id)?.complete(frame)
            }
            else -> frame.id?.let { requests.remove(it)?.complete(frame) }
        }
    }

    private fun onWelcome(gen: Int, frame: ServerFrame.Welcome) {
        frame.expiresAt?.let { scheduleRefresh(it) }
        if (connected) return // a later welcome answers an in-band auth
        if (frame.protocol != PROTOCOL_VERSION) {
            val socket = ws
            detach()
            socket?.close(1000, "")
            return finish(FerryException("protocol", "the gateway speaks protocol ${frame.protocol}; this client speaks $PROTOCOL_VERSION"), report = true)
        }
        welcome = frame
        capabilities = frame.capabilities
        connected = true
        openedAt = System.currentTimeMillis()
        val limits = frame.limits
        val rate = (limits.publishRate ?: 0).toDouble()
        bucket = TokenBucket(rate, (limits.publishBurst ?: limits.publishRate ?: 0).toDouble())
        for (sub in subscriptions.values.toList()) sendSubscribe(sub)
        for (p in publishes.values) p.sent = false
        inflight = 0
        setState(ConnectionState.OPEN)
        _events.tryEmit(ClientEvent.Connected(frame))
        drain()
    }

    private fun onAck(frame: ServerFrame.Ack) {
        val id = frame.id ?: return
        val p = publishes.remove(id) ?: return
        if (p.sent) inflight--
        p.done.complete(PublishAck(id, frame.topic, frame.partition, frame.offset))
        drain()
    }

    private fun onError(frame: ServerFrame.Error) {
        val id = frame.id
        val p = id?.let { publishes.remove(it) }
        if (p != null) {
            if (p.sent) inflight--
            p.done.completeExceptionally(frame.toException())
            drain()
            return
        }
        val waiting = id?.let { requests.remove(it) }
        if (waiting != null) waiting.complete(frame) else _events.tryEmit(ClientEvent.Error(frame.toException()))
    }

    /** The socket of generation [gen] is gone. */
    private fun lost(gen: Int, code: Int, reason: String) {
        if (gen != generation) return
        val wasOpen = connected
        detach()
        if (ended != null || paused) return
        if (code == 4002) tokenStale = true
        if (wasOpen && System.currentTimeMillis() - openedAt >= STABLE_MS) attempt = 0
        val again = options.reconnectEnabled && Codes.mayReconnect(code) && attempt < options.maxReconnectAttempts
        _events.tryEmit(ClientEvent.Disconnected(code, reason, again))
        if (again) {
            setState(ConnectionState.RECONNECTING)
            val wait = options.reconnect.delayMs(attempt++)
            retryJob = scope.launch {
                delay(wait)
                if (ws == null && ended == null && !paused) openSocket()
            }
            return
        }
        val why = "connection closed ($code${if (reason.isNotEmpty()) " $reason" else ""})"
        val err = if (Codes.mayReconnect(code)) FerryException("connection_lost", "$why; gave up reconnecting", closeCode = code)
        else FerryException("closed", why, closeCode = code)
        finish(err, report = true)
    }

    /** Gives up on a socket that seems dead: close it with 4100 and carry on as after a network loss. */
    private fun drop(gen: Int, reason: String) {
        if (gen != generation) return
        ws?.cancel()
        lost(gen, Codes.CLIENT_GAVE_UP, reason)
    }

    /** Forgets the current socket; in-flight requests fail, in-flight publishes go back to the queue. */
    private fun detach() {
        generation++
        ws = null
        connected = false
        welcome = null
        capabilities = emptySet()
        refreshJob?.cancel()
        val lostErr = FerryException("connection_lost", "the connection was lost before the reply")
        for (r in requests.values) r.completeExceptionally(lostErr)
        requests.clear()
        for (sub in subscriptions.values) sub.requestId = null
        for (p in publishes.values) p.sent = false
        inflight = 0
    }

    /** Ends for good: state `CLOSED`, everything pending fails with [err]. */
    private fun finish(err: FerryException, report: Boolean) {
        if (ended != null) return
        ended = err
        retryJob?.cancel()
        refreshJob?.cancel()
        for (p in publishes.values) p.done.completeExceptionally(FerryException(err.code, err.message ?: "", requestId = p.id, closeCode = err.closeCode))
        publishes.clear()
        for (sub in subscriptions.values) sub.end(err)
        subscriptions.clear()
        setState(ConnectionState.CLOSED)
        if (report) _events.tryEmit(ClientEvent.Error(err))
    }

    private fun scheduleRefresh(expiresAt: Long) {
        if (options.tokenProvider == null) return
        refreshJob?.cancel()
        val wait = (expiresAt - options.refreshMarginMs - System.currentTimeMillis()).coerceAtLeast(0)
        refreshJob = scope.launch {
            delay(wait)
            var tries = 0
            while (true) {
                try {
                    refreshToken()
                    return@launch
                } catch (e: FerryException) {
                    if (e.code == "unauthorized" && e.source == FerryException.Source.CLIENT) return@launch finish(e, report = true)
                    if (++tries >= 5 || !connected) {
                        _events.tryEmit(ClientEvent.Error(FerryException("token", "token refresh failed: ${e.message}", cause = e)))
                        tokenStale = true
                        return@launch
                    }
                    delay(Backoff(1_000).delayMs(tries))
                }
            }
        }
    }

    // ------------------------------------------------------------------ requests

    private fun setState(s: ConnectionState) {
        _state.value = s
    }

    /** Sends the publishes that fit the in-flight window and the gateway's rate. */
    private fun drain() {
        val socket = ws ?: return
        if (!connected) return
        val window = minOf(options.maxInflightPublishes, welcome?.limits?.maxInflightPublishes ?: Int.MAX_VALUE)
        for (p in publishes.values) {
            if (inflight >= window) return
            if (p.sent) continue
            val wait = bucket.take(System.nanoTime())
            if (wait > 0) {
                if (!drainScheduled) {
                    drainScheduled = true
                    scope.launch { delay(wait); drainScheduled = false; drain() }
                }
                return
            }
            p.sent = true
            inflight++
            socket.send(p.frame)
        }
    }

    private fun forgetPublish(id: String) {
        val p = publishes.remove(id) ?: return
        if (p.sent) inflight--
        drain()
    }

    private fun sendSubscribe(sub: Subscription) {
        val socket = ws ?: return
        val missing = sub.options.needs().filterNot { it in capabilities }
        if (missing.isNotEmpty()) {
            subscriptions.remove(sub.topic)
            sub.end(FerryException("unsupported", "the gateway does not announce ${missing.joinToString()}, which the subscription to \"${sub.topic}\" needs"))
            return
        }
        val resumeFrom = sub.resumeFrom()
        val wire = if (resumeFrom != null && "from" in capabilities) sub.options.copy(from = resumeFrom) else sub.options
        val id = nextId()
        sub.requestId = id
        val reply = CompletableDeferred<ServerFrame>()
        requests[id] = reply
        socket.send(ClientFrames.subscribe(id, sub.topic, wire))
        val gen = generation
        scope.launch {
            val outcome = withTimeoutOrNull(options.requestTimeoutMs) { runCatching { reply.await() } }
            if (gen != generation || sub.requestId != id || subscriptions[sub.topic] !== sub) return@launch
            sub.requestId = null
            when {
                outcome == null -> {
                    requests.remove(id)
                    drop(gen, "no reply to subscribe \"${sub.topic}\"")
                }
                outcome.isFailure -> Unit // connection lost: subscribed again on the next one
                else -> when (val frame = outcome.getOrThrow()) {
                    is ServerFrame.Subscribed -> sub.confirm(frame.partitions)
                    is ServerFrame.Error -> {
                        val err = frame.toException()
                        if (err.code in TRANSIENT) {
                            delay(err.retryAfterMs ?: 1_000)
                            if (gen == generation && subscriptions[sub.topic] === sub && sub.requestId == null) sendSubscribe(sub)
                        } else {
                            subscriptions.remove(sub.topic)
                            sub.end(err)
                        }
                    }
                    else -> Unit
                }
            }
        }
    }

    private suspend fun release(sub: Subscription) {
        val send = withContext(serial) {
            if (subscriptions[sub.topic] !== sub) return@withContext false
            subscriptions.remove(sub.topic)
            sub.end(null)
            connected
        }
        if (send) runCatching { request { id -> ClientFrames.unsubscribe(id, sub.topic) } }
    }

    /** Sends a request built by [build] and waits for its reply; an `error` reply throws. */
    private suspend fun request(build: (String) -> String): ServerFrame {
        val id = nextId()
        val reply = CompletableDeferred<ServerFrame>()
        withContext(serial) {
            val socket = ws
            if (!connected || socket == null) throw FerryException("not_connected", "not connected", requestId = id)
            val text = build(id)
            requests[id] = reply
            socket.send(text)
        }
        val frame = withTimeoutOrNull(options.requestTimeoutMs) { reply.await() }
            ?: run {
                withContext(serial) { requests.remove(id) }
                throw FerryException("timeout", "no reply within ${options.requestTimeoutMs} ms", requestId = id)
            }
        if (frame is ServerFrame.Error) throw frame.toException()
        return frame
    }

    private companion object {
        /** A connection that stayed open this long resets the backoff. */
        const val STABLE_MS = 5_000L

        /** Gateway error codes after which a subscribe is tried again on the same connection. */
        val TRANSIENT = setOf("unavailable", "timeout", "rate_limited", "limit")
    }
}

/** The gateway's publish rate limit, kept on the client side so the gateway never has to refuse. */
internal class TokenBucket(private val ratePerSec: Double, private val burst: Double) {
    private var tokens = burst
    private var last = System.nanoTime()

    /** Takes one token; returns 0, or how many ms to wait before one is there. */
    fun take(now: Long): Long {
        if (ratePerSec <= 0) return 0
        tokens = minOf(burst, tokens + (now - last).coerceAtLeast(0) / 1e9 * ratePerSec)
        last = now
        if (tokens >= 1) {
            tokens -= 1
            return 0
        }
        return ((1 - tokens) / ratePerSec * 1000).toLong().coerceAtLeast(1)
    }
}
