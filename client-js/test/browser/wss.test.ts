/**
 * Real-browser test over TLS: the gateway serves TLS on its own port
 * (`[tls]`, a certificate made here with the openssl CLI), the example
 * dashboard is served over https:// by a small static server, and headless
 * Chromium runs it with the built bundle over wss://. Chromium trusts exactly
 * the test certificate's public key (`--ignore-certificate-errors-spki-list`),
 * nothing else. Records produced with kcat must appear in the page; a
 * publish from the page's form must be acked and be in Kafka; every socket
 * the page opened must be wss://. A screenshot is saved under
 * test-output/browser/.
 *
 * Needs `npm run build` first, the gateway binary, openssl and /usr/bin/chromium.
 */
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { Page } from 'playwright-core';
import { SHOTS, launchChromium, requireBrowser, startStaticServer, type Browser, type StaticServer } from '../support/browser.js';
import { OUTPUT_DIR, freePort, kcatConsume, kcatProduce, requireGatewayBinary } from '../support/gateway.js';

const execFileP = promisify(execFile);
interface Certificates {
  ca: string;
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
  /** base64 SHA-256 of the leaf's SubjectPublicKeyInfo, as Chromium's SPKI list wants it. */
  spki: string;
}

/** A CA and a leaf for 127.0.0.1 and localhost, signed by it (openssl CLI). */
async function makeCertificates(dir: string): Promise<Certificates> {
  const openssl = (...args: string[]) => execFileP('openssl', args, { cwd: dir, timeout: 30_000 });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Ferry browser test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  await openssl('req', ...ec, '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'leaf.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
  await openssl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'leaf.pem', '-days', '2', '-extfile', 'leaf.ext');
  const cert = readFileSync(join(dir, 'leaf.pem'), 'utf8');
  const spkiDer = new X509Certificate(cert).publicKey.export({ type: 'spki', format: 'der' });
  return {
    ca: readFileSync(join(dir, 'ca.pem'), 'utf8'),
    cert,
    key: readFileSync(join(dir, 'leaf.key'), 'utf8'),
    certFile: join(dir, 'leaf.pem'),
    keyFile: join(dir, 'leaf.key'),
    spki: createHash('sha256').update(spkiDer).digest('base64'),
  };
}

