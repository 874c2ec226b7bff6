package dev.ferry.client

import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.booleanOrNull
import kotlinx.serialization.json.contentOrNull
import kotlinx.serialization.json.intOrNull
import kotlinx.serialization.json.longOrNull
import okio.ByteString.Companion.decodeBase64
import okio.ByteString.Companion.toByteString

/** The WebSocket subprotocol this client offers. */
public const val SUBPROTOCOL: String = "ferry.v1"

/** The protocol version this client speaks (`welcome.protocol`). */
public const val PROTOCOL_VERSION: Int = 1

/** The capabilities of a gateway whose `welcome` has no `capabilities` (older than the list). */
public val V1_CAPABILITIES: Set<String> = setOf("auth", "commit", "filter", "from", "group", "overflow")

/** The value of a publish: JSON text (sent as `value`, stored byte for byte) or bytes (`value_b64`). */
public sealed class PublishValue {
    /** JSON text, checked to be valid JSON; Kafka stores exactly this text. */
    public class Json(public val text: String) : PublishValue() {
        init {
            if (!JsonText.isValid(text)) throw FerryException("bad_request", "the value is not valid JSON")
        }
    }

    /** Arbitrary bytes. */
    public class Bytes(public val bytes: ByteArray) : PublishValue()

    public companion object {
        /** A JSON element, written compactly. */
        @JvmStatic
        public fun of(element: JsonElement): PublishValue = Json(element.toString())

        /** JSON text, stored byte for byte. */
        @JvmStatic
        public fun json(text: String): PublishValue = Json(text)

        /** Bytes. */
        @JvmStatic
        public fun bytes(bytes: ByteArray): PublishValue = Bytes(bytes)
    }
}

/** Options of a publish. */
public data class PublishOptions(
    /** The record key as UTF-8 text. */
    val key: String? = null,
    /** The record key as bytes (instead of [key]). */
    val keyBytes: ByteArray? = null,
    /** Kafka headers; names starting with `ferry-` are reserved. */
    val headers: Map<String, String> = emptyMap(),
    /** An explicit partition; otherwise Kafka's partitioner chooses (by key). */
    val partition: Int? = null,
    /**
     * The request id (1–64 characters), which the gateway stores as the
     * `ferry-id` header. Choose it unique per event so consumers can
     * de-duplicate retries; by default the client makes one up.
     */
    val id: String? = null,
    /**
     * W3C trace context (`00-<32 hex>-<16 hex>-<2 hex>`), stored as the
     * record's `traceparent` header. Needs a gateway that announces the
     * `traceparent` capability; for an older one put it in [headers].
     */
    val traceparent: String? = null,
)

/** Where a subscription starts. */
public sealed class From {
    /** Records produced after `subscribed` (the default). */
    public data object Latest : From()

    /** The oldest record still in Kafka. */
    public data object Earliest : From()

    /** A snapshot of the topic's current state, then live (needs the gateway's `snapshot` capability). */
    public data object Snapshot : From()

    /** Per partition, the next offset to deliver; partitions not listed start at latest. */
    public data class Offsets(val offsets: Map<Int, Long>) : From()

    /** Per partition, the first record at or after this time (ms since the epoch). */
    public data class Timestamp(val ms: Long) : From()

    internal fun wire(): String = when (this) {
        Latest -> "\"latest\""
        Earliest -> "\"earliest\""
        Snapshot -> "\"snapshot\""
        is Offsets -> offsets.entries.sortedBy { it.key }
            .joinToString(",", "{\"offsets\":{", "}}") { "\"${it.key}\":${it.value}" }
        is Timestamp -> "{\"timestamp\":$ms}"
    }
}

/** What the gateway does with a live subscription whose socket does not keep up. */
public enum class Overflow(internal val wire: String) { DISCONNECT("disconnect"), DROP_OLDEST("drop_oldest"), CONFLATE("conflate") }

/** When a shared-group record counts as processed. */
public enum class AckMode(internal val wire: String) { AUTO("auto"), CLIENT("client") }

