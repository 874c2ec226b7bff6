package dev.ferry.client

import okhttp3.OkHttpClient

/** Supplies a JWT for the gateway; called on connect when no valid token is cached, and before it expires. */
public fun interface TokenProvider {
    /** A fresh token. Throw `FerryException("unauthorized", …)` to say the user has no credentials: the client then ends. */
    public suspend fun token(): String
}

/** Settings of a [FerryClient]. Every field has a sane default but [url]. */
public data class FerryClientOptions(
    /** `ws://HOST:PORT/ws` or `wss://…`. */
    val url: String,
    /** A static token (sent as `Authorization: Bearer`); for tokens that expire use [tokenProvider]. */
    val token: String? = null,
    /** Fetches tokens: on connect, after the gateway refused or expired one, and [refreshMarginMs] before `expires_at`. */
    val tokenProvider: TokenProvider? = null,
    /** The OkHttp client to build on (share one per app on Android); its ping interval is set to [pingIntervalMs]. */
    val okHttpClient: OkHttpClient? = null,
    /** Delays between reconnect attempts. */
    val reconnect: Backoff = Backoff(),
    /** Whether to reconnect after a close in the reconnect range. */
    val reconnectEnabled: Boolean = true,
    /** Reconnect attempts in a row before giving up (`connection_lost`). */
    val maxReconnectAttempts: Int = Int.MAX_VALUE,
    /** A socket without `welcome` after this long is given up (4100) and retried. */
    val connectTimeoutMs: Long = 10_000,
    /** How long subscribe, unsubscribe, ping, commit and auth wait for their reply. */
    val requestTimeoutMs: Long = 10_000,
    /** How long a publish may wait, queued and in flight, before it fails with `timeout`. */
    val publishTimeoutMs: Long = 60_000,
    /** WebSocket ping interval; a socket that does not answer in time is treated as lost. 0 turns it off. */
    val pingIntervalMs: Long = 20_000,
    /** How long before `expires_at` the token is refreshed in-band. */
    val refreshMarginMs: Long = 30_000,
    /** Publishes awaiting their ack at once (also capped by `welcome.limits.max_inflight_publishes`). */
    val maxInflightPublishes: Int = 1_000,
    /** Publishes held while offline or beyond the in-flight window; past it a publish fails with `queue_full`. */
    val maxQueuedPublishes: Int = 10_000,
)

/** Where a [FerryClient] is in its life. */
public enum class ConnectionState { CLOSED, CONNECTING, OPEN, RECONNECTING, PAUSED }

/** Something that happened to the connection, for logging and UI. */
public sealed class ClientEvent {
    /** A connection opened; [welcome] tells its session, node, limits and capabilities. */
    public data class Connected(val welcome: ServerFrame.Welcome) : ClientEvent()

    /** The connection closed with [code]; [willReconnect] says whether the client comes back on its own. */
    public data class Disconnected(val code: Int, val reason: String, val willReconnect: Boolean) : ClientEvent()

    /** A failure nobody awaits (a refused subscription without collector, a token provider that failed, …). */
    public data class Error(val error: FerryException) : ClientEvent()

    /** A subscription's requested offset was not in Kafka; delivery went on at [ServerFrame.Gap.resumedAt]. */
    public data class Gap(val frame: ServerFrame.Gap) : ClientEvent()

    /** A `drop_oldest`/`conflate` subscription dropped records. */
    public data class Lagged(val frame: ServerFrame.Lagged) : ClientEvent()
}

/** Where Kafka stored a published record. */
public data class PublishAck(val id: String, val topic: String, val partition: Int, val offset: Long)
