package dev.ferry.simulator

import dev.ferry.client.ClientEvent
import dev.ferry.client.FerryClient
import dev.ferry.client.FerryClientOptions
import dev.ferry.client.FerryException
import dev.ferry.client.PublishValue
import dev.ferry.client.outbox.Outbox
import dev.ferry.client.outbox.OutboxSender
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeoutOrNull
import java.io.File
import kotlin.system.exitProcess

/**
 * A telemetry device on the command line: publishes `--count` events through
 * a durable outbox in `--outbox`, and prints the commands it receives.
 *
 * ```
 * java -jar device-simulator.jar --url ws://HOST:PORT/ws --topic T --count N --outbox DIR [--device ID] [--token JWT]
 * ```
 *
 * Event `i` (0 … N-1) has the value `{"device":ID,"seq":i,"ts":…,"temp":…}`
 * and the key ID. Started again on the same DIR after being killed, it sends
 * what the outbox still holds and appends from where it was, never from 0.
 * Exits 0 once every event is acked; 1 when the gateway ends the connection
 * for good; 2 with a usage error.
 */
private const val USAGE = """usage: java -jar device-simulator.jar --url ws://HOST:PORT/ws --topic T --count N --outbox DIR
                                  [--device ID] [--token JWT] [--commands TOPIC] [--timeout-s S]
  --url       the gateway's WebSocket URL
  --topic     the telemetry topic
  --count     how many events in all (across restarts on the same outbox)
  --outbox    the outbox directory (created if missing)
  --device    the device id: the record key and the "device" field (default "device-1")
  --token     a JWT for a gateway with authentication
  --commands  a topic to receive commands from (default: none)
  --timeout-s give up (exit 3) after this many seconds (default: never)"""

private fun usage(problem: String): Nothing {
    System.err.println("device-simulator: $problem")
    System.err.println(USAGE)
    exitProcess(2)
}

private class Args(argv: Array<String>) {
    private val values = HashMap<String, String>()

    init {
        var i = 0
        while (i < argv.size) {
            val name = argv[i]
            if (name == "--help" || name == "-h") { println(USAGE); exitProcess(0) }
            if (!name.startsWith("--") || name.removePrefix("--") !in KNOWN) usage("unknown argument $name")
            if (i + 1 >= argv.size) usage("$name needs a value")
            values[name.removePrefix("--")] = argv[i + 1]
            i += 2
        }
    }

    fun required(name: String): String = values[name] ?: usage("--$name is required")
    fun optional(name: String): String? = values[name]

    companion object {
        val KNOWN = setOf("url", "topic", "count", "outbox", "device", "token", "commands", "timeout-s")
    }
}

public fun main(argv: Array<String>) {
    val args = Args(argv)
    val url = args.required("url")
    val topic = args.required("topic")
    val count = args.required("count").toLongOrNull()?.takeIf { it >= 0 } ?: usage("--count must be a number >= 0")
    val dir = File(args.required("outbox"))
    val device = args.optional("device") ?: "device-1"
    val timeoutS = args.optional("timeout-s")?.toLongOrNull()
    val code = runBlocking {
        withTimeoutOrNull((timeoutS ?: Long.MAX_VALUE / 1000) * 1000) {
            run(url, topic, count, dir, device, args.optional("token"), args.optional("commands"))
        } ?: run { println("timeout after $timeoutS s"); 3 }
    }
    exitProcess(code)
}

private suspend fun run(url: String, topic: String, count: Long, dir: File, device: String, token: String?, commands: String?): Int {
    val outbox = Outbox.open(dir)
    val start = outbox.appended
    println("outbox ${dir.path}: ${outbox.size} events waiting, appending from seq $start to ${count - 1}")
    val client = FerryClient(FerryClientOptions(url = url, token = token))
    val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    var fatal: FerryException? = null
    scope.launch {
        client.events.collect { e ->
            when (e) {
                is ClientEvent.Connected -> println("connected to node ${e.welcome.node}")
                is ClientEvent.Disconnected -> println("disconnected (${e.code} ${e.reason}), reconnecting: ${e.willReconnect}")
                is ClientEvent.Error -> {
                    println("error: ${e.error.code}: ${e.error.message}")
                    if (e.error.code == "closed") fatal = e.error
                }
                else -> Unit
            }
        }
    }
    scope.launch { runCatching { client.connect() } }
    val sender = OutboxSender(outbox, client)
    var lastReport = 0L
    sender.onAck = { _, _ ->
        val n = sender.ackedCount
        if (n - lastReport >= 250) {
            lastReport = n
            println("acked $n, waiting ${outbox.size}")
        }
    }
    sender.start(scope)
    if (commands != null) {
        scope.launch {
            client.state.first { it == dev.ferry.client.ConnectionState.OPEN }
            try {
                client.subscribe(commands).messages.collect { println("command: ${it.text}") }
            } catch (e: FerryException) {
                println("commands: ${e.code}: ${e.message}")
            }
        }
    }
    var next = start
    while (next < count) {
        val upTo = minOf(count, next + 500)
        val drafts = (next until upTo).map { i ->
            val value = """{"device":${quote(device)},"seq":$i,"ts":${System.currentTimeMillis()},"temp":${20 + (i % 100) / 10.0}}"""
            Outbox.Draft(topic, PublishValue.json(value), key = device)
        }
        val events = outbox.appendAll(drafts)
        check(events.first().seq == next) { "the outbox is at seq ${events.first().seq}, expected $next" }
        next = upTo
        sender.poke()
    }
    while (outbox.size > 0) {
        fatal?.let { println("giving up: ${it.message}"); return 1 }
        withTimeoutOrNull(500) { sender.pending.first { it == 0 } }
    }
    println("done: all $count events acked (${sender.ackedCount} in this run)")
    client.close()
    outbox.close()
    return 0
}

private fun quote(s: String): String = "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\""