/** Options of a subscription; each goes to the gateway only when set. */
public data class SubscribeOptions(
    /** Where to start; with [group], where a *new* group starts (`Latest` or `Earliest`). */
    val from: From? = null,
    /** Gateway-side filter, in its wire form (see the protocol). */
    val filter: JsonElement? = null,
    /** Slow-socket policy of a live subscription. */
    val overflow: Overflow? = null,
    /** Shared group: each record goes to one member socket (at least once). */
    val group: String? = null,
    /** With [group]: [AckMode.CLIENT] commits a record only after [FerryClient.commit]. */
    val ack: AckMode? = null,
    /** Records buffered for the collector of [Subscription.messages]; when full, the socket stops being read. */
    val bufferSize: Int = 1024,
    /** At most one record per key per this many ms (1 to 60000), always the newest, and a key's last value is never lost; not with [group]. */
    val throttleMs: Int? = null,
) {
    /** The capabilities the gateway must announce for these options. */
    internal fun needs(): List<String> = buildList {
        if (from != null) add(if (from == From.Snapshot) "snapshot" else "from")
        if (filter != null) add("filter")
        if (overflow != null) add("overflow")
        if (group != null || ack != null) add("group")
        if (throttleMs != null) add("throttle")
    }
}

/** One Kafka record, as a subscription delivers it. */
public class FerryMessage(
    public val topic: String,
    public val partition: Int,
    public val offset: Long,
    /** The record's timestamp in ms, when it has one. */
    public val timestamp: Long?,
    /** The record key's bytes; null when it has none. */
    public val key: ByteArray?,
    /** Header name to value bytes (null for a header without value), in record order. */
    public val headers: List<Pair<String, ByteArray?>>,
    /** The record value's bytes; null for a tombstone. */
    public val value: ByteArray?,
    /** Whether the gateway sent the value as JSON (`value`) rather than bytes. */
    public val isJson: Boolean,
    /**
     * Whether the record is part of a snapshot ([From.Snapshot]): the latest
     * record of its key, sent before `snapshot_end`. False for live records.
     */
    public val snapshot: Boolean = false,
) {
    /** The key as UTF-8 text. */
    public val keyText: String? get() = key?.toString(Charsets.UTF_8)

    /** The value as UTF-8 text (for JSON values, the exact JSON text). */
    public val text: String? get() = value?.toString(Charsets.UTF_8)

    /** The value parsed as JSON; null for a tombstone or a value that is not JSON. */
    public val json: JsonElement? by lazy { if (isJson && value != null) JsonText.parse(text!!) else null }

    /** The first header named [name], as text. */
    public fun header(name: String): String? = headers.firstOrNull { it.first == name }?.second?.toString(Charsets.UTF_8)

    override fun toString(): String =
        "FerryMessage($topic/$partition@$offset key=$keyText value=${text?.take(200)}${if (snapshot) " snapshot" else ""})"
}

/** A frame from the gateway. Unknown types and fields are kept, never an error. */
public sealed class ServerFrame {
    public abstract val raw: JsonObject
    public val type: String get() = raw.str("type") ?: ""
    public open val id: String? get() = raw.str("id")

    /** The connection's limits as `welcome` announces them. */
    public data class Limits(
        val maxFrameBytes: Int?,
        val maxInflightPublishes: Int?,
        val maxSubscriptions: Int?,
        val publishRate: Int?,
        val publishBurst: Int?,
    )

    public class Welcome(override val raw: JsonObject) : ServerFrame() {
        public val protocol: Int? get() = raw.int("protocol")
        public val session: String? get() = raw.str("session")
        public val node: String? get() = raw.str("node")
        public val subject: String? get() = raw.str("subject")
        public val expiresAt: Long? get() = raw.long("expires_at")
        public val capabilities: Set<String>
            get() = (raw["capabilities"] as? JsonArray)?.mapNotNull { (it as? JsonPrimitive)?.contentOrNull }?.toSet()
                ?: V1_CAPABILITIES
        public val limits: Limits
            get() {
                val l = raw["limits"] as? JsonObject ?: JsonObject(emptyMap())
                return Limits(l.int("max_frame_bytes"), l.int("max_inflight_publishes"), l.int("max_subscriptions"),
                    l.int("publish_rate"), l.int("publish_burst"))
            }
    }

    public class Authed(override val raw: JsonObject) : ServerFrame() {
        public val expiresAt: Long? get() = raw.long("expires_at")
    }

