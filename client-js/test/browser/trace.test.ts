/**
 * Real-browser test of W3C trace context: headless Chromium (the system's
 * /usr/bin/chromium, driven by playwright-core) loads the built bundle
 * (dist/browser/ferry.min.js) from another origin and publishes with a
 * `traceparent`, over the WebSocket and over HTTP publish. kcat, a Kafka
 * client independent of Ferry, then reads each record back from the
 * gateway's embedded Kafka: it carries that `traceparent` header (the
 * gateway exports no spans here, so it forwards the value as sent).
 *
 * Needs `npm run build` first, the gateway binary, kcat and /usr/bin/chromium.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import { launchChromium, pageWithBundle, requireBrowser, startStaticServer, type Browser, type StaticServer } from '../support/browser.js';
import { kcatConsume, startGateway, type Gateway } from '../support/gateway.js';

const PAGE = `<!doctype html><meta charset="utf-8"><title>Ferry trace context</title>
<script src="/ferry.min.js"></script>`;


describe('trace context from a browser publish to Kafka', () => {
  let gateway: Gateway;
  let web: StaticServer;
  let browser: Browser;
  let page: Page;
  const topic = `browser-trace-${Date.now().toString(36)}`;

  before(async () => {
    requireBrowser();
    gateway = await startGateway({ name: 'browser-trace' });
    web = await startStaticServer({ handler: pageWithBundle(PAGE) });
    browser = await launchChromium();
    page = browser.page;
  });

  after(async () => {
    await browser?.close();
    await web?.close();
    await gateway?.stop();
  });

  for (const transport of ['websocket', 'sse'] as const) {
    it(`a publish's traceparent is the Kafka record's header (${transport})`, async () => {
      await page.goto(`${web.origin}/`);
      const traceparent = `00-${'4bf92f3577b34da6a3ce929d0e0e4736'}-${transport === 'sse' ? '00f067aa0ba902b7' : '00f067aa0ba902b8'}-01`;
      const ack = await page.evaluate<{ partition: number; offset: number }>(`(async () => {
        const hub = new Ferry.FerryClient({ url: ${JSON.stringify(gateway.url)}, transport: ${JSON.stringify(transport === 'sse' ? 'sse' : 'websocket')} });
        await hub.connect();
        const ack = await hub.publish(${JSON.stringify(topic)}, { from: 'browser' }, { traceparent: ${JSON.stringify(traceparent)} });
        hub.close();
        return ack;
      })()`);
      const records = await kcatConsume(gateway.bootstrap, topic);
      const stored = records.find((r) => r.partition === ack.partition && r.offset === ack.offset);
      assert.ok(stored, `kcat finds the record at ${ack.partition}/${ack.offset}`);
      assert.equal(stored.headers.traceparent, traceparent, JSON.stringify(stored.headers));
      assert.deepEqual(JSON.parse(stored.payload ?? 'null'), { from: 'browser' });
      assert.deepEqual(browser.errors, []);
    });
  }
});
