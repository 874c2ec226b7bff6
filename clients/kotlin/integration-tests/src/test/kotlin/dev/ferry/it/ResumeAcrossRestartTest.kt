package dev.ferry.it

import dev.ferry.client.ClientEvent
import dev.ferry.client.ConnectionState
import dev.ferry.client.FerryClient
import dev.ferry.client.FerryClientOptions
import dev.ferry.client.FerryMessage
import dev.ferry.client.Backoff
import dev.ferry.client.PublishValue
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import java.util.Collections
import java.util.concurrent.TimeUnit

/**
 * A subscription resumes across a gateway node restart with no gap: the node
 * the client is connected to is killed, records are produced while it is
 * down, and it comes back on the same address. The client reconnects,
 * resubscribes from its offsets, and gets every record exactly once, in
 * offset order per partition.
 */
class ResumeAcrossRestartTest {
    @Test
    @Timeout(value = 180, unit = TimeUnit.SECONDS)
    fun `a subscription resumes across a gateway restart with no gap`() {
        Harness.requireGateway()
        // The Kafka outlives the node: the real broker, or the embedded Kafka of another node.
        val kafkaNode = if (Harness.realKafka == null) Gateway.start(name = "kafka-node") else null
        val bootstrap = Harness.realKafka ?: kafkaNode!!.embeddedBootstrap!!
        val port = Harness.freePort()
        var node = Gateway.start(port = port, brokers = bootstrap, name = "node-1")
        val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
        val client = FerryClient(FerryClientOptions(url = node.wsUrl, reconnect = Backoff(initialDelayMs = 100, maxDelayMs = 1_000)))
        try {
            runBlocking {
                val disconnects = Collections.synchronizedList(ArrayList<Int>())
                scope.launch { client.events.collect { if (it is ClientEvent.Disconnected) disconnects += it.code } }
                withTimeout(30_000) { client.connect() }
                val topic = Harness.uniqueTopic("kt-resume")
                // Create the topic where the Kafka lives (the embedded one creates topics on first use by its own node).
                FerryClient(FerryClientOptions(url = (kafkaNode ?: node).wsUrl)).let { creator ->
                    withTimeout(30_000) { creator.connect(); creator.publish(topic, PublishValue.json("\"before\"")) }
                    creator.close()
                }
                val sub = client.subscribe(topic)
                val got = Collections.synchronizedList(ArrayList<FerryMessage>())
                scope.launch { sub.messages.collect { got += it } }
                withTimeout(30_000) { sub.awaitReady() }

                val batches = (0 until 3).map { b -> (0 until 200).map { i -> """{"batch":$b,"i":$i}""" } }
                Kcat.produce(bootstrap, topic, "k", batches[0].take(100))
                // Spread over partitions with distinct keys, too.
                Kcat.produce(bootstrap, topic, "other", batches[0].drop(100))
                Harness.waitUntil("the first batch", 60_000) { got.size >= 200 }

                node.sigkill()
                Kcat.produce(bootstrap, topic, "k", batches[1])
                Harness.waitUntil("the client to notice", 30_000) { disconnects.isNotEmpty() }
                node = Gateway.start(port = port, brokers = bootstrap, name = "node-1-restarted")
                withTimeout(60_000) { client.state.first { it == ConnectionState.OPEN } }
                Kcat.produce(bootstrap, topic, "other", batches[2])
                Harness.waitUntil("all 600 records", 90_000) { got.size >= 600 }
                Thread.sleep(300) // nothing more may come: no duplicates

                val values = got.map { it.text!! }
                assertEquals(batches.flatten().toSet(), values.toSet(), "every record, none missing")
                assertEquals(values.size, values.toSet().size, "no record twice")
                for ((partition, records) in got.groupBy { it.partition }) {
                    val offsets = records.map { it.offset }
                    assertEquals((offsets.first() until offsets.first() + offsets.size).toList(), offsets, "partition $partition: contiguous offsets, in order")
                }
                println("ResumeAcrossRestartTest: ${got.size} records over ${got.map { it.partition }.toSet().size} partitions; disconnects $disconnects")
            }
        } finally {
            runBlocking { client.close() }
            scope.cancel()
            node.close()
            kafkaNode?.close()
        }
    }
}
