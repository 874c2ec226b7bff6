/**
 * Real-browser test: headless Chromium (the system's /usr/bin/chromium,
 * driven by playwright-core) opens the example dashboard
 * (examples/dashboard/, served by a tiny static server started here), which
 * loads the built browser bundle (dist/browser/ferry.min.js) and talks to the
 * real gateway. Records produced with kcat must appear in the page; a publish
 * from the page's form must be acked and be in Kafka. A screenshot is saved
 * under test-output/browser/.
 *
 * Needs `npm run build` first, the gateway binary and /usr/bin/chromium.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import type * as FerryBundle from '../../src/browser.js';
import { SHOTS, launchChromium, requireBrowser, startStaticServer, type Browser, type StaticServer } from '../support/browser.js';
import { kcatConsume, kcatProduce, startGateway, type Gateway } from '../support/gateway.js';

describe('example dashboard in headless Chromium', () => {
  let gateway: Gateway;
  let web: StaticServer;
  let browser: Browser;
  let page: Page;
  const topic = `browser-${Date.now().toString(36)}`;

  before(async () => {
    requireBrowser();
    gateway = await startGateway({ name: 'browser' });
    web = await startStaticServer();
    browser = await launchChromium({ viewport: { width: 1100, height: 760 } });
    page = browser.page;
  });

  after(async () => {
    await browser?.close();
    await web?.close();
    await gateway?.stop();
  });

  it('shows records produced into Kafka, publishes from the form, and gets the ack', async () => {
    const url = `${web.origin}/examples/dashboard/?url=${encodeURIComponent(gateway.url)}&topic=${topic}`;
    await page.goto(url);
    await page.waitForSelector('#state[data-state="open"]', { timeout: 15_000 });
    // The subscription is live once the gateway confirmed it.
    await page.waitForFunction(() => (window as unknown as { hub: { state: string } }).hub.state === 'open');
    await page.evaluate(() => new Promise((r) => setTimeout(r, 300)));

    // Records produced from outside the gateway appear in the table.
    const temps = [18.5, 19.25, 21, 20.5, 22.75, 23.5];
    await kcatProduce(
      gateway.bootstrap,
      topic,
      temps.map((temp, i) => `sensor-${i}\t{"temp":${temp}}`),
      true,
    );
    await page.waitForFunction((n) => document.querySelectorAll('#rows tr').length >= n, temps.length, { timeout: 15_000 });
    const cells = await page.$$eval('#rows tr td.value', (tds) => tds.map((td) => td.textContent));
    for (const temp of temps) assert.ok(cells.includes(JSON.stringify({ temp })), `row for ${temp} in ${JSON.stringify(cells)}`);
    const keys = await page.$$eval('#rows tr td:nth-child(3)', (tds) => tds.map((td) => td.textContent));
    assert.ok(keys.includes('sensor-0'));
    const points = await page.getAttribute('#line', 'points');
    assert.equal(points?.trim().split(' ').length, temps.length, 'chart has a point per record');

    // Publish from the page's form: the ack shows partition and offset.
    await page.fill('#key', 'from-page');
    await page.fill('#value', '{"temp": 30.25, "by": "browser"}');
    await page.click('#publish button');
    await page.waitForSelector('#ack[data-offset]', { timeout: 15_000 });
    const ackText = await page.textContent('#ack');
    assert.match(ackText ?? '', /^acked: partition \d+ offset \d+$/);
    const partition = Number(await page.getAttribute('#ack', 'data-partition'));
    const offset = Number(await page.getAttribute('#ack', 'data-offset'));

    // It is in Kafka where the ack says, and it came back through the subscription.
    const records = await kcatConsume(gateway.bootstrap, topic);
    const stored = records.find((r) => r.partition === partition && r.offset === offset);
    assert.ok(stored, `record at ${partition}/${offset}`);
    assert.equal(stored.key, 'from-page');
    assert.deepEqual(JSON.parse(stored.payload ?? 'null'), { temp: 30.25, by: 'browser' });
    await page.waitForSelector(`#rows tr[data-offset="${partition}/${offset}"]`, { timeout: 10_000 });

    await page.screenshot({ path: join(SHOTS, 'dashboard.png'), fullPage: true });
    assert.deepEqual(browser.errors, []);
  });

  it('keeps the offline queue in IndexedDB (storage adapter round trip in a real browser)', async () => {
    const result = await page.evaluate(async () => {
      const F = (window as unknown as { Ferry: typeof FerryBundle }).Ferry;
      const storage = new F.IndexedDBStorage({ dbName: 'ferry-test', storeName: 'outbox' });
      await storage.put({ id: 'b', topic: 't', frame: '{"type":"publish"}', seq: 2 });
      await storage.put({ id: 'a', topic: 't', frame: '{"type":"publish"}', seq: 1 });
      const loaded = (await storage.load()).map((e) => e.id).sort();
      await storage.delete('a');
      const after = (await storage.load()).map((e) => e.id);
      await storage.close();
      // A second instance (as after a page reload) sees what is left.
      const again = new F.IndexedDBStorage({ dbName: 'ferry-test', storeName: 'outbox' });
      const reloaded = (await again.load()).map((e) => e.id);
      await again.close();
      return { loaded, after, reloaded };
    });
    assert.deepEqual(result, { loaded: ['a', 'b'], after: ['b'], reloaded: ['b'] });
  });

  it('queues a publish made while the gateway is unreachable and sends it after reconnect', async () => {
    // A second client in the page first reaches a port where nothing listens (the network is down),
    // then the gateway (the network is back). Plain JS: compiled TS helpers do not exist in the page.
    const script = `(async () => {
      let url = 'ws://127.0.0.1:9/ws';
      class Switchable extends WebSocket { constructor(_u, protocols) { super(url, protocols); } }
      const hub = new Ferry.FerryClient({ url, WebSocket: Switchable, reconnect: { initialDelayMs: 50, maxDelayMs: 200 } });
      hub.connect();
      const topic = 'browser-offline-' + Date.now();
      const pending = hub.publish(topic, { offline: true });
      await new Promise((r) => setTimeout(r, 400));
      const queuedWhileDown = hub.queued;
      const stateWhileDown = hub.state;
      url = ${JSON.stringify(gateway.url)};
      const ack = await pending;
      await hub.close();
      return { queuedWhileDown, stateWhileDown, ack, topic };
    })()`;
    const result = await page.evaluate<{ queuedWhileDown: number; stateWhileDown: string; ack: { topic: string }; topic: string }>(script);
    assert.equal(result.queuedWhileDown, 1);
    assert.equal(result.stateWhileDown, 'reconnecting');
    assert.equal(result.ack.topic, result.topic);
    const records = await kcatConsume(gateway.bootstrap, result.topic);
    assert.equal(records.length, 1);
  });
});
