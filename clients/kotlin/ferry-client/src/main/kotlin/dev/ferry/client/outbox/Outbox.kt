package dev.ferry.client.outbox

import dev.ferry.client.FerryException
import dev.ferry.client.PublishOptions
import dev.ferry.client.PublishValue
import java.io.ByteArrayOutputStream
import java.io.Closeable
import java.io.DataInputStream
import java.io.DataOutputStream
import java.io.EOFException
import java.io.File
import java.io.IOException
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.util.TreeMap
import java.util.UUID
import java.util.zip.CRC32

/** Bounds and durability of an [Outbox]. */
public data class OutboxConfig(
    /** Disk space the events may take. When an append would pass it, the oldest events are dropped (counted in [OutboxStats.dropped]). */
    val maxBytes: Long = 16L * 1024 * 1024,
    /** Events older than this are dropped unsent (counted in [OutboxStats.expired]). */
    val maxAgeMs: Long = 7L * 24 * 3600 * 1000,
    /** Size of one segment file; eviction works a segment at a time. Default: [maxBytes] / 16, within 64 KiB…4 MiB. */
    val segmentBytes: Long = (maxBytes / 16).coerceIn(64L * 1024, 4L * 1024 * 1024),
    /** fsync after every append batch, so an event survives power loss and not only a killed process. */
    val sync: Boolean = true,
)

/** Counters of an [Outbox]; the ones named "total" survive restarts. */
public data class OutboxStats(
    /** Events waiting for their ack. */
    val pending: Int,
    /** Bytes of the segment files. */
    val bytes: Long,
    /** Events ever appended to this directory (the next event's [Outbox.Event.seq]). */
    val appended: Long,
    /** Events dropped unsent because the outbox was full (drop oldest), total. */
    val dropped: Long,
    /** Events dropped unsent because they were older than [OutboxConfig.maxAgeMs], total. */
    val expired: Long,
    /** Events the gateway refused for good (`forbidden`, `invalid_value`, …), total. */
    val rejected: Long,
    /** Bytes of damaged records skipped when the directory was opened (a torn last write after a crash). */
    val corruptBytes: Long,
)

/**
 * A durable queue of events for the gateway, in a directory of small
 * append-only segment files.
 *
 * - [append] writes an event (and fsyncs, with [OutboxConfig.sync]) before
 *   anyone may send it; it gets a sequence number [Event.seq] and a unique
 *   publish id [Event.id], which the gateway stores as the `ferry-id` header.
 * - [peek] reads the oldest events not yet acked; [ack] removes one once the
 *   gateway acked it (acks may come out of order). A removed event is written
 *   to `acks.log`; a segment whose events are all removed is deleted.
 * - Opening a directory after a crash keeps every complete record: a record
 *   cut short or damaged (checked by CRC-32) ends its segment and is counted
 *   in [OutboxStats.corruptBytes].
 *
 * Delivery is at least once: an event sent, stored by Kafka, and not yet
 * acked when the process dies is sent again after the restart, with the same
 * id. Consumers de-duplicate by the `ferry-id` header.
 *
 * Methods are thread-safe (one lock; file I/O happens under it, which is fine
 * for a single outbox per process but not free: batch with [appendAll]).
 */
