package dev.ferry.it

import dev.ferry.client.Backoff
import dev.ferry.client.FerryClient
import dev.ferry.client.FerryClientOptions
import dev.ferry.client.PublishValue
import dev.ferry.client.outbox.Outbox
import dev.ferry.client.outbox.OutboxSender
import dev.ferry.client.outbox.OutboxSenderConfig
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.util.concurrent.TimeUnit

/** With no WebSocket to be had, the outbox goes out over gzip `POST /v1/publish`. */
class HttpFallbackTest {
    @TempDir
    lateinit var tmp: File

    @Test
    @Timeout(value = 120, unit = TimeUnit.SECONDS)
    fun `the outbox is sent over HTTP while the socket is unavailable`() {
        Harness.requireGateway()
        Gateway.start().use { gw ->
            val bootstrap = Harness.realKafka ?: gw.embeddedBootstrap!!
            val topic = Harness.uniqueTopic("kt-http")
            // A path where no WebSocket answers (HTTP 404): the client keeps retrying, the sender falls back.
            val client = FerryClient(FerryClientOptions(url = "ws://${gw.addr}/no-websocket-here", reconnect = Backoff(100, 1_000)))
            val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
            Outbox.open(File(tmp, "outbox")).use { outbox ->
                outbox.appendAll((0 until 1_200).map { Outbox.Draft(topic, PublishValue.json("""{"seq":$it}"""), key = "dev-http") })
                scope.launch { runCatching { client.connect() } }
                val sender = OutboxSender(outbox, client, OutboxSenderConfig(httpFallbackAfterMs = 300))
                sender.start(scope)
                runBlocking { withTimeout(60_000) { sender.awaitEmpty() } }
                assertEquals(0, outbox.size)
            }
            runBlocking { client.close() }
            scope.cancel()
            val records = Kcat.readAll(bootstrap, topic, atLeast = 1_200)
            val bySeq = records.groupBy { Regex("\"seq\":(\\d+)").find(it.value)!!.groupValues[1].toInt() }
            assertEquals((0 until 1_200).toSet(), bySeq.keys, "every event is in Kafka")
            for ((seq, copies) in bySeq) assertEquals(1, copies.map { it.headers["ferry-id"] }.toSet().size, "seq $seq: one ferry-id")
        }
    }
}
