#!/usr/bin/env python3
"""Ferry soak driver: runs one gateway process under steady mixed load,
samples its resources into a CSV, draws a plot and judges memory growth.

Started by `scripts/soak [MINUTES]` (which builds the release gateway and
the Python venv); see docs/soak.md for what it does and the memory rule.

Load (all on the gateway's embedded Kafka, two topics of 3 partitions):
  - PUBLISHERS sockets, each publishing PUBLISH_RATE records/s (keyed,
    ~200-byte JSON values), at most 64 awaiting their ack;
  - LIVE_SUBSCRIBERS sockets subscribed live to one of the topics, reading
    everything;
  - one churner opening CHURN_RATE short-lived connections per second, each
    doing one of: live subscribe, shared-group subscribe (ack auto),
    replay of the last records with `from.offsets`, publish-and-close, or an
    abrupt TCP drop without a close frame; each stays 0.5-3 s.
Samples every SAMPLE_SECS: RSS, open fds, threads (the gateway exposes no
task count), and ferry_connections / ferry_subscriptions from /metrics.

Memory rule (exit code 1 when broken): RSS at the end (median of the last
3 samples) must be at most GROWTH x RSS after warm-up (median of the 3
samples after WARMUP_SECS) + SLACK_MIB. The slack covers the embedded
Kafka's retention (5 MiB per partition, 6 partitions = 30 MiB), which fills
up during the run by design.
"""

import argparse
import asyncio
import csv
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import websockets

TOPICS = ["soak-a", "soak-b"]
PUBLISHERS = 4
PUBLISH_RATE = 25  # per publisher, records/s
LIVE_SUBSCRIBERS = 10
CHURN_RATE = 4  # new short-lived connections per second
SAMPLE_SECS = 5
WARMUP_SECS = 120
GROWTH = 1.5
SLACK_MIB = 64


class Counters:
    def __init__(self):
        self.published = 0
        self.acked = 0
        self.publish_errors = 0
        self.received = 0
        self.churned = 0
        self.churn_failures = 0
        self.last_offsets = {}  # (topic, partition) -> last acked offset
        self.errors = {}

    def error(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1


def start_gateway(binary, log_path):
    env = dict(os.environ, FERRY_LOG=os.environ.get("FERRY_LOG", "warn,ferry_gateway::app=info"))
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--node-id", "soak"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    deadline = time.time() + 60
    addr = None
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.write(line)
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
            break
    if addr is None:
        proc.kill()
        sys.exit("soak: the gateway did not start (see %s)" % log_path)

    # Keep draining its log so the pipe never fills.
    def drain():
        for line in proc.stderr:
            log.write(line)
        log.close()

    import threading

    threading.Thread(target=drain, daemon=True).start()
    return proc, addr


async def connect(url):
    ws = await websockets.connect(url, subprotocols=["ferry.v1"], max_size=1 << 20, open_timeout=15)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 15))
    assert welcome["type"] == "welcome", welcome
    return ws


async def publisher(url, n, counters, stop):
    pad = "x" * 150
    seq = 0
    while not stop.is_set():
        try:
            ws = await connect(url)
            inflight = asyncio.Semaphore(64)

            async def reader():
                async for text in ws:
                    f = json.loads(text)
                    if f["type"] == "ack":
                        counters.acked += 1
                        counters.last_offsets[(f["topic"], f["partition"])] = f["offset"]
                    elif f["type"] == "error":
                        counters.publish_errors += 1
                        counters.error("publish:" + f.get("code", "?"))
                    inflight.release()

            rtask = asyncio.create_task(reader())
            interval = 1.0 / PUBLISH_RATE
            next_at = time.monotonic()
            while not stop.is_set() and not rtask.done():
                await inflight.acquire()
                seq += 1
                topic = TOPICS[seq % len(TOPICS)]
                frame = {
                    "type": "publish",
                    "id": "p%d-%d" % (n, seq),
                    "topic": topic,
                    "key": "k%d" % (seq % 50),
                    "value": {"n": n, "seq": seq, "pad": pad},
                }
                await ws.send(json.dumps(frame))
                counters.published += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await ws.close()
            rtask.cancel()
        except Exception as e:  # reconnect: the soak measures the gateway, not the driver
            counters.error("publisher:" + type(e).__name__)
            await asyncio.sleep(1)