    public class Ack(override val raw: JsonObject) : ServerFrame() {
        public val topic: String get() = raw.str("topic") ?: ""
        public val partition: Int get() = raw.int("partition") ?: -1
        public val offset: Long get() = raw.long("offset") ?: -1
    }

    public class Subscribed(override val raw: JsonObject) : ServerFrame() {
        public val topic: String get() = raw.str("topic") ?: ""
        /** Per partition, where delivery starts; null for a group subscription. */
        public val partitions: Map<Int, Long>?
            get() = (raw["partitions"] as? JsonObject)?.entries?.mapNotNull { (k, v) ->
                val p = k.toIntOrNull(); val o = (v as? JsonPrimitive)?.longOrNull
                if (p != null && o != null) p to o else null
            }?.toMap()
    }

    public class Unsubscribed(override val raw: JsonObject) : ServerFrame() {
        public val topic: String get() = raw.str("topic") ?: ""
        public val reason: String? get() = raw.str("reason")
    }

    public class Pong(override val raw: JsonObject) : ServerFrame()

    public class Committed(override val raw: JsonObject) : ServerFrame() {
        public val topic: String get() = raw.str("topic") ?: ""
        public val partition: Int get() = raw.int("partition") ?: -1
        public val offset: Long get() = raw.long("offset") ?: -1
    }

    /**
     * The snapshot of a [From.Snapshot] subscription is complete: live records
     * follow from [positions] (partition to next offset), which are also where
     * the subscription resumes from.
     */
    public class SnapshotEnd(override val raw: JsonObject) : ServerFrame() {
        public val topic: String get() = raw.str("topic") ?: ""
        public val positions: Map<Int, Long>
            get() = (raw["positions"] as? JsonObject)?.entries?.mapNotNull { (k, v) ->
                val p = k.toIntOrNull(); val o = (v as? JsonPrimitive)?.takeIf { !it.isString }?.longOrNull
                if (p != null && o != null) p to o else null
            }?.toMap() ?: emptyMap()
    }

    public class Lagged(override val raw: JsonObject) : ServerFrame() {
        public val topic: String get() = raw.str("topic") ?: ""
        public val dropped: Long get() = raw.long("dropped") ?: 0
    }

    public class Gap(override val raw: JsonObject) : ServerFrame() {
        public val topic: String get() = raw.str("topic") ?: ""
        public val partition: Int? get() = raw.int("partition")
        public val requested: Long? get() = raw.long("requested")
        public val resumedAt: Long? get() = raw.long("resumed_at")
        public val reason: String? get() = raw.str("reason")
    }

    public class Error(override val raw: JsonObject) : ServerFrame() {
        /** The error code; one this client does not know reads as `internal`. */
        public val code: String get() = raw.str("code")?.takeIf { it in Codes.ERROR_CODES } ?: "internal"
        /** The code exactly as sent. */
        public val rawCode: String? get() = raw.str("code")
        public val message: String get() = raw.str("message") ?: ""
        public val retryAfterMs: Long? get() = raw.long("retry_after_ms")

        public fun toException(): FerryException =
            FerryException(code, message, FerryException.Source.GATEWAY, id, retryAfterMs)
    }

    public class Message(override val raw: JsonObject, public val message: FerryMessage) : ServerFrame()

    /** A frame type this client does not know (a newer gateway): ignored. */
    public class Unknown(override val raw: JsonObject) : ServerFrame()

