package dev.ferry.client

import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.receiveAsFlow

/**
 * One subscription to a topic. Records arrive on [messages] once each, in
 * offset order per partition, across reconnects: the subscription remembers
 * per partition the offset after the last record it delivered, resubscribes
 * from there on every new connection, and drops anything below it. A group
 * subscription keeps no positions (the group's committed offsets are its
 * resume point) and may deliver a record again.
 */
public class Subscription internal constructor(
    public val topic: String,
    public val options: SubscribeOptions,
    private val release: suspend (Subscription) -> Unit,
) {
    private val buffer = Channel<FerryMessage>(options.bufferSize)
    private val confirmed = CompletableDeferred<Unit>()

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
    public val messages: Flow<FerryMessage> = buffer.receiveAsFlow()

    /** Waits until the gateway confirmed the subscription the first time; throws if it refused it. */
    public suspend fun awaitReady() {
        confirmed.await()
    }

    /** Per partition, the offset after the last record delivered (the resume point); empty for a group. */
    @Synchronized
    public fun positions(): Map<Int, Long> = HashMap(next)

    /** Stops delivery; [messages] completes. */
    public suspend fun unsubscribe() {
        release(this)
    }

    internal fun resumeFrom(): From? = if (options.group == null && next.isNotEmpty()) From.Offsets(positions()) else null

    @Synchronized
    internal fun confirm(partitions: Map<Int, Long>?) {
        if (options.group == null) partitions?.forEach { (p, o) -> next.putIfAbsent(p, o) }
        confirmed.complete(Unit)
    }

    @Synchronized
    internal fun skipTo(partition: Int, offset: Long) {
        if (options.group == null) next[partition] = offset
    }

    /** Hands a record on, unless it was delivered before; suspends while the collector is [SubscribeOptions.bufferSize] behind. */
    internal suspend fun deliver(message: FerryMessage) {
        if (ended) return
        if (options.group == null) {
            synchronized(this) {
                val expected = next[message.partition]
                if (expected != null && message.offset < expected) return
                next[message.partition] = message.offset + 1
            }
        }
        buffer.send(message)
    }

    internal fun end(error: FerryException?) {
        if (ended) return
        ended = true
        if (error != null) confirmed.completeExceptionally(error) else confirmed.complete(Unit)
        buffer.close(error)
    }
}
