package dev.ferry.client

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonElement

/**
 * JSON text helpers. Frames are written by hand so that a publish's `value`
 * goes out as the exact text the caller gave (it becomes the Kafka record
 * byte for byte), and a `message`'s `value` is read back as the exact text
 * the gateway embedded.
 */
internal object JsonText {
    val json: Json = Json { isLenient = false }

    fun parse(text: String): JsonElement = json.parseToJsonElement(text)

    fun isValid(text: String): Boolean = try {
        parse(text); true
    } catch (_: Exception) {
        false
    }

    /** [s] as a JSON string literal. */
    fun quote(s: String): String {
        val out = StringBuilder(s.length + 2)
        out.append('"')
        for (c in s) {
            when (c) {
                '"' -> out.append("\\\"")
                '\\' -> out.append("\\\\")
                '\n' -> out.append("\\n")
                '\r' -> out.append("\\r")
                '\t' -> out.append("\\t")
                '\b' -> out.append("\\b")
                '\u000C' -> out.append("\\f")
                else -> if (c < ' ') out.append("\\u%04x".format(c.code)) else out.append(c)
            }
        }
        return out.append('"').toString()
    }

    /**
     * The exact text of member [name] of the top-level object [frame], or
     * null when it has none. Assumes [frame] is valid JSON (parse it first).
     */
    fun rawMember(frame: String, name: String): String? {
        var i = skipWs(frame, 0)
        if (i >= frame.length || frame[i] != '{') return null
        i++
        while (true) {
            i = skipWs(frame, i)
            if (i >= frame.length || frame[i] == '}') return null
            if (frame[i] == ',') { i++; continue }
            val keyEnd = skipValue(frame, i)
            val key = parse(frame.substring(i, keyEnd)).let { (it as kotlinx.serialization.json.JsonPrimitive).content }
            i = skipWs(frame, keyEnd)
            i = skipWs(frame, i + 1) // ':'
            val end = skipValue(frame, i)
            if (key == name) return frame.substring(i, end)
            i = end
        }
    }

    private fun skipWs(s: String, from: Int): Int {
        var i = from
        while (i < s.length && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++
        return i
    }

    /** The index just past the JSON value starting at [from]. */
    private fun skipValue(s: String, from: Int): Int {
        var i = from
        when (s[i]) {
            '"' -> {
                i++
                while (s[i] != '"') i += if (s[i] == '\\') 2 else 1
                return i + 1
            }
            '{', '[' -> {
                var depth = 0
                while (true) {
                    when (s[i]) {
                        '"' -> { i = skipValue(s, i); continue }
                        '{', '[' -> depth++
                        '}', ']' -> { depth--; if (depth == 0) return i + 1 }
                    }
                    i++
                }
            }
            else -> {
                while (i < s.length && s[i] !in ",}] \n\r\t") i++
                return i
            }
        }
    }
}