async def live_subscriber(url, n, counters, stop):
    topic = TOPICS[n % len(TOPICS)]
    while not stop.is_set():
        try:
            ws = await connect(url)
            await ws.send(json.dumps({"type": "subscribe", "id": "s", "topic": topic}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if reply.get("type") != "subscribed":
                counters.error("subscribe:" + reply.get("code", reply.get("type", "?")))
                await ws.close()
                await asyncio.sleep(1)
                continue
            while not stop.is_set():
                try:
                    text = await asyncio.wait_for(ws.recv(), 1)
                except asyncio.TimeoutError:
                    continue
                if '"type":"message"' in text:
                    counters.received += 1
            await ws.close()
        except Exception as e:
            counters.error("subscriber:" + type(e).__name__)
            await asyncio.sleep(1)


async def churn_one(url, counters, rng):
    kind = rng.choice(["live", "group", "replay", "publish", "drop"])
    topic = rng.choice(TOPICS)
    stay = rng.uniform(0.5, 3.0)
    ws = await connect(url)
    try:
        if kind == "live":
            await ws.send(json.dumps({"type": "subscribe", "id": "c", "topic": topic}))
        elif kind == "group":
            frame = {"type": "subscribe", "id": "c", "topic": topic, "group": "soak-workers"}
            await ws.send(json.dumps(frame))
        elif kind == "replay":
            offsets = {
                str(p): max(0, o - 20)
                for (t, p), o in list(counters.last_offsets.items())
                if t == topic
            }
            frame = {"type": "subscribe", "id": "c", "topic": topic, "from": {"offsets": offsets}}
            await ws.send(json.dumps(frame))
        elif kind == "publish":
            frame = {"type": "publish", "id": "c", "topic": topic, "value": {"churn": True}}
            await ws.send(json.dumps(frame))
        if kind == "drop":
            # Abrupt: no close frame, the TCP connection just goes away.
            ws.transport.abort()
            return
        deadline = time.monotonic() + stay
        while time.monotonic() < deadline:
            try:
                text = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if '"type":"error"' in text and '"id":"c"' in text:
                counters.error("churn:" + kind + ":" + json.loads(text).get("code", "?"))
    finally:
        if kind != "drop":
            await ws.close()


async def churner(url, counters, stop):
    rng = random.Random(7)
    running = set()
    while not stop.is_set():
        async def one():
            try:
                await churn_one(url, counters, rng)
                counters.churned += 1
            except Exception as e:
                counters.churn_failures += 1
                counters.error("churn:" + type(e).__name__)

        task = asyncio.create_task(one())
        running.add(task)
        task.add_done_callback(running.discard)
        await asyncio.sleep(1.0 / CHURN_RATE)
    for t in list(running):
        t.cancel()


def metric(text, name):
    m = re.search(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else 0.0


def proc_status(pid):
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]) / 1024.0, int(fields["Threads"])


async def sampler(pid, addr, counters, stop, csv_path, started):
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([
            "seconds", "rss_mib", "open_fds", "threads", "connections", "subscriptions",
            "published", "acked", "publish_errors", "received", "churned",
        ])
        while not stop.is_set():
            rss, threads = proc_status(pid)
            fds = len(os.listdir("/proc/%d/fd" % pid))
            try:
                text = await asyncio.to_thread(
                    lambda: urllib.request.urlopen("http://%s/metrics" % addr, timeout=5).read().decode()
                )
                conns, subs = metric(text, "ferry_connections"), metric(text, "ferry_subscriptions")
            except Exception as e:
                counters.error("metrics:" + type(e).__name__)
                conns = subs = -1
            elapsed = round(time.monotonic() - started, 1)
            w.writerow([
                elapsed, round(rss, 1), fds, threads, int(conns), int(subs), counters.published,
                counters.acked, counters.publish_errors, counters.received, counters.churned,
            ])
            f.flush()
            print(
                "soak: t=%6.0fs rss=%6.1f MiB fds=%4d threads=%3d conns=%4d subs=%4d acked=%d received=%d churned=%d"
                % (elapsed, rss, fds, threads, conns, subs, counters.acked, counters.received, counters.churned),
                flush=True,
            )
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_SECS)
            except asyncio.TimeoutError:
                pass


