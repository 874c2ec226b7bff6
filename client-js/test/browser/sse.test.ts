/**
 * Real-browser test of the HTTP fallback: headless Chromium (the system's
 * /usr/bin/chromium, driven by playwright-core) opens a page on another
 * origin that loads the built bundle (dist/browser/ferry.min.js); in that
 * page WebSockets are blocked (the constructor throws, and any ws:// request
 * is aborted). A client with `transport: 'auto'` must carry on over SSE and
 * HTTP publish against the real gateway (cross-origin, so through its CORS
 * answers): records produced with kcat appear, a publish is acked and is in
 * Kafka, and no WebSocket was ever opened.
 *
 * Needs `npm run build` first, the gateway binary and /usr/bin/chromium.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import {
  SHOTS,
  launchChromium,
  pageWithBundle,
  requireBrowser,
  startStaticServer,
  type Browser,
  type StaticServer,
} from '../support/browser.js';
import { OUTPUT_DIR, kcatConsume, kcatProduce, mintToken, startGateway, type Gateway } from '../support/gateway.js';

const PAGE = `<!doctype html><meta charset="utf-8"><title>Ferry over SSE</title>
<script>
  // This network breaks WebSockets.
  window.WebSocket = class { constructor() { throw new Error('WebSockets are blocked here'); } };
</script>
<script src="/ferry.min.js"></script>
<pre id="log"></pre>`;


describe('HTTP fallback in headless Chromium with WebSockets blocked', () => {
  let gateway: Gateway;
  let web: StaticServer;
  let browser: Browser;
  let page: Page;
  const sockets: string[] = [];
  const requests: string[] = [];
  const topic = `browser-sse-${Date.now().toString(36)}`;

  before(async () => {
    requireBrowser();
    gateway = await startGateway({ name: 'browser-sse' });
    web = await startStaticServer({ handler: pageWithBundle(PAGE) });
    // Uncaught page errors only: the page blocks its WebSocket on purpose.
    browser = await launchChromium({ consoleErrors: false });
    // Belt and braces: any WebSocket request is aborted too.
    await browser.context.route(/^wss?:\/\//, (route) => route.abort());
    page = browser.page;
    page.on('websocket', (ws) => sockets.push(ws.url()));
    page.on('request', (r) => requests.push(new URL(r.url()).pathname));
  });

  after(async () => {
    await browser?.close();
    await web?.close();
    await gateway?.stop();
    await jwtGateway?.stop();
  });

  let jwtGateway: Gateway | undefined;

  it("'auto' subscribes over SSE and publishes over HTTP, cross-origin", async () => {
    await page.goto(`${web.origin}/`);
    const started = `(async () => {
      const hub = new Ferry.FerryClient({ url: ${JSON.stringify(gateway.url)}, transport: 'auto' });
      window.hub = hub;
      window.got = [];
      await hub.connect();
      const sub = hub.subscribe(${JSON.stringify(topic)}, (m) => {
        window.got.push({ partition: m.partition, offset: m.offset, key: m.key, value: m.value });
        document.getElementById('log').textContent += JSON.stringify(m.value) + '\\n';
      });
      await sub.ready;
      return hub.transport;
    })()`;
    assert.equal(await page.evaluate<string>(started), 'sse');

    const temps = [18.5, 19.25, 21, 20.5];
    await kcatProduce(gateway.bootstrap, topic, temps.map((temp, i) => `sensor-${i}\t{"temp":${temp}}`), true);
    await page.waitForFunction((n) => (window as unknown as { got: unknown[] }).got.length >= n, temps.length, { timeout: 15_000 });

    const ack = await page.evaluate<{ partition: number; offset: number }>(
      `window.hub.publish(${JSON.stringify(topic)}, { temp: 30.25, by: 'browser' }, { key: 'from-page' })`,
    );
    const records = await kcatConsume(gateway.bootstrap, topic);
    const stored = records.find((r) => r.partition === ack.partition && r.offset === ack.offset);
    assert.ok(stored, `record at ${ack.partition}/${ack.offset}`);
    assert.equal(stored.key, 'from-page');
    assert.deepEqual(JSON.parse(stored.payload ?? 'null'), { temp: 30.25, by: 'browser' });
    // It comes back through the SSE subscription, once.
    await page.waitForFunction((n) => (window as unknown as { got: unknown[] }).got.length >= n, temps.length + 1, { timeout: 15_000 });
    const got = await page.evaluate<{ partition: number; offset: number; key: string | null; value: unknown }[]>('window.got');
    assert.equal(got.length, temps.length + 1);
    assert.equal(new Set(got.map((m) => `${m.partition}/${m.offset}`)).size, got.length, 'no duplicate');
    assert.deepEqual(
      got.slice(0, temps.length).map((m) => JSON.stringify(m.value)).sort(),
      temps.map((temp) => JSON.stringify({ temp })).sort(),
    );

    await page.screenshot({ path: join(SHOTS, 'sse-fallback.png'), fullPage: true });
    assert.deepEqual(sockets, [], 'no WebSocket was opened');
    assert.ok(requests.includes('/sse') && requests.includes('/v1/publish'), JSON.stringify(requests));
    assert.deepEqual(browser.errors, []);
    await page.evaluate('window.hub.close()');
  });

  it('with a token: the Authorization header passes the CORS preflight of an allowed origin', async () => {
    const configFile = join(OUTPUT_DIR, `browser-sse-jwt-${Date.now().toString(36)}.toml`);
    writeFileSync(
      configFile,
      [
        '[auth]',
        'mode = "jwt"',
        'hs_secret = "browser-sse-secret-0123456789abcdef0123"',
        `allowed_origins = [${JSON.stringify(web.origin)}]`,
        '',
        '[[acl.rules]]',
        'publish = ["**"]',
        'subscribe = ["**"]',
        '',
      ].join('\n'),
    );
    jwtGateway = await startGateway({ name: 'browser-sse-jwt', args: ['--config', configFile] });
    const token = await mintToken(configFile, 600, 'browser-user');
    const name = `${topic}-jwt`;
    const script = `(async () => {
      const hub = new Ferry.FerryClient({ url: ${JSON.stringify(jwtGateway.url)}, transport: 'auto', token: ${JSON.stringify(token)} });
      const got = [];
      await hub.connect();
      await hub.subscribe(${JSON.stringify(name)}, (m) => got.push(m.offset)).ready;
      const ack = await hub.publish(${JSON.stringify(name)}, { by: 'browser-user' });
      const deadline = Date.now() + 10000;
      while (got.length < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      await hub.close();
      return { transport: hub.transport, subject: hub.welcome && hub.welcome.subject, ack, got };
    })()`;
    const result = await page.evaluate<{ transport: string; subject: string; ack: { offset: number }; got: number[] }>(script);
    assert.equal(result.transport, 'sse');
    assert.equal(result.subject, 'browser-user');
    assert.deepEqual(result.got, [result.ack.offset]);
    const records = await kcatConsume(jwtGateway.bootstrap, name);
    assert.equal(records.length, 1);
    assert.deepEqual(sockets, [], 'no WebSocket was opened');
    assert.deepEqual(browser.errors, []);
  });
});
