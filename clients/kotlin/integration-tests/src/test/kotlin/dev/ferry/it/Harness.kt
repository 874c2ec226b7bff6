package dev.ferry.it

import org.junit.jupiter.api.Assumptions.assumeTrue
import java.io.File
import java.net.ServerSocket
import java.util.UUID
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/**
 * What the tests run against: gateway processes of `FERRY_BIN`, on the
 * embedded Kafka of a first gateway by default, or on the broker that
 * `FERRY_TEST_KAFKA=host:port` names. Every process started here is written
 * to `FERRY_TEST_PIDS` (when set) so the calling script can clean up even
 * after this JVM dies.
 */
object Harness {
    val bin: String? = System.getenv("FERRY_BIN")?.takeIf { it.isNotBlank() }
    val realKafka: String? = System.getenv("FERRY_TEST_KAFKA")?.takeIf { it.isNotBlank() }
    val simulatorJar: String = System.getProperty("ferry.simulatorJar") ?: "../examples/device-simulator/target/device-simulator.jar"
    private val pidFile: File? = System.getenv("FERRY_TEST_PIDS")?.let(::File)

    /** Skips the calling test unless a gateway binary was given. */
    fun requireGateway() {
        assumeTrue(bin != null, "FERRY_BIN is not set: run clients/kotlin/scripts/test")
        check(File(bin!!).canExecute()) { "FERRY_BIN=$bin is not an executable" }
    }

    fun uniqueTopic(prefix: String): String = "$prefix-${UUID.randomUUID().toString().replace("-", "")}"

    fun freePort(): Int = ServerSocket(0).use { it.localPort }

    fun track(p: Process): Process {
        pidFile?.appendText("${p.pid()}\n")
        return p
    }

    /** Waits until [cond] holds, polling; fails with [what] after [timeoutMs]. */
    fun waitUntil(what: String, timeoutMs: Long = 30_000, cond: () -> Boolean) {
        val deadline = System.currentTimeMillis() + timeoutMs
        while (!cond()) {
            if (System.currentTimeMillis() > deadline) throw AssertionError("timed out after $timeoutMs ms waiting for $what")
            Thread.sleep(20)
        }
    }
}

/** A process whose output lines are kept and can be waited on. */
open class Proc(cmd: List<String>, env: Map<String, String> = emptyMap(), val name: String) : AutoCloseable {
    val process: Process
    val lines = java.util.Collections.synchronizedList(ArrayList<String>())
    private val queue = LinkedBlockingQueue<String>()

    init {
        val pb = ProcessBuilder(cmd).redirectErrorStream(true)
        pb.environment().keys.removeIf { it.startsWith("FERRY_") }
        pb.environment().putAll(env)
        process = Harness.track(pb.start())
        Thread({
            try {
                process.inputStream.bufferedReader().forEachLine { line ->
                    lines += line
                    queue += line
                    if (System.getenv("FERRY_TEST_VERBOSE") == "1") println("[$name] $line")
                }
            } catch (_: java.io.IOException) {
                // the process was killed and its pipe closed
            }
        }, "$name-output").apply { isDaemon = true }.start()
    }

    /** The next output line matching [pred] (lines already consumed by earlier waits are skipped). */
    fun awaitLine(what: String, timeoutMs: Long = 30_000, pred: (String) -> Boolean): String {
        val deadline = System.currentTimeMillis() + timeoutMs
        while (true) {
            val left = deadline - System.currentTimeMillis()
            val line = if (left > 0) queue.poll(left, TimeUnit.MILLISECONDS) else null
                ?: throw AssertionError("$name: no line with $what within $timeoutMs ms; output:\n${lines.takeLast(40).joinToString("\n")}")
            if (line == null) throw AssertionError("$name: no line with $what within $timeoutMs ms; output:\n${lines.takeLast(40).joinToString("\n")}")
            if (pred(line)) return line
        }
    }

    fun sigkill() {
        process.destroyForcibly()
        process.waitFor(10, TimeUnit.SECONDS)
    }

    fun sigterm() {
        process.destroy()
        if (!process.waitFor(15, TimeUnit.SECONDS)) sigkill()
    }

    fun awaitExit(timeoutMs: Long): Int {
        if (!process.waitFor(timeoutMs, TimeUnit.MILLISECONDS)) {
            throw AssertionError("$name did not exit within $timeoutMs ms; output:\n${lines.takeLast(40).joinToString("\n")}")
        }
        return process.exitValue()
    }

    override fun close() {
        if (process.isAlive) sigkill()
    }
}

