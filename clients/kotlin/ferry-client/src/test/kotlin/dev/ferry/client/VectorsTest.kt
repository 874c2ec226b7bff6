package dev.ferry.client

import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.boolean
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestFactory
import org.junit.jupiter.api.assertThrows
import java.io.File
import java.util.Base64

/**
 * The shared vectors in `protocol/vectors/`, checked against this client's
 * code as the gateway and the TypeScript client check theirs:
 * - client-valid: the encoder writes the same frame from the same request,
 *   and a publish's `value` carries exactly the vector's record bytes;
 * - client-invalid: the requests the client can check itself (topic names,
 *   ids, reserved headers, option combinations) are refused with the same code;
 * - server: every gateway frame decodes, and each `message` gives its record's bytes;
 * - filters: sent by `subscribe` exactly as written;
 * - codes: [Codes.mayReconnect] and the error codes match the tables.
 */
class VectorsTest {
    private val dir = File(System.getProperty("ferry.vectors") ?: "../../../protocol/vectors")
    private fun load(name: String): JsonElement = JsonText.parse(File(dir, name).readText())
    private val b64 = Base64.getDecoder()
    private fun JsonObject.s(name: String): String? = (this[name] as? JsonPrimitive)?.takeIf { it !is JsonNull }?.content

    /** The request a client-valid vector describes, made through the encoder. */
    private fun encode(f: JsonObject): String = when (f.s("type")) {
        "publish" -> {
            val value = f.s("value_b64")?.let { PublishValue.bytes(b64.decode(it)) }
                ?: PublishValue.json(JsonText.rawMember(rawFrames.getValue(f), "value")!!)
            val headers = (f["headers"] as? JsonObject)?.mapValues { it.value.jsonPrimitive.content } ?: emptyMap()
            ClientFrames.publish(f.s("id")!!, f.s("topic")!!, value, PublishOptions(
                key = f.s("key"), keyBytes = f.s("key_b64")?.let { b64.decode(it) }, headers = headers,
                partition = (f["partition"] as? JsonPrimitive)?.int,
                traceparent = f.s("traceparent"),
            ))
        }
        "subscribe" -> ClientFrames.subscribe(f.s("id")!!, f.s("topic")!!, SubscribeOptions(
            from = f["from"]?.let { from(it) },
            group = f.s("group"),
            ack = f.s("ack")?.let { a -> AckMode.entries.first { it.wire == a } },
            filter = f["filter"],
            overflow = f.s("overflow")?.let { o -> Overflow.entries.first { it.wire == o } },
            throttleMs = (f["throttle_ms"] as? JsonPrimitive)?.int,
        ))
        "unsubscribe" -> ClientFrames.unsubscribe(f.s("id")!!, f.s("topic")!!)
        "ping" -> ClientFrames.ping(f.s("id")!!)
        "auth" -> ClientFrames.auth(f.s("id"), f.s("token")!!)
        "commit" -> ClientFrames.commit(f.s("id"), f.s("topic")!!, f["partition"]!!.jsonPrimitive.int, f["offset"]!!.jsonPrimitive.long)
        else -> error("unknown type in $f")
    }

    private fun from(e: JsonElement): From = when {
        e is JsonPrimitive && e.content == "latest" -> From.Latest
        e is JsonPrimitive && e.content == "earliest" -> From.Earliest
        e is JsonPrimitive && e.content == "snapshot" -> From.Snapshot
        e is JsonObject && "offsets" in e -> From.Offsets(e["offsets"]!!.jsonObject.entries.associate { it.key.toInt() to it.value.jsonPrimitive.long })
        e is JsonObject && "timestamp" in e -> From.Timestamp(e["timestamp"]!!.jsonPrimitive.long)
        else -> throw FerryException("bad_request", "bad from: $e")
    }

    private val rawFrames = HashMap<JsonObject, String>()

