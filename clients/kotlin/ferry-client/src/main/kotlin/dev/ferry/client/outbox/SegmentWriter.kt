package dev.ferry.client.outbox

import java.io.Closeable
import java.io.File
import java.io.IOException
import java.io.RandomAccessFile

/**
 * Appends to one outbox file. The outbox writes through this interface only,
 * so a test can stand in a disk that fills up or fails.
 */
public interface SegmentWriter : Closeable {
    /** The file's length, i.e. where the next write lands. */
    public val size: Long

    /** Appends [bytes]; may write part of them before throwing. */
    @Throws(IOException::class)
    public fun write(bytes: ByteArray)

    /** Flushes to the device (fsync). */
    @Throws(IOException::class)
    public fun sync()

    /** Cuts the file back to [size] (after a failed write). */
    @Throws(IOException::class)
    public fun truncate(size: Long)
}

/** Opens the [SegmentWriter] of a file. */
public fun interface SegmentWriterFactory {
    @Throws(IOException::class)
    public fun open(file: File): SegmentWriter

    public companion object {
        /** Plain files through `RandomAccessFile` (available on every Android version). */
        @JvmField
        public val FILES: SegmentWriterFactory = SegmentWriterFactory { FileSegmentWriter(it) }
    }
}

private class FileSegmentWriter(file: File) : SegmentWriter {
    private val raf = RandomAccessFile(file, "rw").also { it.seek(it.length()) }
    override val size: Long get() = raf.length()

    override fun write(bytes: ByteArray) {
        raf.seek(raf.length())
        raf.write(bytes)
    }

    override fun sync() = raf.fd.sync()

    override fun truncate(size: Long) {
        raf.setLength(size)
        raf.seek(size)
    }

    override fun close() = raf.close()
}
