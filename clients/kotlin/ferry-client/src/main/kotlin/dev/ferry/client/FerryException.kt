package dev.ferry.client

/**
 * A failed request or connection.
 *
 * [code] is the gateway's error code (`unknown_topic`, `unavailable`, …,
 * [source] `GATEWAY`) or one the client makes up ([source] `CLIENT`):
 * - `closed`: the client was closed, or the connection closed with a terminal code;
 * - `not_connected`: the request needs an open connection;
 * - `connection_lost`: the connection dropped while the request was in flight;
 * - `timeout`: no reply in time (for a publish, the outcome is unknown);
 * - `unsupported`: the gateway did not announce the capability the request needs;
 * - `token`: the token provider failed;
 * - `protocol`: the gateway sent something this client cannot read;
 * - `storage`: the outbox could not read or write its files.
 */
public class FerryException(
    public val code: String,
    message: String,
    public val source: Source = Source.CLIENT,
    /** The request this answers, when there was one. */
    public val requestId: String? = null,
    /** With `unavailable`: how long the gateway asks to wait before retrying. */
    public val retryAfterMs: Long? = null,
    /** The WebSocket close code, when the connection ended. */
    public val closeCode: Int? = null,
    cause: Throwable? = null,
) : Exception(message, cause) {
    /** Who decided the failure. */
    public enum class Source { GATEWAY, CLIENT }

    override fun toString(): String = "FerryException($code: $message)"
}