    @TestFactory
    fun `client-valid frames are what the encoder writes`(): List<DynamicTest> {
        val vectors = load("client-valid.json").jsonArray
        assertTrue(vectors.size >= 8)
        return vectors.map { v ->
            val o = v.jsonObject
            DynamicTest.dynamicTest(o.s("name")) {
                val text = o.s("frame")!!
                val want = JsonText.parse(text).jsonObject
                rawFrames[want] = text
                val sent = encode(want)
                assertEquals(want, JsonText.parse(sent), "frame")
                val expect = o["expect"]!!.jsonObject
                if (want.s("type") == "publish") {
                    // The record bytes the gateway reads from our frame are the vector's.
                    val record = b64.decode(expect.s("value_b64")!!)
                    val ours = JsonText.rawMember(sent, "value")?.toByteArray(Charsets.UTF_8)
                        ?: b64.decode(JsonText.parse(sent).jsonObject.s("value_b64")!!)
                    assertArrayEquals(record, ours, "value bytes")
                }
            }
        }
    }

    @TestFactory
    fun `client-invalid requests the client can check are refused alike`(): List<DynamicTest> {
        val vectors = load("client-invalid.json").jsonArray.map { it.jsonObject }
        return vectors.mapNotNull { v ->
            val frame = runCatching { JsonText.parse(v.s("frame")!!) as? JsonObject }.getOrNull() ?: return@mapNotNull null
            val type = frame.s("type") ?: return@mapNotNull null
            val code = v.s("code")!!
            // Only the checks a client makes before sending: topic names, ids, reserved headers, option combinations.
            val local = code == "invalid_topic" ||
                (frame["id"] as? JsonPrimitive)?.let { it.isString && !ClientFrames.validId(it.content) } == true ||
                (type == "publish" && (frame["headers"] as? JsonObject)?.keys?.any { it.lowercase().startsWith("ferry-") } == true) ||
                (type == "subscribe" && ("ack" in frame && "group" !in frame || "group" in frame && frame["from"] is JsonObject)) ||
                (type == "subscribe" && frame["from"]?.let { f -> f is JsonPrimitive && f.content !in setOf("latest", "earliest") } == true)
            if (!local || type !in setOf("publish", "subscribe", "unsubscribe", "ping", "commit")) return@mapNotNull null
            DynamicTest.dynamicTest(v.s("name")) {
                rawFrames[frame] = v.s("frame")!!
                val e = assertThrows<FerryException> { encode(frame) }
                assertEquals(code, e.code, e.message)
            }
        }.also { assertTrue(it.size >= 10, "checked ${it.size} invalid vectors") }
    }

    @TestFactory
    fun `server frames decode, and messages give their record bytes`(): List<DynamicTest> =
        load("server.json").jsonArray.map { it.jsonObject }.map { v ->
            DynamicTest.dynamicTest(v.s("name")) {
                val text = v.s("frame")!!
                val frame = ServerFrame.decode(text)
                val json = JsonText.parse(text).jsonObject
                assertEquals(json, frame.raw)
                assertFalse(frame is ServerFrame.Unknown, "known type ${json.s("type")}")
                when (frame) {
                    is ServerFrame.Message -> {
                        val r = v["record"]!!.jsonObject
                        val m = frame.message
                        assertEquals((r["timestamp"] as? JsonPrimitive)?.takeIf { it !is JsonNull }?.long, m.timestamp)
                        assertArrayEquals(r.s("key_b64")?.let { b64.decode(it) }, m.key)
                        assertArrayEquals(r.s("value_b64")?.let { b64.decode(it) }, m.value)
                        val headers = r["headers"]!!.jsonArray.map { h ->
                            val pair = h.jsonArray
                            pair[0].jsonPrimitive.content to (pair[1] as? JsonPrimitive)?.takeIf { it !is JsonNull }?.content
                        }
                        assertEquals(headers, m.headers.map { it.first to it.second?.let { b -> Base64.getEncoder().encodeToString(b) } })
                        assertEquals(json["snapshot"]?.jsonPrimitive?.boolean == true, m.snapshot, "snapshot")
                    }
                    is ServerFrame.Error -> {
                        assertTrue(frame.code in Codes.ERROR_CODES)
                        assertEquals(json.s("code"), frame.code)
                        assertEquals(json.s("id"), frame.toException().requestId)
                    }
                    is ServerFrame.Welcome -> {
                        assertEquals(1, frame.protocol)
                        assertEquals(json["limits"]!!.jsonObject["max_inflight_publishes"]!!.jsonPrimitive.int, frame.limits.maxInflightPublishes)
                        if ("capabilities" !in json) assertEquals(V1_CAPABILITIES, frame.capabilities)
                    }
                    is ServerFrame.Ack -> assertEquals(json["offset"]!!.jsonPrimitive.long, frame.offset)
                    is ServerFrame.Subscribed -> assertEquals(
                        (json["partitions"] as? JsonObject)?.entries?.associate { it.key.toInt() to it.value.jsonPrimitive.long }, frame.partitions)
                    is ServerFrame.Gap -> assertEquals(json["resumed_at"]!!.jsonPrimitive.long, frame.resumedAt)
                    is ServerFrame.SnapshotEnd -> {
                        assertEquals(json.s("topic"), frame.topic)
                        assertEquals(json["positions"]!!.jsonObject.entries.associate { it.key.toInt() to it.value.jsonPrimitive.long }, frame.positions)
                    }
                    else -> Unit
                }
            }
        }

