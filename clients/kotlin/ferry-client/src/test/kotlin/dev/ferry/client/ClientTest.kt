package dev.ferry.client

import kotlinx.coroutines.async
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.net.ServerSocket

/** The client's own behaviour, without a gateway. */
class ClientTest {
    private fun deadUrl(): String = "ws://127.0.0.1:${ServerSocket(0).use { it.localPort }}/ws"

    private fun message(partition: Int, offset: Long) =
        FerryMessage("t", partition, offset, null, null, emptyList(), "$offset".toByteArray(), true)

    @Test
    fun `a subscription delivers each offset once and resumes after the last one`() = runBlocking {
        val sub = Subscription("t", SubscribeOptions()) { }
        sub.confirm(mapOf(0 to 10L, 1 to 0L))
        assertEquals(From.Offsets(mapOf(0 to 10L, 1 to 0L)), sub.resumeFrom())
        for (o in listOf(10L, 11L, 9L, 11L, 12L)) sub.deliver(message(0, o)) // 9 and the second 11 are old
        sub.deliver(message(1, 0))
        assertEquals(listOf(10L, 11L, 12L, 0L), sub.messages.take(4).toList().map { it.offset })
        assertEquals(mapOf(0 to 13L, 1 to 1L), sub.positions())
        sub.skipTo(1, 50) // a gap: the gateway resumed at 50
        assertEquals(From.Offsets(mapOf(0 to 13L, 1 to 50L)), sub.resumeFrom())
    }

    @Test
    fun `a snapshot subscription delivers the snapshot, then live records from snapshot_end's positions`() = runBlocking {
        val sub = Subscription("t", SubscribeOptions(from = From.Snapshot)) { }
        val positions = mapOf(0 to 12L, 1 to 7L)
        sub.confirm(positions) // `subscribed` states the snapshot's positions
        assertEquals(null, sub.resumeFrom(), "lost before snapshot_end: the snapshot again")
        val snapshot = { p: Int, o: Long -> FerryMessage("t", p, o, null, "k$p-$o".toByteArray(), emptyList(), "1".toByteArray(), true, snapshot = true) }
        sub.deliver(snapshot(1, 6)); sub.deliver(snapshot(0, 3)); sub.deliver(snapshot(0, 9))
        assertEquals(emptyMap<Int, Long>(), sub.positions(), "a snapshot's records do not move the positions")
        sub.endSnapshot(positions)
        assertEquals(From.Offsets(positions), sub.resumeFrom())
        sub.deliver(message(0, 11)) // older than the positions: not delivered
        sub.deliver(message(0, 12))
        assertNull(withTimeoutOrNull(100) { sub.awaitSnapshot() }, "the collector has not taken the snapshot yet")
        val got = async { sub.messages.take(4).toList() }
        assertEquals(positions, withTimeout(5_000) { sub.awaitSnapshot() })
        assertEquals(listOf(6L to true, 3L to true, 9L to true, 12L to false), got.await().map { it.offset to it.snapshot })
        assertEquals(mapOf(0 to 13L, 1 to 7L), sub.positions())
        assertEquals("bad_request", assertThrows<FerryException> { Subscription("t", SubscribeOptions()) { }.awaitSnapshot() }.code)
    }

    @Test
    fun `a snapshot subscription that ends before snapshot_end fails awaitSnapshot`() = runBlocking {
        val sub = Subscription("t", SubscribeOptions(from = From.Snapshot)) { }
        sub.end(FerryException("forbidden", "gone"))
        assertEquals("forbidden", assertThrows<FerryException> { sub.awaitSnapshot() }.code)
    }

    @Test
    fun `a group subscription keeps no positions and may see a record again`() = runBlocking {
        val sub = Subscription("t", SubscribeOptions(group = "g")) { }
        sub.confirm(null)
        sub.deliver(message(0, 5)); sub.deliver(message(0, 5))
        assertEquals(2, sub.messages.take(2).toList().size)
        assertEquals(null, sub.resumeFrom())
    }

    @Test
    fun `publishes wait while offline and fail with closed when the client closes`() = runBlocking {
        val client = FerryClient(FerryClientOptions(url = deadUrl(), reconnect = Backoff(50, 200)))
        val publish = async { runCatching { client.publish("t", PublishValue.json("1")) } }
        val connecting = async { runCatching { client.connect() } }
        withTimeout(10_000) { client.state.first { it == ConnectionState.RECONNECTING } }
        client.close()
        assertEquals("closed", (publish.await().exceptionOrNull() as FerryException).code)
        assertEquals("closed", (connecting.await().exceptionOrNull() as FerryException).code)
        assertEquals(ConnectionState.CLOSED, client.state.value)
        assertThrows<FerryException> { client.publish("t", PublishValue.json("1")) }.also { assertEquals("closed", it.code) }
    }

    @Test
    fun `pause holds reconnecting until resume`() = runBlocking {
        val client = FerryClient(FerryClientOptions(url = deadUrl(), reconnect = Backoff(50, 200)))
        async { runCatching { client.connect() } }
        withTimeout(10_000) { client.state.first { it == ConnectionState.RECONNECTING } }
        client.pause()
        assertEquals(ConnectionState.PAUSED, client.state.value)
        Thread.sleep(300) // several backoff windows: a paused client stays paused
        assertEquals(ConnectionState.PAUSED, client.state.value)
        client.resume()
        withTimeout(10_000) { client.state.first { it == ConnectionState.RECONNECTING } }
        client.close()
    }

    @Test
    fun `requests check what they can before sending`() = runBlocking {
        val client = FerryClient(FerryClientOptions(url = deadUrl()))
        assertEquals("invalid_topic", assertThrows<FerryException> { client.subscribe("__consumer_offsets") }.code)
        assertEquals("invalid_topic", assertThrows<FerryException> { client.publish("a b", PublishValue.json("1")) }.code)
        assertEquals("bad_request", assertThrows<FerryException> {
            client.publish("t", PublishValue.json("1"), PublishOptions(headers = mapOf("ferry-id" to "x")))
        }.code)
        client.subscribe("t")
        assertEquals("bad_request", assertThrows<FerryException> { client.subscribe("t") }.code)
        assertEquals("not_connected", assertThrows<FerryException> { client.ping() }.code)
        client.close()
    }

    @Test
    fun `the HTTP publish endpoint sits next to the WebSocket`() {
        assertEquals("http://h:8080/v1/publish", HttpPublisher.urlFor("ws://h:8080/ws"))
        assertEquals("https://hub.example.com/v1/publish", HttpPublisher.urlFor("wss://hub.example.com/ws?x=1"))
        assertTrue(HttpPublisher.urlFor("wss://hub.example.com").endsWith("/v1/publish"))
    }
}
