package dev.ferry.client

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonObject
import okhttp3.MediaType.Companion.toMediaType
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.RequestBody.Companion.toRequestBody
import java.io.ByteArrayOutputStream
import java.util.zip.GZIPOutputStream

/**
 * `POST /v1/publish`: a batch of records over plain HTTP, gzip-compressed,
 * for when the WebSocket is unavailable (a network that blocks upgrades, a
 * device that wakes up only to flush its outbox).
 */
public class HttpPublisher(
    /** `http(s)://HOST:PORT/v1/publish`. */
    public val url: String,
    private val http: OkHttpClient = OkHttpClient(),
    private val token: suspend () -> String? = { null },
) {
    /** One record of a batch: a `publish` frame without `type`. */
    public data class Record(val id: String, val topic: String, val value: PublishValue, val options: PublishOptions = PublishOptions())

    /** The result of one record: [ack], or [error] (the gateway's code). */
    public data class Result(val id: String, val ack: PublishAck?, val error: FerryException?)

    /**
     * Sends [records] and returns one result per record, in order. Throws a
     * [FerryException] when the request as a whole failed (`rate_limited`
     * with [FerryException.retryAfterMs], `unauthorized`, `unavailable`, or
     * `connection_lost` for a network error): then nothing is known to be stored.
     */
    public suspend fun publish(records: List<Record>): List<Result> = withContext(Dispatchers.IO) {
        require(records.isNotEmpty()) { "no records" }
        val body = StringBuilder(records.size * 96).append("{\"records\":[")
        records.forEachIndexed { i, r ->
            if (i > 0) body.append(',')
            val frame = ClientFrames.publish(r.id, r.topic, r.value, r.options)
            // A record is a publish frame without `type`.
            body.append('{').append(frame.removePrefix("{\"type\":\"publish\","))
        }
        body.append("]}")
        val gz = ByteArrayOutputStream()
        GZIPOutputStream(gz).use { it.write(body.toString().toByteArray(Charsets.UTF_8)) }
        val request = Request.Builder().url(url)
            .header("Content-Encoding", "gzip")
            .post(gz.toByteArray().toRequestBody("application/json".toMediaType()))
        token()?.let { request.header("Authorization", "Bearer $it") }
        val response = try {
            http.newCall(request.build()).execute()
        } catch (e: java.io.IOException) {
            throw FerryException("connection_lost", "POST $url failed: $e", cause = e)
        }
        response.use {
            val text = it.body.string()
            val json = runCatching { JsonText.parse(text) as? JsonObject }.getOrNull()
            if (it.code != 200 || json == null) {
                val err = json?.get("error") as? JsonObject
                val code = err?.str("code") ?: if (it.code == 429) "rate_limited" else "unavailable"
                val retry = it.header("Retry-After")?.toLongOrNull()?.times(1000)
                throw FerryException(code, "POST $url: HTTP ${it.code} ${err?.str("message") ?: text.take(200)}",
                    FerryException.Source.GATEWAY, retryAfterMs = retry)
            }
            val results = json["results"] as? JsonArray ?: throw FerryException("protocol", "no results in ${text.take(200)}")
            results.mapIndexed { i, r ->
                val o = r as JsonObject
                val id = o.str("id") ?: records[i].id
                val err = o["error"] as? JsonObject
                if (err != null) {
                    val code = err.str("code")?.takeIf { c -> c in Codes.ERROR_CODES } ?: "internal"
                    Result(id, null, FerryException(code, err.str("message") ?: "", FerryException.Source.GATEWAY, id, err.long("retry_after_ms")))
                } else {
                    Result(id, PublishAck(id, o.str("topic") ?: records[i].topic, o.int("partition") ?: -1, o.long("offset") ?: -1), null)
                }
            }
        }
    }

    public companion object {
        /** The publish endpoint next to a WebSocket URL: `ws://h:p/ws` → `http://h:p/v1/publish`. */
        @JvmStatic
        public fun urlFor(wsUrl: String): String {
            val base = wsUrl.replaceFirst(Regex("^ws://"), "http://").replaceFirst(Regex("^wss://"), "https://")
            val hostEnd = base.indexOf('/', base.indexOf("//") + 2).let { if (it < 0) base.length else it }
            return base.substring(0, hostEnd) + "/v1/publish"
        }
    }
}