/** A gateway process; [port] 0 picks a free one. */
class Gateway private constructor(cmd: List<String>, env: Map<String, String>, name: String) : Proc(cmd, env, name) {
    lateinit var addr: String
        private set
    var embeddedBootstrap: String? = null
        private set

    val wsUrl: String get() = "ws://$addr/ws"

    companion object {
        /**
         * Starts a gateway on [port] (0: any). [brokers] null: on the test's Kafka
         * (the real broker, or an embedded one of its own).
         */
        fun start(
            port: Int = 0,
            brokers: String? = Harness.realKafka,
            name: String = "gateway",
            /** More TOML (whole sections), e.g. `[auth]`. */
            extraToml: String = "",
            env: Map<String, String> = emptyMap(),
        ): Gateway {
            val args = arrayListOf(Harness.bin!!, "--listen", "127.0.0.1:$port")
            val config = configFile(brokers, extraToml)
            if (config != null) args += listOf("--config", config.path)
            val gw = Gateway(args, env + ("FERRY_LOG" to "info"), name)
            val line = gw.awaitLine("listening on", 60_000) { it.contains("embedded kafka bootstrap=") || it.contains("listening on http://") }
            if (line.contains("embedded kafka bootstrap=")) {
                gw.embeddedBootstrap = line.substringAfter("embedded kafka bootstrap=").trim().split(' ')[0]
                gw.awaitLine("listening on", 60_000) { it.contains("listening on http://") }.let { gw.addr = it.substringAfter("listening on http://").split(' ')[0] }
            } else {
                gw.addr = line.substringAfter("listening on http://").split(' ')[0]
            }
            return gw
        }

        /** The TOML of a gateway on [brokers] (null: its own embedded Kafka) plus [extraToml]; null when there is nothing to say. */
        fun configFile(brokers: String?, extraToml: String): File? {
            if (brokers == null && extraToml.isEmpty()) return null
            val config = File.createTempFile("ferry-kt-", ".toml").apply { deleteOnExit() }
            config.writeText(buildString {
                if (brokers != null) {
                    append("[kafka]\nbrokers = \"$brokers\"\nauto_create_topics = true\n")
                    // The mock cluster answers fetches only when this wait expires.
                    if (brokers != Harness.realKafka) append("[kafka.librdkafka]\n\"fetch.wait.max.ms\" = \"5\"\n")
                }
                append(extraToml)
            })
            return config
        }
    }
}

/** One record read back from Kafka by kcat, independent of Ferry. */
data class KafkaRecord(val partition: Int, val offset: Long, val headers: Map<String, String>, val value: String)

object Kcat {
    /** Every record of [topic] from the beginning, once at least [atLeast] are there. */
    fun readAll(bootstrap: String, topic: String, atLeast: Int, timeoutMs: Long = 60_000): List<KafkaRecord> {
        val deadline = System.currentTimeMillis() + timeoutMs
        var last = emptyList<KafkaRecord>()
        while (System.currentTimeMillis() < deadline) {
            val p = Harness.track(
                ProcessBuilder("kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
                    "-f", "%p\\t%o\\t%h\\t%s\\n").redirectErrorStream(false).start()
            )
            val out = p.inputStream.bufferedReader().readText()
            if (!p.waitFor(30, TimeUnit.SECONDS)) p.destroyForcibly()
            last = out.lineSequence().filter { it.isNotBlank() }.map { line ->
                val (part, off, hdrs, value) = line.split('\t', limit = 4)
                val headers = hdrs.split(',').filter { it.contains('=') }.associate { it.substringBefore('=') to it.substringAfter('=') }
                KafkaRecord(part.toInt(), off.toLong(), headers, value)
            }.toList()
            if (last.size >= atLeast) return last
            Thread.sleep(200)
        }
        throw AssertionError("kcat read ${last.size} records of $topic, expected at least $atLeast")
    }

    /** Produces [values] to [topic] (one record per value, key [key]). */
    fun produce(bootstrap: String, topic: String, key: String, values: List<String>) {
        val p = Harness.track(ProcessBuilder("kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t").redirectErrorStream(true).start())
        p.outputStream.bufferedWriter().use { w -> for (v in values) w.write("$key\t$v\n") }
        if (!p.waitFor(30, TimeUnit.SECONDS)) {
            p.destroyForcibly()
            throw AssertionError("kcat -P did not finish")
        }
        check(p.exitValue() == 0) { "kcat -P failed: ${p.inputStream.bufferedReader().readText()}" }
    }
}
