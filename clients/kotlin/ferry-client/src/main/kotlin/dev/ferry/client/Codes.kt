package dev.ferry.client

/**
 * The two code spaces of protocol v1 (`protocol/vectors/codes.json`).
 *
 * - An error code is the `code` of an `error` frame: one request failed and
 *   the socket stays open.
 * - A close code ends the connection; [mayReconnect] says whether a client
 *   comes back.
 */
public object Codes {
    /** Every `code` of a gateway `error` frame in protocol v1. A code not listed is treated like `internal`. */
    public val ERROR_CODES: List<String> = listOf(
        "bad_request", "invalid_topic", "unknown_topic", "too_large", "unavailable", "timeout",
        "limit", "unauthorized", "forbidden", "rate_limited", "internal", "invalid_value",
    )

    /**
     * Error codes after which sending the same publish again cannot succeed:
     * the outbox gives such an event up (and counts it) instead of retrying.
     */
    public val PERMANENT_PUBLISH_ERRORS: Set<String> =
        setOf("bad_request", "invalid_topic", "unknown_topic", "too_large", "forbidden", "invalid_value")

    /**
     * The close code this client uses for a socket it gives up on itself (no
     * `welcome` or `pong` in time): 4100 `client_gave_up`, in the reconnect
     * range. The gateway never sends it.
     */
    public const val CLIENT_GAVE_UP: Int = 4100

    /** Closed by the application through [FerryClient.pause]; in the reconnect range, so nothing ends. */
    public const val CLIENT_PAUSED: Int = 4101

    /**
     * Whether a client should reconnect (with backoff) after the connection
     * closed with [code]: 1001, 1005, 1006, 1011–1014 and 4000–4499.
     * Everything else is terminal: 1000, 1002, 1003, 1007, 1008, 1009 and
     * 4500–4999 mean "do not reconnect until the client is fixed".
     */
    @JvmStatic
    public fun mayReconnect(code: Int): Boolean =
        code == 1001 || code == 1005 || code == 1006 || code in 1011..1014 || code in 4000..4499

    /**
     * Whether an upgrade refused with HTTP [status] may be tried again
     * (401 with a fresh token, 429 and 503 later); 400, 403 and 431 need the
     * client or the configuration fixed. Statuses the protocol does not name
     * (a proxy's 502, say) are retried.
     */
    @JvmStatic
    public fun mayRetryUpgrade(status: Int): Boolean = status !in setOf(400, 403, 431)
}
