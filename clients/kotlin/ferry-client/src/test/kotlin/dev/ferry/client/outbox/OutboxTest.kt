package dev.ferry.client.outbox

import dev.ferry.client.FerryException
import dev.ferry.client.PublishValue
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.io.IOException
import java.io.RandomAccessFile

class OutboxTest {
    @TempDir
    lateinit var dir: File

    private fun value(i: Int) = PublishValue.json("""{"seq":$i,"pad":"${"x".repeat(40)}"}""")
    private fun draft(i: Int) = Outbox.Draft("telemetry", value(i), key = "dev-1", headers = mapOf("h" to "v$i"))
    private fun seqs(o: Outbox) = o.peek(Int.MAX_VALUE).map { it.seq }
    private fun text(e: Outbox.Event) = (e.value as PublishValue.Json).text

    @Test
    fun `events survive a restart with their ids, acked ones do not come back`() {
        val ids: List<String>
        Outbox.open(dir).use { o ->
            val events = o.appendAll((0 until 10).map(::draft))
            ids = events.map { it.id }
            assertEquals((0L until 10L).toList(), events.map { it.seq })
            assertEquals(10, ids.toSet().size, "unique publish ids")
            o.ack(3); o.ack(0); o.ack(7) // out of order, as acks come
            assertEquals(listOf(1L, 2L, 4L, 5L, 6L, 8L, 9L), seqs(o))
        }
        Outbox.open(dir).use { o ->
            val left = o.peek(100)
            assertEquals(listOf(1L, 2L, 4L, 5L, 6L, 8L, 9L), left.map { it.seq })
            assertEquals(ids[4], left[2].id, "the same id after a restart: consumers de-duplicate by it")
            assertEquals("""{"seq":4,"pad":"${"x".repeat(40)}"}""", text(left[2]))
            assertEquals("dev-1", left[2].key)
            assertEquals(mapOf("h" to "v4"), left[2].headers)
            assertEquals(10L, o.appended, "appending goes on from seq 10")
            assertEquals(10L, o.append("telemetry", value(10)).seq)
            assertEquals(listOf(1L, 2L), o.peek(2).map { it.seq })
            assertEquals(listOf(4L, 5L), o.peek(2, exclude = setOf(1L, 2L)).map { it.seq })
        }
    }

    @Test
    fun `bytes values round-trip`() {
        Outbox.open(dir).use { it.append("bin", PublishValue.bytes(byteArrayOf(-1, 0, 1))) }
        Outbox.open(dir).use { o ->
            assertArrayEquals(byteArrayOf(-1, 0, 1), (o.peek(1).single().value as PublishValue.Bytes).bytes)
        }
    }

    @Test
    fun `a torn last record is cut off and counted, everything before it stays`() {
        Outbox.open(dir).use { o -> o.appendAll((0 until 5).map(::draft)) }
        val seg = dir.listFiles { f -> f.name.endsWith(".seg") }!!.single()
        val full = seg.length()
        // A crash in the middle of writing the fifth record.
        RandomAccessFile(seg, "rw").use { it.setLength(full - 10) }
        Outbox.open(dir).use { o ->
            assertEquals(listOf(0L, 1L, 2L, 3L), seqs(o))
            assertTrue(o.stats().corruptBytes > 0)
            assertEquals(4L, o.appended, "the torn event was never appended")
            assertEquals(4L, o.append("telemetry", value(4)).seq)
        }
        Outbox.open(dir).use { o -> assertEquals(listOf(0L, 1L, 2L, 3L, 4L), seqs(o)) }
    }

    @Test
    fun `garbage after the last record and a flipped bit are detected`() {
        Outbox.open(dir).use { o -> o.appendAll((0 until 3).map(::draft)) }
        val seg = dir.listFiles { f -> f.name.endsWith(".seg") }!!.single()
        seg.appendBytes(ByteArray(37) { 0x5a })
        Outbox.open(dir).use { o -> assertEquals(listOf(0L, 1L, 2L), seqs(o)); assertEquals(37L, o.stats().corruptBytes) }
        // Damage the last record's payload: its CRC no longer matches.
        val bytes = seg.readBytes()
        bytes[bytes.size - 3] = (bytes[bytes.size - 3].toInt() xor 1).toByte()
        seg.writeBytes(bytes)
        Outbox.open(dir).use { o -> assertEquals(listOf(0L, 1L), seqs(o)) }
        // A torn acks.log entry is ignored too.
        Outbox.open(dir).use { o -> o.ack(0) }
        File(dir, "acks.log").appendBytes(byteArrayOf(0, 0, 0))
        Outbox.open(dir).use { o -> assertEquals(listOf(1L), seqs(o)) }
    }