public class Outbox private constructor(
    public val dir: File,
    public val config: OutboxConfig,
    private val writers: SegmentWriterFactory,
) : Closeable {

    /** One queued event. */
    public class Event(
        /** Position in this outbox: 0 for the first event ever appended to the directory. */
        public val seq: Long,
        /** The publish id (`ferry-id`), stable across retries and restarts. */
        public val id: String,
        public val topic: String,
        public val value: PublishValue,
        public val key: String?,
        public val headers: Map<String, String>,
        /** When it was appended, ms since the epoch. */
        public val createdAt: Long,
    ) {
        public fun publishOptions(): PublishOptions = PublishOptions(key = key, headers = headers, id = id)
        override fun toString(): String = "Event(seq=$seq, id=$id, topic=$topic)"
    }

    private class Segment(val file: File, val firstSeq: Long) {
        var size = 0L
        var live = 0
    }

    private class Entry(val seq: Long, val segment: Segment, val pos: Long, val len: Int, val createdAt: Long)

    private val segments = ArrayList<Segment>()
    private val pending = TreeMap<Long, Entry>()
    private var active: Segment? = null
    private var writer: SegmentWriter? = null
    private var acks: SegmentWriter? = null
    private var nextSeq = 0L
    private var dropped = 0L
    private var expired = 0L
    private var rejected = 0L
    private var corruptBytes = 0L
    private var closed = false
    /** Records in `acks.log` since it was last compacted. */
    private var ackEntries = 0

    /** Events ever appended to this directory. */
    public val appended: Long @Synchronized get() = nextSeq

    /** Events waiting for their ack. */
    public val size: Int @Synchronized get() = pending.size

    @Synchronized
    public fun stats(): OutboxStats =
        OutboxStats(pending.size, segments.sumOf { it.size }, nextSeq, dropped, expired, rejected, corruptBytes)

    /** Queues one event. Throws `storage` when it cannot be written (the outbox stays consistent). */
    public fun append(topic: String, value: PublishValue, key: String? = null, headers: Map<String, String> = emptyMap()): Event =
        appendAll(listOf(Draft(topic, value, key, headers)))[0]

    /** An event to append. */
    public data class Draft(val topic: String, val value: PublishValue, val key: String? = null, val headers: Map<String, String> = emptyMap())

    /**
     * Queues events with one fsync. All or a prefix of them are written:
     * on a write failure the events before it stay and the exception says how many.
     */
    @Synchronized
    public fun appendAll(drafts: List<Draft>): List<Event> {
        check(!closed) { "the outbox is closed" }
        val out = ArrayList<Event>(drafts.size)
        try {
            for (d in drafts) {
                val now = System.currentTimeMillis()
                val event = Event(nextSeq, UUID.randomUUID().toString(), d.topic, d.value, d.key, d.headers, now)
                val record = frame(encode(event))
                makeRoom(record.size.toLong())
                val seg = activeSegment(record.size.toLong())
                val w = writer!!
                val pos = w.size
                try {
                    w.write(record)
                } catch (e: IOException) {
                    // A torn record must not sit in front of later ones: cut it, and start a new segment.
                    runCatching { w.truncate(pos) }
                    rollSegment()
                    throw e
                }
                seg.size = pos + record.size
                seg.live++
                pending[event.seq] = Entry(event.seq, seg, pos, record.size, now)
                nextSeq++
                out += event
            }
            if (config.sync) writer?.sync()
        } catch (e: IOException) {
            if (config.sync) runCatching { writer?.sync() }
            throw FerryException("storage", "outbox ${dir.path}: wrote ${out.size} of ${drafts.size} events: $e", cause = e)
        }
        return out
    }

    /** Up to [limit] of the oldest events not acked, skipping [exclude] (e.g. events in flight); drops expired ones. */
    @Synchronized
    public fun peek(limit: Int, exclude: Set<Long> = emptySet()): List<Event> {
        check(!closed) { "the outbox is closed" }
        val cutoff = System.currentTimeMillis() - config.maxAgeMs
        val out = ArrayList<Event>(minOf(limit, pending.size))
        val it = pending.values.iterator()
        val expiredNow = ArrayList<Entry>()
        while (it.hasNext() && out.size < limit) {
            val e = it.next()
            if (e.createdAt < cutoff) { expiredNow += e; continue }
            if (e.seq in exclude) continue
            out += read(e)
        }
        for (e in expiredNow) { remove(e.seq); expired++ }
        if (expiredNow.isNotEmpty()) writeState()
        return out
    }

    /** The gateway acked event [seq]: remove it. Unknown or already removed seqs are ignored. */
    @Synchronized
    public fun ack(seq: Long) {
        remove(seq)
    }

    /** The gateway refused event [seq] for good: remove it, and count it in [OutboxStats.rejected]. */
    @Synchronized
    public fun reject(seq: Long) {
        if (remove(seq)) {
            rejected++
            writeState()
        }
    }

    @Synchronized
    override fun close() {
        if (closed) return
        closed = true
        runCatching { writer?.close() }
        runCatching { acks?.close() }
    }

    // ---------------------------------------------------------------- internals

    private fun remove(seq: Long): Boolean {
        val e = pending.remove(seq) ?: return false
        try {
            acks!!.write(ByteBuffer.allocate(12).putLong(seq).putInt(crc(longBytes(seq))).array())
            ackEntries++
        } catch (_: IOException) {
            // Losing an ack record only means the event is sent again after a restart.
        }
        e.segment.live--
        if (e.segment.live == 0 && e.segment !== active) deleteSegment(e.segment)
        return true
    }

    private fun makeRoom(need: Long) {
        while (segments.sumOf { it.size } + need > config.maxBytes && segments.isNotEmpty()) {
            val oldest = segments.first()
            if (oldest === active) {
                if (oldest.size == 0L) return // one record larger than the whole cap: write it anyway
                rollSegment()
            }
            val lost = pending.subMap(oldest.firstSeq, true, Long.MAX_VALUE, true).values.filter { it.segment === oldest }
            for (e in lost) pending.remove(e.seq)
            dropped += lost.size
            oldest.live = 0
            deleteSegment(oldest)
        }
    }

    private fun activeSegment(need: Long): Segment {
        val seg = active
        if (seg != null && (seg.size == 0L || seg.size + need <= config.segmentBytes)) return seg
        rollSegment()
        return newSegment()
    }

    private fun newSegment(): Segment {
        val seg = Segment(File(dir, "%020d.seg".format(nextSeq)), nextSeq)
        writer = writers.open(seg.file)
        seg.size = writer!!.size
        segments += seg
        active = seg
        return seg
    }

    private fun rollSegment() {
        val seg = active ?: return
        runCatching { writer?.close() }
        writer = null
        active = null
        if (seg.live == 0) deleteSegment(seg)
    }

    private fun deleteSegment(seg: Segment) {
        writeState()
        segments.remove(seg)
        seg.file.delete()
        if (segments.size <= 1 || ackEntries > 4096) compactAcks()
    }

    /** Rewrites `acks.log` with only the removals of events still in some segment. */
    private fun compactAcks() {
        val first = segments.minOfOrNull { it.firstSeq } ?: nextSeq
        val keep = (first until nextSeq).filter { it !in pending }
        runCatching { acks?.close() }
        val tmp = File(dir, "acks.log.tmp")
        tmp.delete()
        val w = SegmentWriterFactory.FILES.open(tmp)
        try {
            val buf = ByteArrayOutputStream()
            for (seq in keep) buf.write(ByteBuffer.allocate(12).putLong(seq).putInt(crc(longBytes(seq))).array())
            w.write(buf.toByteArray())
            w.sync()
        } finally {
            w.close()
        }
        if (!tmp.renameTo(File(dir, "acks.log"))) throw FerryException("storage", "cannot replace ${dir.path}/acks.log")
        acks = writers.open(File(dir, "acks.log"))
        ackEntries = keep.size
    }

    /** `state`: the next seq and the counters, replaced atomically. */
    private fun writeState() {
        val body = ByteBuffer.allocate(40).putLong(nextSeq).putLong(dropped).putLong(expired).putLong(rejected).putLong(corruptBytes).array()
        val tmp = File(dir, "state.tmp")
        try {
            RandomAccessFile(tmp, "rw").use { f ->
                f.setLength(0)
                f.write(body)
                f.writeInt(crc(body))
                f.fd.sync()
            }
            if (!tmp.renameTo(File(dir, "state"))) throw IOException("rename failed")
        } catch (e: IOException) {
            throw FerryException("storage", "cannot write ${dir.path}/state: $e", cause = e)
        }
    }

    private fun read(e: Entry): Event {
        val bytes = ByteArray(e.len)
        RandomAccessFile(e.segment.file, "r").use { f ->
            f.seek(e.pos)
            f.readFully(bytes)
        }
        return decode(bytes.copyOfRange(8, bytes.size))
    }

    private fun load() {
        dir.mkdirs()
        if (!dir.isDirectory) throw FerryException("storage", "${dir.path} is not a directory")
        File(dir, "state").takeIf { it.isFile }?.readBytes()?.let { b ->
            if (b.size == 44 && crc(b.copyOfRange(0, 40)) == ByteBuffer.wrap(b, 40, 4).int) {
                val bb = ByteBuffer.wrap(b)
                nextSeq = bb.long; dropped = bb.long; expired = bb.long; rejected = bb.long; corruptBytes = bb.long
            }
        }
        val removed = HashSet<Long>()
        File(dir, "acks.log").takeIf { it.isFile }?.readBytes()?.let { b ->
            var i = 0
            while (i + 12 <= b.size) {
                val seq = ByteBuffer.wrap(b, i, 8).long
                if (crc(b.copyOfRange(i, i + 8)) == ByteBuffer.wrap(b, i + 8, 4).int) removed += seq
                i += 12
            }
        }
        val files = dir.listFiles { f -> f.name.endsWith(".seg") }.orEmpty().sortedBy { it.name }
        for (file in files) {
            val seg = Segment(file, file.name.removeSuffix(".seg").toLongOrNull() ?: continue)
            val bytes = file.readBytes()
            var pos = 0
            while (pos < bytes.size) {
                val event = if (pos + 8 <= bytes.size) {
                    val len = ByteBuffer.wrap(bytes, pos, 4).int
                    val sum = ByteBuffer.wrap(bytes, pos + 4, 4).int
                    if (len in 1..(bytes.size - pos - 8) && crc(bytes.copyOfRange(pos + 8, pos + 8 + len)) == sum) {
                        runCatching { decode(bytes.copyOfRange(pos + 8, pos + 8 + len)) }.getOrNull()
                    } else null
                } else null
                if (event == null) {
                    // A torn or damaged record ends the segment: keep what came before it.
                    corruptBytes += bytes.size - pos
                    RandomAccessFile(file, "rw").use { it.setLength(pos.toLong()) }
                    break
                }
                val len = ByteBuffer.wrap(bytes, pos, 4).int + 8
                if (event.seq !in removed) {
                    pending[event.seq] = Entry(event.seq, seg, pos.toLong(), len, event.createdAt)
                    seg.live++
                }
                nextSeq = maxOf(nextSeq, event.seq + 1)
                pos += len
            }
            seg.size = pos.toLong()
            segments += seg
        }
        acks = writers.open(File(dir, "acks.log"))
        for (seg in segments.filter { it.live == 0 }) deleteSegment(seg)
        compactAcks()
        writeState()
    }

    public companion object {
        /** Opens (or creates) the outbox in [dir], recovering from a crash: see the class comment. */
        @JvmStatic
        @JvmOverloads
        public fun open(dir: File, config: OutboxConfig = OutboxConfig(), writers: SegmentWriterFactory = SegmentWriterFactory.FILES): Outbox {
            val outbox = Outbox(dir, config, writers)
            try {
                outbox.load()
            } catch (e: IOException) {
                throw FerryException("storage", "cannot open the outbox ${dir.path}: $e", cause = e)
            }
            return outbox
        }

        private fun crc(bytes: ByteArray): Int = CRC32().also { it.update(bytes) }.value.toInt()
        private fun longBytes(v: Long): ByteArray = ByteBuffer.allocate(8).putLong(v).array()

        /** `[length][crc32][payload]`. */
        private fun frame(payload: ByteArray): ByteArray =
            ByteBuffer.allocate(8 + payload.size).putInt(payload.size).putInt(crc(payload)).put(payload).array()

        private fun encode(e: Event): ByteArray {
            val buf = ByteArrayOutputStream(128)
            DataOutputStream(buf).use { out ->
                out.writeByte(1) // record version
                out.writeLong(e.seq)
                out.writeLong(e.createdAt)
                out.writeUTF(e.id)
                out.writeUTF(e.topic)
                out.writeBoolean(e.key != null)
                e.key?.let { out.writeUTF(it) }
                out.writeInt(e.headers.size)
                for ((k, v) in e.headers) { out.writeUTF(k); out.writeUTF(v) }
                val (kind, bytes) = when (val v = e.value) {
                    is PublishValue.Json -> 0 to v.text.toByteArray(Charsets.UTF_8)
                    is PublishValue.Bytes -> 1 to v.bytes
                }
                out.writeByte(kind)
                out.writeInt(bytes.size)
                out.write(bytes)
            }
            return buf.toByteArray()
        }

        private fun decode(payload: ByteArray): Event {
            DataInputStream(payload.inputStream()).use { inp ->
                if (inp.readByte().toInt() != 1) throw IOException("unknown record version")
                val seq = inp.readLong()
                val createdAt = inp.readLong()
                val id = inp.readUTF()
                val topic = inp.readUTF()
                val key = if (inp.readBoolean()) inp.readUTF() else null
                val headers = LinkedHashMap<String, String>()
                repeat(inp.readInt()) { headers[inp.readUTF()] = inp.readUTF() }
                val kind = inp.readByte().toInt()
                val bytes = ByteArray(inp.readInt()).also { inp.readFully(it) }
                if (inp.read() != -1) throw EOFException("trailing bytes")
                val value = if (kind == 0) PublishValue.Json(bytes.toString(Charsets.UTF_8)) else PublishValue.Bytes(bytes)
                return Event(seq, id, topic, value, key, headers, createdAt)
            }
        }
    }
}
