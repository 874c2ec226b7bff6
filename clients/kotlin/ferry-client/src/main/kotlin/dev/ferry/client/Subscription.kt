package dev.ferry.client

import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow

/**
 * One subscription to a topic. Records arrive on [messages] once each, in
 * offset order per partition, across reconnects: the subscription remembers
 * per partition the offset after the last record it delivered, resubscribes
 * from there on every new connection, and drops anything below it. A group
 * subscription keeps no positions (the group's committed offsets are its
 * resume point) and may deliver a record again.
 *
 * A [From.Snapshot] subscription first delivers the latest record of every
 * key, each with [FerryMessage.snapshot] set, then live records from exactly
 * the positions of the gateway's `snapshot_end` ([awaitSnapshot] returns
 * them). It keeps no positions until `snapshot_end`: a connection lost
 * before it subscribes from the snapshot again (its records come again),
 * one lost after it resumes from the positions, without a snapshot.
 */
public class Subscription internal constructor(
    public val topic: String,
    public val options: SubscribeOptions,
    private val release: suspend (Subscription) -> Unit,
) {
    /** Records, and the end of a snapshot in its place among them. */
    private val buffer = Channel<Any>(options.bufferSize)
    private val confirmed = CompletableDeferred<Unit>()
    private val snapshotTaken = CompletableDeferred<Map<Int, Long>>()

    /** Marks where the snapshot ends among the records of [buffer]. */
    private class SnapshotEnd(val positions: Map<Int, Long>)

    /** A snapshot subscription before its `snapshot_end`. Touched only on the client's serial dispatcher. */
    private var inSnapshot: Boolean = options.from == From.Snapshot && options.group == null

    /** Partition -> next offset to deliver. Touched only on the client's serial dispatcher. */
    internal val next = HashMap<Int, Long>()

    /** Id of the subscribe request in flight on the current connection. */
    internal var requestId: String? = null

    /** Set once the subscription ended. */
    internal var ended: Boolean = false
        private set

    /**
     * The records, for one collector. The flow completes after [unsubscribe]
     * and fails with the gateway's error when it refused or ended the
     * subscription, or with `closed` when the client closed.
     */
    public val messages: Flow<FerryMessage> = flow {
        for (item in buffer) {
            when (item) {
                is FerryMessage -> emit(item)
                is SnapshotEnd -> snapshotTaken.complete(item.positions)
            }
        }
    }

    /** Waits until the gateway confirmed the subscription the first time; throws if it refused it. */
    public suspend fun awaitReady() {
        confirmed.await()
    }

    /**
     * For a [From.Snapshot] subscription: waits until the collector of
     * [messages] has taken every record of the snapshot, and returns the
     * positions live records follow from (`snapshot_end`). Not from inside
     * that collector (it would wait for itself). Throws if the subscription
     * ends first, and `bad_request` for a subscription not from a snapshot.
     */
    public suspend fun awaitSnapshot(): Map<Int, Long> {
        if (options.from != From.Snapshot || options.group != null) {
            throw FerryException("bad_request", "the subscription to \"$topic\" does not start from a snapshot")
        }
        return snapshotTaken.await()
    }

    /**
     * Per partition, the offset after the last record delivered (the resume
     * point); empty for a group, and for a snapshot subscription until its
     * `snapshot_end`.
     */
    @Synchronized
    public fun positions(): Map<Int, Long> = HashMap(next)

    /** Stops delivery; [messages] completes. */
    public suspend fun unsubscribe() {
        release(this)
    }

    internal fun resumeFrom(): From? = if (options.group == null && next.isNotEmpty()) From.Offsets(positions()) else null

    @Synchronized
    internal fun confirm(partitions: Map<Int, Long>?) {
        if (options.group == null && !inSnapshot) partitions?.forEach { (p, o) -> next.putIfAbsent(p, o) }
        confirmed.complete(Unit)
    }

    @Synchronized
    internal fun skipTo(partition: Int, offset: Long) {
        if (options.group == null) next[partition] = offset
    }

    /** Hands a record on, unless it was delivered before; suspends while the collector is [SubscribeOptions.bufferSize] behind. */
    internal suspend fun deliver(message: FerryMessage) {
        if (ended) return
        // A snapshot's records are older than the positions live records start
        // from: they are never duplicates, and `snapshot_end` sets the positions.
        if (options.group == null && !message.snapshot) {
            synchronized(this) {
                val expected = next[message.partition]
                if (expected != null && message.offset < expected) return
                next[message.partition] = message.offset + 1
            }
        }
        buffer.send(message)
    }

    /** The snapshot is complete: live records follow from [positions], the resume point from now on. */
    internal suspend fun endSnapshot(positions: Map<Int, Long>) {
        if (ended || !inSnapshot) return
        synchronized(this) {
            inSnapshot = false
            next.clear()
            next.putAll(positions)
        }
        buffer.send(SnapshotEnd(positions))
    }

    internal fun end(error: FerryException?) {
        if (ended) return
        ended = true
        if (error != null) confirmed.completeExceptionally(error) else confirmed.complete(Unit)
        snapshotTaken.completeExceptionally(error ?: FerryException("closed", "the subscription to \"$topic\" ended before its snapshot did"))
        buffer.close(error)
    }
}
