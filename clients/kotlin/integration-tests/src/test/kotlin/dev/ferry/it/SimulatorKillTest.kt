package dev.ferry.it

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.util.concurrent.TimeUnit

/**
 * The outbox from outside: the device simulator publishes 10,000 events, is
 * SIGKILLed twice mid-stream and started again on the same outbox directory.
 * Afterwards Kafka (read by kcat, not through Ferry) holds every event, and
 * every duplicate carries the same `ferry-id`.
 */
class SimulatorKillTest {
    @TempDir
    lateinit var tmp: File

    private fun simulator(url: String, topic: String, count: Int, outbox: File, run: Int) = Proc(
        listOf("java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-jar", Harness.simulatorJar,
            "--url", url, "--topic", topic, "--count", count.toString(), "--outbox", outbox.path, "--device", "dev-kill"),
        name = "simulator-$run",
    )

    /** Acked count of an `acked N, waiting M` progress line. */
    private fun acked(line: String): Int? = Regex("^acked (\\d+),").find(line)?.groupValues?.get(1)?.toInt()

    @Test
    @Timeout(value = 240, unit = TimeUnit.SECONDS)
    fun `10000 events survive two SIGKILLs, duplicates share their ferry-id`() {
        Harness.requireGateway()
        val count = 10_000
        Gateway.start().use { gw ->
            val bootstrap = Harness.realKafka ?: gw.embeddedBootstrap!!
            val topic = Harness.uniqueTopic("kt-sim")
            val outbox = File(tmp, "outbox")

            // Two runs killed mid-stream, each after it has had some events acked.
            for ((run, killAfter) in listOf(1 to 2_000, 2 to 1_500)) {
                simulator(gw.wsUrl, topic, count, outbox, run).use { sim ->
                    sim.awaitLine("$killAfter events acked", 90_000) { line ->
                        assertTrue(!line.startsWith("done"), "run $run finished before it could be killed")
                        (acked(line) ?: 0) >= killAfter
                    }
                    sim.sigkill()
                    assertEquals(137, sim.process.exitValue(), "killed by SIGKILL")
                }
            }
            val fromSeq = Regex("appending from seq (\\d+)")
            simulator(gw.wsUrl, topic, count, outbox, 3).use { sim ->
                val start = sim.awaitLine("the resume point", 30_000) { it.startsWith("outbox ") }
                val resumed = fromSeq.find(start)!!.groupValues[1].toInt()
                assertEquals(count, resumed, "every event was appended before the second kill, so the third run appends none: $start")
                assertEquals(0, sim.awaitExit(120_000), "the simulator exits 0 once every event is acked")
                assertTrue(sim.lines.any { it.startsWith("done: all $count events acked") })
            }

            val records = Kcat.readAll(bootstrap, topic, atLeast = count)
            val seqRe = Regex("\"seq\":(\\d+)")
            val bySeq = records.groupBy { r -> seqRe.find(r.value)!!.groupValues[1].toInt() }
            assertEquals((0 until count).toSet(), bySeq.keys, "every event is in Kafka, and nothing else")
            for ((seq, copies) in bySeq) {
                val ids = copies.map { it.headers["ferry-id"] }.toSet()
                assertEquals(1, ids.size, "seq $seq: all copies carry one ferry-id, got $ids")
                assertTrue(ids.single()!!.isNotEmpty())
            }
            val distinctIds = records.map { it.headers["ferry-id"] }.toSet()
            assertEquals(count, distinctIds.size, "one ferry-id per event")
            println("SimulatorKillTest: ${records.size} records for $count events (${records.size - count} duplicates, de-duplicated by ferry-id)")
        }
    }
}