/** GET over https trusting only the test CA: the status code. */
function httpsStatus(url: string, ca: string): Promise<number> {
  return new Promise((resolveStatus, reject) => {
    const req = request(url, { ca, timeout: 5_000 }, (res) => {
      res.resume();
      resolveStatus(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  });
}

interface TlsGateway {
  port: number;
  url: string;
  bootstrap: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** Starts `ferry` with `[tls]` set (env) and waits until it is ready over https. */
async function startTlsGateway(certs: Certificates): Promise<TlsGateway> {
  const bin = requireGatewayBinary();
  const port = await freePort();
  mkdirSync(OUTPUT_DIR, { recursive: true });
  const logFile = join(OUTPUT_DIR, `browser-wss-${port}.log`);
  const log = createWriteStream(logFile);
  const child = spawn(bin, ['--listen', `127.0.0.1:${port}`], {
    env: {
      ...process.env,
      FERRY_LOG: process.env.FERRY_LOG ?? 'info',
      FERRY_TLS_CERT_FILE: certs.certFile,
      FERRY_TLS_KEY_FILE: certs.keyFile,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stdout.pipe(log);
  child.stderr.on('data', (chunk: Buffer) => {
    log.write(chunk);
    stderr += chunk.toString();
  });
  let exited: string | undefined;
  child.on('exit', (code, signal) => (exited = `exited with ${code ?? signal}`));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) throw new Error(`gateway ${exited} before it was ready; log ${logFile}:\n${stderr.slice(-3000)}`);
    const bootstrap = /embedded kafka bootstrap=(\S+)/.exec(stderr)?.[1];
    if (bootstrap && stderr.includes(`listening on https://127.0.0.1:${port}`)) {
      const status = await httpsStatus(`https://127.0.0.1:${port}/readyz`, certs.ca).catch(() => 0);
      if (status === 200) {
        return {
          port,
          url: `wss://127.0.0.1:${port}/ws`,
          bootstrap,
          process: child,
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
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`gateway not ready over https within 60 s; log ${logFile}:\n${stderr.slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('example dashboard over https:// and wss:// in headless Chromium', () => {
  let dir: string;
  let certs: Certificates;
  let gateway: TlsGateway;
  let web: StaticServer;
  let browser: Browser;
  let page: Page;
  const sockets: string[] = [];
  const topic = `browser-wss-${Date.now().toString(36)}`;

  before(async () => {
    requireBrowser();
    dir = mkdtempSync(join(tmpdir(), 'ferry-wss-'));
    certs = await makeCertificates(dir);
    gateway = await startTlsGateway(certs);
    web = await startStaticServer({ tls: { cert: certs.cert, key: certs.key } });
    browser = await launchChromium({
      // Trust the test certificate's key, and only it.
      args: [`--ignore-certificate-errors-spki-list=${certs.spki}`],
      viewport: { width: 1100, height: 760 },
    });
    page = browser.page;
    page.on('websocket', (ws) => sockets.push(ws.url()));
  });

  after(async () => {
    await browser?.close();
    await web?.close();
    await gateway?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('runs the dashboard from an https page over wss: records from Kafka appear, a publish is acked and stored', async () => {
    const url = `${web.origin}/examples/dashboard/?url=${encodeURIComponent(gateway.url)}&topic=${topic}`;
    await page.goto(url);
    assert.equal(await page.evaluate(() => location.protocol), 'https:', 'the page itself is https');
    await page.waitForSelector('#state[data-state="open"]', { timeout: 15_000 });
    await page.evaluate(() => new Promise((r) => setTimeout(r, 300)));

    const temps = [17.5, 18.25, 19.75];
    await kcatProduce(gateway.bootstrap, topic, temps.map((temp, i) => `tls-sensor-${i}\t{"temp":${temp}}`), true);
    await page.waitForFunction((n) => document.querySelectorAll('#rows tr').length >= n, temps.length, { timeout: 15_000 });
    const cells = await page.$$eval('#rows tr td.value', (tds) => tds.map((td) => td.textContent));
    for (const temp of temps) assert.ok(cells.includes(JSON.stringify({ temp })), `row for ${temp} in ${JSON.stringify(cells)}`);

    await page.fill('#key', 'from-https-page');
    await page.fill('#value', '{"temp": 31.5, "over": "wss"}');
    await page.click('#publish button');
    await page.waitForSelector('#ack[data-offset]', { timeout: 15_000 });
    assert.match((await page.textContent('#ack')) ?? '', /^acked: partition \d+ offset \d+$/);
    const partition = Number(await page.getAttribute('#ack', 'data-partition'));
    const offset = Number(await page.getAttribute('#ack', 'data-offset'));
    const records = await kcatConsume(gateway.bootstrap, topic);
    const stored = records.find((r) => r.partition === partition && r.offset === offset);
    assert.ok(stored, `record at ${partition}/${offset}`);
    assert.equal(stored.key, 'from-https-page');
    assert.deepEqual(JSON.parse(stored.payload ?? 'null'), { temp: 31.5, over: 'wss' });
    await page.waitForSelector(`#rows tr[data-offset="${partition}/${offset}"]`, { timeout: 10_000 });

    // Every socket the page opened went to the gateway over TLS.
    assert.ok(sockets.length >= 1, 'the page opened a socket');
    for (const socket of sockets) assert.ok(socket.startsWith(`wss://127.0.0.1:${gateway.port}/`), socket);
    await page.screenshot({ path: join(SHOTS, 'wss-dashboard.png'), fullPage: true });
    assert.deepEqual(browser.errors, []);
  });

  it('cannot reach the TLS port over plain ws:// from the same page', async () => {
    // An https page may not open ws:// at all (mixed content), and the gateway's
    // TLS port would not answer it: wss:// is the only way in.
    const outcome = await page.evaluate(async (port) => {
      try {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, 'ferry.v1');
        return await new Promise<string>((r) => {
          ws.onopen = () => r('open');
          ws.onerror = () => r('error');
        });
      } catch (err) {
        return `threw ${(err as Error).name}`;
      }
    }, gateway.port);
    assert.notEqual(outcome, 'open', `ws:// to the TLS port: ${outcome}`);
    browser.errors.length = 0;
  });
});