def plot(csv_path, png_path, title, warm, bound):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    t = [float(r["seconds"]) / 60 for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    ax = axes[0][0]
    ax.plot(t, [float(r["rss_mib"]) for r in rows], label="RSS")
    ax.axhline(warm, color="gray", ls=":", label="after warm-up")
    ax.axhline(bound, color="red", ls="--", label="bound")
    ax.axvline(WARMUP_SECS / 60, color="gray", lw=0.5)
    ax.set_ylabel("MiB")
    ax.set_title("resident memory")
    ax.legend(loc="lower right")
    ax = axes[0][1]
    ax.plot(t, [int(r["open_fds"]) for r in rows], label="open fds")
    ax.plot(t, [int(r["threads"]) for r in rows], label="threads")
    ax.set_title("file descriptors and threads")
    ax.legend(loc="lower right")
    ax = axes[1][0]
    ax.plot(t, [int(r["connections"]) for r in rows], label="ferry_connections")
    ax.plot(t, [int(r["subscriptions"]) for r in rows], label="ferry_subscriptions")
    ax.set_title("connections and subscriptions (/metrics)")
    ax.set_xlabel("minutes")
    ax.legend(loc="lower right")
    ax = axes[1][1]
    per_min = lambda key: [  # noqa: E731
        (float(b[key]) - float(a[key])) / max(1e-9, float(b["seconds"]) - float(a["seconds"])) * 60
        for a, b in zip(rows, rows[1:])
    ]
    ax.plot(t[1:], per_min("acked"), label="acks/min")
    ax.plot(t[1:], per_min("received"), label="deliveries/min")
    ax.plot(t[1:], [x * 10 for x in per_min("churned")], label="churned conns/min x10")
    ax.set_title("load")
    ax.set_xlabel("minutes")
    ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "soak.csv")
    png_path = os.path.join(args.out, "soak.png")
    proc, addr = start_gateway(args.binary, os.path.join(args.out, "gateway.log"))
    url = "ws://%s/ws" % addr
    print("soak: gateway pid %d on %s for %.1f minutes; output in %s" % (proc.pid, url, args.minutes, args.out), flush=True)
    counters = Counters()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Create the topics one at a time before the load starts.
    ws = await connect(url)
    for topic in TOPICS:
        await ws.send(json.dumps({"type": "publish", "id": topic, "topic": topic, "value": "first"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if reply.get("type") != "ack":
            sys.exit("soak: could not create topic %s: %s" % (topic, reply))
    await ws.close()
    started = time.monotonic()
    tasks = [asyncio.create_task(sampler(proc.pid, addr, counters, stop, csv_path, started))]
    tasks += [asyncio.create_task(publisher(url, n, counters, stop)) for n in range(PUBLISHERS)]
    tasks += [asyncio.create_task(live_subscriber(url, n, counters, stop)) for n in range(LIVE_SUBSCRIBERS)]
    tasks.append(asyncio.create_task(churner(url, counters, stop)))
    try:
        await asyncio.wait_for(stop.wait(), args.minutes * 60)
    except asyncio.TimeoutError:
        pass
    stop.set()
    await asyncio.wait(tasks, timeout=15)
    alive = proc.poll() is None
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()

    rows = list(csv.DictReader(open(csv_path)))
    after = [r for r in rows if float(r["seconds"]) >= WARMUP_SECS]
    if len(after) < 6:
        print("soak: too short to judge (needs > %d s of samples after the %d s warm-up)" % (6 * SAMPLE_SECS, WARMUP_SECS))
        warm = end = float(rows[-1]["rss_mib"]) if rows else 0.0
        verdict_ok = alive
    else:
        warm = statistics.median(float(r["rss_mib"]) for r in after[:3])
        end = statistics.median(float(r["rss_mib"]) for r in rows[-3:])
        verdict_ok = alive and end <= GROWTH * warm + SLACK_MIB
    bound = GROWTH * warm + SLACK_MIB
    rss = [float(r["rss_mib"]) for r in rows]
    fds = [int(r["open_fds"]) for r in rows]
    threads = [int(r["threads"]) for r in rows]
    summary = {
        "minutes": round(float(rows[-1]["seconds"]) / 60, 1) if rows else 0,
        "rss_after_warmup_mib": round(warm, 1),
        "rss_end_mib": round(end, 1),
        "rss_max_mib": max(rss) if rss else 0,
        "rss_bound_mib": round(bound, 1),
        "fds_min_max": [min(fds), max(fds)] if fds else [],
        "threads_min_max": [min(threads), max(threads)] if threads else [],
        "published": counters.published,
        "acked": counters.acked,
        "publish_errors": counters.publish_errors,
        "received": counters.received,
        "churned_connections": counters.churned,
        "churn_failures": counters.churn_failures,
        "errors": counters.errors,
        "gateway_alive_at_end": alive,
        "passed": verdict_ok,
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    title = "ferry soak: %s min, RSS %.1f -> %.1f MiB (bound %.1f)" % (summary["minutes"], warm, end, bound)
    plot(csv_path, png_path, title, warm, bound)
    print("soak: plot %s, samples %s" % (png_path, csv_path))
    if not alive:
        print("soak: FAILED: the gateway died during the run")
        return 1
    if not verdict_ok:
        print("soak: FAILED: RSS at the end %.1f MiB > %.1f x %.1f + %d MiB" % (end, GROWTH, warm, SLACK_MIB))
        return 1
    print("soak: passed: RSS at the end %.1f MiB <= %.1f MiB" % (end, bound))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