    @Test
    fun `server vectors include a snapshot's message, a multi-partition snapshot_end and a live tombstone`() {
        val frames = load("server.json").jsonArray.map { ServerFrame.decode(it.jsonObject.s("frame")!!) }
        val messages = frames.filterIsInstance<ServerFrame.Message>().map { it.message }
        assertTrue(messages.any { it.snapshot && it.key != null && it.value != null }, "a snapshot's message")
        assertTrue(messages.any { !it.snapshot && it.value == null }, "a live tombstone")
        assertTrue(frames.filterIsInstance<ServerFrame.SnapshotEnd>().any { it.positions.size > 1 }, "a snapshot_end over several partitions")
    }

    @Test
    fun `an unknown frame type or error code is not a failure`() {
        assertTrue(ServerFrame.decode("""{"type":"snapshot_done","topic":"t"}""") is ServerFrame.Unknown)
        val e = ServerFrame.decode("""{"type":"error","id":"x","code":"brand_new","message":"m"}""") as ServerFrame.Error
        assertEquals("internal", e.code)
        assertEquals("brand_new", e.rawCode)
    }

    @TestFactory
    fun `filters are sent exactly as written`(): List<DynamicTest> =
        load("filters.json").jsonArray.map { it.jsonObject }.map { v ->
            DynamicTest.dynamicTest(v.s("name")) {
                val filter = v["filter"]!!
                val frame = JsonText.parse(ClientFrames.subscribe("s", "t", SubscribeOptions(filter = filter))).jsonObject
                assertEquals(filter, frame["filter"])
            }
        }

    @Test
    fun `codes json matches the client's tables`() {
        val codes = load("codes.json").jsonObject
        val errorCodes = codes["error_codes"]!!.jsonArray.map { it.jsonObject.s("code") }
        assertEquals(errorCodes, Codes.ERROR_CODES)
        val closes = codes["close_codes"]!!.jsonArray.map { it.jsonObject }
        assertTrue(closes.size >= 20)
        for (c in closes) {
            val code = c["code"]!!.jsonPrimitive.int
            assertEquals(c.s("class") == "reconnect", Codes.mayReconnect(code), "close code $code")
        }
        assertTrue(Codes.mayReconnect(Codes.CLIENT_GAVE_UP))
        assertTrue(Codes.mayReconnect(Codes.CLIENT_PAUSED))
        for (s in codes["upgrade_statuses"]!!.jsonArray.map { it.jsonObject }) {
            val status = s["status"]!!.jsonPrimitive.int
            assertEquals(s["may_retry"]!!.jsonPrimitive.content.toBoolean(), Codes.mayRetryUpgrade(status), "HTTP $status")
        }
    }

    @Test
    fun `a publish value is stored byte for byte`() {
        val text = "[1, 2.50, \"x\"]"
        val frame = ClientFrames.publish("p", "t", PublishValue.json(text))
        assertTrue(frame.contains(",\"value\":$text"))
        assertThrows<FerryException> { PublishValue.json("{not json") }
        assertNull(JsonText.rawMember("""{"a":1}""", "value"))
        assertEquals("""{"x":[1,{"y":"}"}]}""", JsonText.rawMember("""{"type":"m","value":{"x":[1,{"y":"}"}]},"z":2}""", "value"))
        assertEquals(JsonArray(listOf(JsonPrimitive(1))), JsonText.parse("[1]"))
    }
}