    /** A disk with [budget] bytes left: a write past it writes what fits, then fails as ENOSPC does. */
    private class FullDisk(var budget: Long) : SegmentWriterFactory {
        override fun open(file: File): SegmentWriter {
            val real = SegmentWriterFactory.FILES.open(file)
            return object : SegmentWriter by real {
                override fun write(bytes: ByteArray) {
                    if (bytes.size > budget) {
                        real.write(bytes.copyOf(budget.toInt()))
                        budget = 0
                        throw IOException("No space left on device")
                    }
                    budget -= bytes.size
                    real.write(bytes)
                }
            }
        }
    }

    @Test
    fun `a full disk fails the append and leaves the outbox consistent`() {
        val disk = FullDisk(budget = 1_000)
        Outbox.open(dir, writers = disk).use { o ->
            val e = assertThrows<FerryException> { o.appendAll((0 until 100).map(::draft)) }
            assertEquals("storage", e.code)
            val kept = seqs(o)
            assertTrue(kept.isNotEmpty() && kept.size < 100, "a prefix was written: $kept")
            assertEquals(kept.size.toLong(), o.appended)
            // Space comes back: appending goes on where it stopped.
            disk.budget = Long.MAX_VALUE
            assertEquals(kept.size.toLong(), o.append("telemetry", value(kept.size)).seq)
        }
        Outbox.open(dir).use { o ->
            val all = o.peek(1000)
            assertEquals((0L..all.last().seq).toList(), all.map { it.seq }, "no gap, no torn record")
            assertEquals(0L, o.stats().corruptBytes, "the torn write was cut at once")
            all.forEach { e -> assertTrue(text(e).startsWith("{\"seq\":${e.seq},")) }
        }
    }

    @Test
    fun `when full it drops the oldest events and counts them`() {
        val config = OutboxConfig(maxBytes = 64L * 1024, segmentBytes = 4L * 1024)
        Outbox.open(dir, config).use { o ->
            repeat(20) { batch -> o.appendAll((batch * 100 until batch * 100 + 100).map(::draft)) }
            val stats = o.stats()
            assertTrue(stats.bytes <= config.maxBytes, "within the cap: ${stats.bytes}")
            assertTrue(stats.dropped > 0)
            assertEquals(2_000L, stats.pending + stats.dropped, "every event is either kept or counted as dropped")
            val kept = seqs(o)
            assertEquals(1_999L, kept.last(), "the newest are kept")
            assertEquals((kept.first()..1_999L).toList(), kept, "the oldest are dropped")
        }
        Outbox.open(dir, config).use { o -> assertTrue(o.stats().dropped > 0, "the count survives a restart") }
    }

    @Test
    fun `events older than the age bound are dropped and counted`() {
        Outbox.open(dir, OutboxConfig(maxAgeMs = 60_000)).use { o -> o.appendAll((0 until 3).map(::draft)) }
        Thread.sleep(5) // the events are at least this old
        Outbox.open(dir, OutboxConfig(maxAgeMs = 1)).use { o ->
            assertEquals(emptyList<Long>(), seqs(o))
            assertEquals(3L, o.stats().expired)
        }
    }

    @Test
    fun `acked segments are deleted and the sequence survives an empty outbox`() {
        val config = OutboxConfig(segmentBytes = 1024)
        Outbox.open(dir, config).use { o ->
            val events = o.appendAll((0 until 200).map(::draft))
            assertTrue(dir.listFiles { f -> f.name.endsWith(".seg") }!!.size > 5)
            events.reversed().forEach { o.ack(it.seq) }
            assertEquals(0, o.size)
            assertTrue(dir.listFiles { f -> f.name.endsWith(".seg") }!!.size <= 1, "only the active segment is left")
            assertTrue(File(dir, "acks.log").length() < 200 * 12, "acks.log is compacted")
        }
        Outbox.open(dir, config).use { o ->
            assertEquals(0, o.size)
            assertEquals(200L, o.appended)
            o.append("t", value(200)).also { assertEquals(200L, it.seq) }
        }
    }

    @Test
    fun `a permanent refusal removes the event and is counted`() {
        Outbox.open(dir).use { o ->
            o.appendAll((0 until 2).map(::draft))
            o.reject(0)
            assertEquals(listOf(1L), seqs(o))
            assertEquals(1L, o.stats().rejected)
        }
    }
}
