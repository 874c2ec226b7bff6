package dev.ferry.it

import dev.ferry.client.ClientEvent
import dev.ferry.client.ConnectionState
import dev.ferry.client.FerryClient
import dev.ferry.client.FerryClientOptions
import dev.ferry.client.FerryException
import dev.ferry.client.PublishValue
import dev.ferry.client.TokenProvider
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.assertThrows
import java.util.Collections
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger

/** What a user of [FerryClient] sees from a real gateway: token refresh, close-code classes. */
class ClientBehaviourTest {
    private val secret = "kotlin-client-tests-secret-of-at-least-32-bytes"
    private val jwtToml = """
        [auth]
        mode = "jwt"
        hs_secret = "$secret"
        leeway_secs = 0
        [[acl.rules]]
        publish = ["**"]
        subscribe = ["**"]
    """.trimIndent() + "\n"

    @Test
    @Timeout(value = 90, unit = TimeUnit.SECONDS)
    fun `short-lived tokens are refreshed in-band and the connection stays up`() {
        Harness.requireGateway()
        Gateway.start(extraToml = jwtToml).use { gw ->
            val config = Gateway.configFile(null, jwtToml)!!
            val minted = AtomicInteger()
            val provider = TokenProvider {
                withContext(Dispatchers.IO) {
                    val p = Harness.track(ProcessBuilder(Harness.bin, "--config", config.path, "token", "--sub", "dev-tok", "--ttl", "4").start())
                    val token = p.inputStream.bufferedReader().readText().trim()
                    check(p.waitFor(10, TimeUnit.SECONDS) && p.exitValue() == 0) { "ferry token failed" }
                    minted.incrementAndGet()
                    token
                }
            }
            val client = FerryClient(FerryClientOptions(url = gw.wsUrl, tokenProvider = provider, refreshMarginMs = 2_000))
            val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
            val disconnects = Collections.synchronizedList(ArrayList<Int>())
            try {
                runBlocking {
                    scope.launch { client.events.collect { if (it is ClientEvent.Disconnected) disconnects += it.code } }
                    withTimeout(30_000) { client.connect() }
                    assertEquals("dev-tok", client.welcome!!.subject)
                    // Each token lives 4 s and is replaced 2 s before it expires: after 9 s, a 4002 would have come without refreshes.
                    Harness.waitUntil("four token refreshes", 30_000) { minted.get() >= 5 }
                    assertEquals(emptyList<Int>(), disconnects.toList(), "no disconnect: every token was refreshed in time")
                    assertEquals(ConnectionState.OPEN, client.state.value)
                    val topic = Harness.uniqueTopic("kt-token")
                    withTimeout(30_000) { client.publish(topic, PublishValue.json("1")) }
                }
            } finally {
                runBlocking { client.close() }
                scope.cancel()
            }
        }
    }

    @Test
    @Timeout(value = 90, unit = TimeUnit.SECONDS)
    fun `a refused static token ends the client, a terminal close code ends it, a restart code reconnects`() {
        Harness.requireGateway()
        Gateway.start(extraToml = jwtToml).use { gw ->
            val refused = FerryClient(FerryClientOptions(url = gw.wsUrl, token = "not-a-jwt"))
            runBlocking {
                val e = assertThrows<FerryException> { withTimeout(30_000) { refused.connect() } }
                assertEquals("closed", e.code, e.message)
                assertTrue(e.message!!.contains("401"), e.message)
                assertEquals(ConnectionState.CLOSED, refused.state.value)
            }
        }
        Gateway.start(env = mapOf("FERRY_LIMITS_MAX_FRAME_BYTES" to "1024")).use { gw ->
            val client = FerryClient(FerryClientOptions(url = gw.wsUrl))
            runBlocking {
                withTimeout(30_000) { client.connect() }
                val topic = Harness.uniqueTopic("kt-close")
                withTimeout(30_000) { client.publish(topic, PublishValue.json("\"small\"")) }
                // A frame over max_frame_bytes: the gateway closes with 1009, which is terminal.
                val e = assertThrows<FerryException> {
                    withTimeout(30_000) { client.publish(topic, PublishValue.json("\"" + "x".repeat(4_000) + "\"")) }
                }
                assertEquals("closed", e.code, e.message)
                assertEquals(1009, e.closeCode)
                withTimeout(10_000) { client.state.first { it == ConnectionState.CLOSED } }
            }
        }
        val port = Harness.freePort()
        var gw = Gateway.start(port = port)
        val client = FerryClient(FerryClientOptions(url = gw.wsUrl))
        val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
        try {
            runBlocking {
                val codes = Collections.synchronizedList(ArrayList<Int>())
                scope.launch { client.events.collect { if (it is ClientEvent.Disconnected) codes += it.code } }
                withTimeout(30_000) { client.connect() }
                gw.sigterm() // drains and closes with 1001 going_away: reconnect
                Harness.waitUntil("the 1001 close", 30_000) { codes.isNotEmpty() }
                assertEquals(1001, codes.first(), "close codes: $codes")
                gw = Gateway.start(port = port, name = "gateway-restarted")
                withTimeout(60_000) { client.state.first { it == ConnectionState.OPEN } }
            }
        } finally {
            runBlocking { client.close() }
            scope.cancel()
            gw.close()
        }
    }
}