    public companion object {
        /** Decodes one text frame. */
        @JvmStatic
        public fun decode(text: String): ServerFrame {
            val obj = try {
                JsonText.parse(text) as? JsonObject
            } catch (e: Exception) {
                null
            } ?: throw FerryException("protocol", "the gateway sent a frame that is not a JSON object: ${text.take(200)}")
            return when (obj.str("type")) {
                "welcome" -> Welcome(obj)
                "authed" -> Authed(obj)
                "ack" -> Ack(obj)
                "subscribed" -> Subscribed(obj)
                "unsubscribed" -> Unsubscribed(obj)
                "pong" -> Pong(obj)
                "committed" -> Committed(obj)
                "lagged" -> Lagged(obj)
                "snapshot_end" -> SnapshotEnd(obj)
                "gap" -> Gap(obj)
                "error" -> Error(obj)
                "message" -> Message(obj, toMessage(obj, text))
                else -> Unknown(obj)
            }
        }

        private fun base64(text: String): ByteArray =
            text.decodeBase64()?.toByteArray() ?: throw FerryException("protocol", "bad base64 from the gateway")

        private fun toMessage(obj: JsonObject, text: String): FerryMessage {
            val headers = ArrayList<Pair<String, ByteArray?>>()
            (obj["headers"] as? JsonObject)?.forEach { (k, v) ->
                headers += k to (v as? JsonPrimitive)?.takeIf { it !is JsonNull }?.content?.toByteArray(Charsets.UTF_8)
            }
            (obj["headers_b64"] as? JsonObject)?.forEach { (k, v) ->
                headers += k to (v as? JsonPrimitive)?.contentOrNull?.let { base64(it) }
            }
            val valueB64 = obj.str("value_b64")
            val rawValue = if (valueB64 == null) JsonText.rawMember(text, "value") else null
            val value: ByteArray? = when {
                valueB64 != null -> base64(valueB64)
                rawValue == null || rawValue == "null" -> null
                else -> rawValue.toByteArray(Charsets.UTF_8)
            }
            val key = obj.str("key_b64")?.let { base64(it) } ?: obj.str("key")?.toByteArray(Charsets.UTF_8)
            return FerryMessage(
                topic = obj.str("topic") ?: "",
                partition = obj.int("partition") ?: -1,
                offset = obj.long("offset") ?: -1,
                timestamp = obj.long("timestamp"),
                key = key,
                headers = headers,
                value = value,
                isJson = valueB64 == null,
                snapshot = obj.bool("snapshot") == true,
            )
        }
    }
}

internal fun JsonObject.str(name: String): String? = (this[name] as? JsonPrimitive)?.takeIf { it.isString }?.content
internal fun JsonObject.long(name: String): Long? = (this[name] as? JsonPrimitive)?.takeIf { !it.isString }?.longOrNull
internal fun JsonObject.int(name: String): Int? = (this[name] as? JsonPrimitive)?.takeIf { !it.isString }?.intOrNull
internal fun JsonObject.bool(name: String): Boolean? = (this[name] as? JsonPrimitive)?.booleanOrNull

/** Encoders of the frames a client sends, and the checks the client can make before sending. */
public object ClientFrames {
    private val TOPIC = Regex("[a-zA-Z0-9._-]{1,249}")
    private val GROUP = Regex("[A-Za-z0-9._-]{1,200}")

    /** Throws `invalid_topic` unless [topic] is a topic name Kafka accepts and is not internal. */
    @JvmStatic
    public fun checkTopic(topic: String) {
        val why = when {
            !TOPIC.matches(topic) -> "topic names are 1 to 249 characters of [a-zA-Z0-9._-]"
            topic == "." || topic == ".." -> "a topic cannot be named \"$topic\""
            topic.startsWith("__") -> "topics starting with \"__\" are internal to Kafka"
            else -> return
        }
        throw FerryException("invalid_topic", "invalid topic \"$topic\": $why")
    }

    /** Whether [id] is a valid request id: 1 to 64 characters. */
    @JvmStatic
    public fun validId(id: String): Boolean = id.isNotEmpty() && id.codePointCount(0, id.length) <= 64

    private fun requireId(id: String) {
        if (!validId(id)) throw FerryException("bad_request", "a request id is 1 to 64 characters", requestId = id)
    }

