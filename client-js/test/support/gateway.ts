/**
 * The real gateway for integration and browser tests: start `ferry` on a
 * free loopback port with its embedded Kafka (or pointed at another Kafka,
 * for several nodes sharing one), wait until it is ready, stop it; a TCP
 * proxy that a test can cut; `kcat` helpers to produce and consume from
 * outside the gateway.
 *
 * The binary is `../target/debug/ferry` (override with FERRY_BIN). A missing
 * binary is a test failure with a clear message, never a silent skip.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket, connect } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
/** The client-js folder. */
export const PACKAGE_ROOT = resolve(here, '../..');
/** Where tests write logs and screenshots. */
export const OUTPUT_DIR = join(PACKAGE_ROOT, 'test-output');

/** Path of the gateway binary under test. */
export function gatewayBinary(): string {
  return process.env.FERRY_BIN ?? resolve(PACKAGE_ROOT, '../target/debug/ferry');
}

/** Throws a clear error when the gateway binary is not there. */
export function requireGatewayBinary(): string {
  const bin = gatewayBinary();
  if (!existsSync(bin)) {
    throw new Error(
      `Ferry gateway binary not found at ${bin}.\n` +
        'Build it first: (cd .. && cargo build -p ferry-gateway), or point FERRY_BIN at a binary.\n' +
        'Integration and browser tests never skip for a missing binary.',
    );
  }
  return bin;
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

export interface GatewayOptions {
  /** Extra environment (e.g. FERRY_* settings). */
  env?: Record<string, string>;
  /** Extra arguments (e.g. `--config file`). */
  args?: string[];
  /** Log file name under test-output/. */
  name?: string;
  /** How long to wait for /readyz. Default 60 s. */
  readyTimeoutMs?: number;
  /**
   * Kafka bootstrap address (`FERRY_KAFKA_BROKERS`) instead of an embedded
   * Kafka: another gateway's embedded one, or a real broker.
   */
  brokers?: string;
}

/** A running gateway. */
export interface Gateway {
  port: number;
  /** ws://127.0.0.1:PORT/ws */
  url: string;
  /** Kafka bootstrap address (for kcat): the embedded Kafka's, or `brokers`. */
  bootstrap: string;
  /** `http://127.0.0.1:PORT` of the admin API, from its log line, when `FERRY_ADMIN_ENABLED=true` is in `env`. */
  admin: string | undefined;
  process: ChildProcess;
  logFile: string;
  /** SIGTERM, then SIGKILL after 10 s. */
  stop(): Promise<void>;
}

/**
 * Starts node `nodeId` of a fleet on `brokers` (a real Kafka, or another
 * gateway's embedded one), creating topics on demand; `label` prefixes its
 * log and config file, `env` adds variables.
 */
export async function startFleetNode(label: string, nodeId: string, brokers: string, embedded: boolean, env: Record<string, string> = {}): Promise<Gateway> {
  mkdirSync(OUTPUT_DIR, { recursive: true });
  const config = join(OUTPUT_DIR, `${label}-${nodeId}.toml`);
  const lines = ['[kafka]', 'auto_create_topics = true', ''];
  // The embedded (mock) broker answers a fetch only when this wait expires: keep it short, as the gateway does for its own.
  if (embedded) lines.push('[kafka.librdkafka]', '"fetch.wait.max.ms" = "5"', '');
  writeFileSync(config, lines.join('\n'));
  return startGateway({ name: `${label}-${nodeId}`, brokers, args: ['--config', config], env: { FERRY_NODE_ID: nodeId, ...env } });
}

/** Two fleet nodes on one Kafka, and the gateway holding it when it is embedded. */
export interface TwoNodes {
  kafkaHost: Gateway | undefined;
  nodeA: Gateway;
  nodeB: Gateway;
}

/**
 * Nodes `node-a-RUN` and `node-b-RUN` on the Kafka `realKafka` names, else on
 * a third gateway's embedded Kafka (so that stopping node A does not take
 * Kafka with it). `started` gets each gateway as it starts, so that a failed
 * start leaves nothing the caller cannot stop.
 */
export async function startTwoNodes(
  label: string,
  run: string,
  realKafka: string | undefined,
  env: Record<string, string>,
  started: (nodes: Partial<TwoNodes>) => void,
): Promise<void> {
  const nodes: Partial<TwoNodes> = {};
  let brokers = realKafka;
  if (!brokers) {
    nodes.kafkaHost = await startGateway({ name: `${label}-kafka`, env });
    started(nodes);
    brokers = nodes.kafkaHost.bootstrap;
  }
  // One after the other, so that a failed start leaves nothing unstopped.
  nodes.nodeA = await startFleetNode(label, `node-a-${run}`, brokers, !realKafka, env);
  started(nodes);
  nodes.nodeB = await startFleetNode(label, `node-b-${run}`, brokers, !realKafka, env);
  started(nodes);
}

/** Starts `ferry --listen 127.0.0.1:PORT` and waits until it is ready. */
export async function startGateway(options: GatewayOptions = {}): Promise<Gateway> {
  const bin = requireGatewayBinary();
  const port = await freePort();
  mkdirSync(OUTPUT_DIR, { recursive: true });
  const logFile = join(OUTPUT_DIR, `${options.name ?? 'gateway'}-${port}.log`);
  const log = createWriteStream(logFile);
  const kafka: Record<string, string> = options.brokers ? { FERRY_KAFKA_BROKERS: options.brokers } : {};
  const child = spawn(bin, ['--listen', `127.0.0.1:${port}`, ...(options.args ?? [])], {
    env: { ...process.env, FERRY_LOG: process.env.FERRY_LOG ?? 'info', ...kafka, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  let bootstrap = options.brokers ?? '';
  const wantsAdmin = options.env?.FERRY_ADMIN_ENABLED === 'true';
  let admin = '';
  child.stdout.pipe(log);
  child.stderr.on('data', (chunk: Buffer) => {
    log.write(chunk);
    stderr += chunk.toString();
    bootstrap ||= /embedded kafka bootstrap=(\S+)/.exec(stderr)?.[1] ?? '';
    if (wantsAdmin) admin ||= /admin API on (http:\/\/[^\s"\\]+)/.exec(stderr)?.[1] ?? '';
  });
  let exited: string | undefined;
  child.on('exit', (code, signal) => (exited = `exited with ${code ?? signal}`));

  const deadline = Date.now() + (options.readyTimeoutMs ?? 60_000);
  for (;;) {
    if (exited) throw new Error(`gateway ${exited} before it was ready; log ${logFile}:\n${stderr.slice(-3000)}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (res.status === 200 && bootstrap && (admin || !wantsAdmin)) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      const missing = wantsAdmin && !admin ? ' (no "admin API on http://..." line in its log)' : '';
      throw new Error(`gateway not ready within ${options.readyTimeoutMs ?? 60_000} ms${missing}; log ${logFile}:\n${stderr.slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    bootstrap,
    admin: admin || undefined,
    process: child,
    logFile,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const done = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await done;
      clearTimeout(timer);
      log.end();
    },
  };
}

/** A TCP proxy in front of the gateway that a test can cut, to drop sockets mid-stream. */
export interface CuttableProxy {
  port: number;
  url: string;
  /** Live client connections. */
  readonly connections: number;
  /** Destroys every open connection at once (the client sees 1006). */
  cut(): void;
  /** While blocked, new connections are dropped at once (the gateway looks down). */
  block(blocked: boolean): void;
  close(): Promise<void>;
}

/** Starts a TCP proxy 127.0.0.1:<free> -> 127.0.0.1:targetPort. */
export async function startProxy(targetPort: number): Promise<CuttableProxy> {
  const pairs = new Set<[Socket, Socket]>();
  let blocked = false;
  const server: Server = createServer((client) => {
    if (blocked) {
      client.destroy();
      return;
    }
    const upstream = connect(targetPort, '127.0.0.1');
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const end = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as { port: number }).port)));
  const cut = (): void => {
    for (const [a, b] of [...pairs]) {
      a.resetAndDestroy();
      b.destroy();
    }
    pairs.clear();
  };
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    get connections() {
      return pairs.size;
    },
    cut,
    block(value: boolean) {
      blocked = value;
    },
    close() {
      cut();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/** One record as kcat reads it. */
export interface KcatRecord {
  partition: number;
  offset: number;
  key: string | null;
  payload: string | null;
  headers: Record<string, string>;
}

/**
 * Produces `lines` (each `key\tvalue`, or just a value) to `topic` with kcat.
 * With `emptyIsNull`, an empty value is sent as NULL (`key\t` is a tombstone).
 */
export async function kcatProduce(
  bootstrap: string,
  topic: string,
  lines: string[],
  withKeys = false,
  { emptyIsNull = false }: { emptyIsNull?: boolean } = {},
): Promise<void> {
  await new Promise<void>((resolveDone, reject) => {
    const args = ['-P', '-b', bootstrap, '-t', topic, ...(withKeys ? ['-K', '\t'] : []), ...(emptyIsNull ? ['-Z'] : [])];
    const child = spawn('kcat', args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolveDone() : reject(new Error(`kcat -P exited ${code}: ${err}`))));
    child.stdin.end(lines.map((l) => `${l}\n`).join(''));
  });
}

/** Reads every record of `topic` from the beginning with kcat. */
export async function kcatConsume(bootstrap: string, topic: string): Promise<KcatRecord[]> {
  const { stdout } = await execFileP('kcat', ['-C', '-b', bootstrap, '-t', topic, '-o', 'beginning', '-e', '-q', '-J'], {
    maxBuffer: 64 * 1024 * 1024,
    timeout: 30_000,
  });
  return stdout
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const r = JSON.parse(line) as { partition: number; offset: number; key: string | null; payload: string | null; headers?: string[] };
      const headers: Record<string, string> = {};
      for (let i = 0; i + 1 < (r.headers?.length ?? 0); i += 2) headers[r.headers?.[i] as string] = r.headers?.[i + 1] as string;
      return { partition: r.partition, offset: r.offset, key: r.key, payload: r.payload, headers };
    });
}

/** Mints a token with the gateway's own `ferry token` (HS256, secret from the config file). */
export async function mintToken(configFile: string, ttlSecs: number, sub = 'tester'): Promise<string> {
  const { stdout } = await execFileP(requireGatewayBinary(), ['token', '--config', configFile, '--sub', sub, '--ttl', String(ttlSecs)]);
  return stdout.trim();
}