    /** A `publish` frame; its `value` is the exact text of a [PublishValue.Json]. */
    @JvmStatic
    public fun publish(id: String, topic: String, value: PublishValue, options: PublishOptions = PublishOptions()): String {
        requireId(id)
        checkTopic(topic)
        if (options.key != null && options.keyBytes != null) throw FerryException("bad_request", "a key is text or bytes, not both")
        for (name in options.headers.keys) {
            if (name.lowercase().startsWith("ferry-")) {
                throw FerryException("bad_request", "header \"$name\": names starting with \"ferry-\" are reserved", requestId = id)
            }
        }
        if (options.partition != null && options.partition < 0) throw FerryException("bad_request", "a partition is 0 or more")
        options.traceparent?.let { tp ->
            val ids = Regex("^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$").find(tp)
            if (ids == null || ids.groupValues[1].all { it == '0' } || ids.groupValues[2].all { it == '0' }) {
                throw FerryException("bad_request", "`traceparent` must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>", requestId = id)
            }
            if (options.headers.keys.any { it.equals("traceparent", ignoreCase = true) }) {
                throw FerryException("bad_request", "give `traceparent` once: as the option or in headers, not both", requestId = id)
            }
        }
        val out = StringBuilder(128)
        out.append("{\"type\":\"publish\",\"id\":").append(JsonText.quote(id))
        out.append(",\"topic\":").append(JsonText.quote(topic))
        when (value) {
            is PublishValue.Json -> out.append(",\"value\":").append(value.text)
            is PublishValue.Bytes -> out.append(",\"value_b64\":\"").append(value.bytes.toByteString().base64()).append('"')
        }
        options.key?.let { out.append(",\"key\":").append(JsonText.quote(it)) }
        options.keyBytes?.let { out.append(",\"key_b64\":\"").append(it.toByteString().base64()).append('"') }
        if (options.headers.isNotEmpty()) {
            out.append(",\"headers\":")
            options.headers.entries.joinTo(out, ",", "{", "}") { JsonText.quote(it.key) + ":" + JsonText.quote(it.value) }
        }
        options.traceparent?.let { out.append(",\"traceparent\":").append(JsonText.quote(it)) }
        options.partition?.let { out.append(",\"partition\":").append(it) }
        return out.append('}').toString()
    }

    /** A `subscribe` frame. */
    @JvmStatic
    public fun subscribe(id: String, topic: String, options: SubscribeOptions = SubscribeOptions()): String {
        requireId(id)
        checkTopic(topic)
        options.group?.let { if (!GROUP.matches(it)) throw FerryException("bad_request", "a group is 1 to 200 characters of [A-Za-z0-9._-]") }
        if (options.ack != null && options.group == null) throw FerryException("bad_request", "`ack` needs `group`")
        options.throttleMs?.let {
            if (options.group != null) throw FerryException("bad_request", "`throttleMs` does not apply to a group subscription")
            if (it !in 1..60_000) throw FerryException("bad_request", "`throttleMs` must be 1 to 60000")
        }
        if (options.group != null && options.from != null && options.from != From.Latest && options.from != From.Earliest) {
            throw FerryException("bad_request", "a group starts at \"latest\" or \"earliest\" only")
        }
        val out = StringBuilder(96)
        out.append("{\"type\":\"subscribe\",\"id\":").append(JsonText.quote(id)).append(",\"topic\":").append(JsonText.quote(topic))
        options.from?.let { out.append(",\"from\":").append(it.wire()) }
        options.group?.let { out.append(",\"group\":").append(JsonText.quote(it)) }
        options.ack?.let { out.append(",\"ack\":\"").append(it.wire).append('"') }
        options.filter?.let { out.append(",\"filter\":").append(it.toString()) }
        options.throttleMs?.let { out.append(",\"throttle_ms\":").append(it) }
        options.overflow?.let { out.append(",\"overflow\":\"").append(it.wire).append('"') }
        return out.append('}').toString()
    }

    @JvmStatic
    public fun unsubscribe(id: String, topic: String): String {
        requireId(id); checkTopic(topic)
        return "{\"type\":\"unsubscribe\",\"id\":${JsonText.quote(id)},\"topic\":${JsonText.quote(topic)}}"
    }

    @JvmStatic
    public fun ping(id: String): String {
        requireId(id)
        return "{\"type\":\"ping\",\"id\":${JsonText.quote(id)}}"
    }

    @JvmStatic
    public fun auth(id: String?, token: String): String {
        id?.let { requireId(it) }
        if (token.isEmpty()) throw FerryException("bad_request", "an empty token")
        val idPart = id?.let { ",\"id\":${JsonText.quote(it)}" } ?: ""
        return "{\"type\":\"auth\"$idPart,\"token\":${JsonText.quote(token)}}"
    }

    @JvmStatic
    public fun commit(id: String?, topic: String, partition: Int, offset: Long): String {
        id?.let { requireId(it) }
        checkTopic(topic)
        if (partition < 0 || offset < 0) throw FerryException("bad_request", "partition and offset are 0 or more")
        val idPart = id?.let { ",\"id\":${JsonText.quote(it)}" } ?: ""
        return "{\"type\":\"commit\"$idPart,\"topic\":${JsonText.quote(topic)},\"partition\":$partition,\"offset\":$offset}"
    }
}
