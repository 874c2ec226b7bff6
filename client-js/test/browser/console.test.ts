/**
 * Real-browser test of the gateway's built-in console (`GET /console`):
 * headless Chromium (the system's /usr/bin/chromium, driven by
 * playwright-core) opens the page the gateway binary serves, on a gateway
 * with JWT authentication, an ACL and a JSON Schema on some topics, over its
 * embedded Kafka. The page must refuse a bad token and connect with a good
 * one, show records produced with kcat in its live table with a per-topic
 * rate, publish from its form and show the ack position (which must be
 * where kcat finds the record), show `invalid_value` for a value the schema
 * refuses, and show node figures read from /metrics. Every request stays on
 * the gateway's origin and the page logs no error (a CSP violation would).
 * A screenshot is saved as test-output/browser/console.png. Disconnecting and
 * connecting again brings the subscription back.
 *
 * Needs the gateway binary and /usr/bin/chromium.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import { SHOTS, launchChromium, requireBrowser, type Browser } from '../support/browser.js';
import { OUTPUT_DIR, kcatConsume, kcatProduce, mintToken, startGateway, type Gateway } from '../support/gateway.js';

describe('gateway console in headless Chromium', () => {
  let gateway: Gateway;
  let browser: Browser;
  let page: Page;
  let configFile: string;
  const requests: string[] = [];
  const run = Date.now().toString(36);
  const topic = `console-${run}`;
  const strict = `console-${run}-strict.sensor`;

  before(async () => {
    requireBrowser({ bundle: false });
    mkdirSync(SHOTS, { recursive: true });
    configFile = join(OUTPUT_DIR, `console-${run}.toml`);
    writeFileSync(
      configFile,
      [
        '[auth]',
        'mode = "jwt"',
        'hs_secret = "console-test-secret-0123456789abcdef"',
        '',
        '[[acl.rules]]',
        'publish = ["**"]',
        'subscribe = ["**"]',
        '',
        '[[schemas]]',
        `topics = "console-${run}-strict.*"`,
        `schema = '{"type":"object","required":["temp"],"properties":{"temp":{"type":"number"}}}'`,
        '',
      ].join('\n'),
    );
    gateway = await startGateway({ name: 'browser-console', args: ['--config', configFile], readyTimeoutMs: 30_000 });
    browser = await launchChromium({ viewport: { width: 1200, height: 900 } });
    page = browser.page;
    page.on('request', (req) => requests.push(req.url()));
  });

  after(async () => {
    await browser?.close();
    await gateway?.stop();
  });

  it('connects with a token, shows live records and their rate, publishes with the ack position, and shows node figures', async () => {
    const origin = `http://127.0.0.1:${gateway.port}`;
    const response = await page.goto(`${origin}/console`);
    assert.equal(response?.status(), 200);
    const csp = response?.headers()['content-security-policy'] ?? '';
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe/);

    // A bad token is refused in the page; a good one connects.
    await page.fill('#token', 'not-a-token');
    await page.click('#connect');
    await page.waitForSelector('#conn-note.bad', { timeout: 15_000 });
    assert.match((await page.textContent('#conn-note')) ?? '', /token refused \(unauthorized\)/);
    const token = await mintToken(configFile, 600, 'console-tester');
    await page.fill('#token', token);
    await page.click('#connect');
    await page.waitForSelector('#state[data-state="open"]', { timeout: 15_000 });
    assert.match((await page.textContent('#node')) ?? '', /subject console-tester/);

    // Subscribe; records produced from outside the gateway appear in the table.
    await page.fill('#sub-topic', topic);
    await page.click('#sub-form button');
    await page.waitForSelector(`#subs li[data-topic="${topic}"][data-state="active"]`, { timeout: 15_000 });
    const temps = [18.5, 19.25, 21, 20.5, 22.75, 23.5];
    await kcatProduce(
      gateway.bootstrap,
      topic,
      temps.map((temp, i) => `sensor-${i}\t{"temp":${temp}}`),
      true,
    );
    await page.waitForFunction((n) => document.querySelectorAll('#rows tr').length >= n, temps.length, { timeout: 15_000 });
    const values = await page.$$eval('#rows tr td.value', (tds) => tds.map((td) => td.textContent));
    for (const temp of temps) assert.ok(values.includes(JSON.stringify({ temp })), `row for ${temp} in ${JSON.stringify(values)}`);
    const keys = await page.$$eval('#rows tr td.key', (tds) => tds.map((td) => td.textContent));
    assert.ok(keys.includes('sensor-0'), JSON.stringify(keys));
    const produced = await kcatConsume(gateway.bootstrap, topic);
    for (const r of produced) {
      await page.waitForSelector(`#rows tr[data-pos="${topic}/${r.partition}/${r.offset}"]`, { timeout: 5_000 });
    }
    const times = await page.$$eval('#rows tr td.time', (tds) => tds.map((td) => td.textContent ?? ''));
    assert.ok(times.every((t) => /^\d\d:\d\d:\d\d\.\d\d\d$/.test(t)), JSON.stringify(times));
    // The per-topic rate and count follow what arrived.
    await page.waitForFunction(
      (t) => {
        const li = document.querySelector(`#subs li[data-topic="${t}"]`);
        return li !== null && parseFloat(li.querySelector('.rate')?.textContent ?? '0') > 0;
      },
      topic,
      { timeout: 5_000 },
    );
    assert.equal(await page.textContent(`#subs li[data-topic="${topic}"] .count`), String(temps.length));

    // Publish from the form: the ack position is shown, and it is where Kafka has the record.
    await page.fill('#pub-topic', topic);
    await page.fill('#pub-key', 'from-console');
    await page.fill('#pub-value', '{"temp": 30.25, "by": "console"}');
    await page.click('#pub-form button');
    await page.waitForSelector('#pub-result[data-offset]', { timeout: 15_000 });
    assert.match((await page.textContent('#pub-result')) ?? '', /^acked: partition \d+ offset \d+$/);
    const partition = Number(await page.getAttribute('#pub-result', 'data-partition'));
    const offset = Number(await page.getAttribute('#pub-result', 'data-offset'));
    const records = await kcatConsume(gateway.bootstrap, topic);
    const stored = records.find((r) => r.partition === partition && r.offset === offset);
    assert.ok(stored, `record at ${partition}/${offset} in ${JSON.stringify(records)}`);
    assert.equal(stored.key, 'from-console');
    assert.equal(stored.payload, '{"temp": 30.25, "by": "console"}', 'the value is stored as typed');
    await page.waitForSelector(`#rows tr[data-pos="${topic}/${partition}/${offset}"]`, { timeout: 10_000 });

    // A value the topic's schema refuses: the page shows the code and the violation.
    await page.fill('#pub-topic', strict);
    await page.fill('#pub-key', '');
    await page.fill('#pub-value', '{"temp": "hot"}');
    await page.click('#pub-form button');
    await page.waitForSelector('#pub-result[data-code="invalid_value"]', { timeout: 15_000 });
    assert.match((await page.textContent('#pub-result')) ?? '', /^invalid_value: .* at \/temp: /);
    assert.deepEqual(await kcatConsume(gateway.bootstrap, strict).catch(() => []), [], 'nothing reached Kafka');

    // Node figures from /metrics, refreshed: this page's socket, the ack, the refusal.
    // (No named helper inside: tsx would wrap it in `__name`, absent in the page;
    // and no string predicate: the page's CSP forbids eval.)
    await page.waitForFunction(
      (ids) => ids.every((id) => Number(document.getElementById(id)?.textContent ?? 'NaN') >= 1),
      ['m-connections', 'm-acked', 'm-schema', 'm-subscriptions'],
      { timeout: 10_000 },
    );
    assert.equal(await page.textContent('#m-kafka'), 'ready');
    assert.match((await page.textContent('#m-publish-rate')) ?? '', /^\d+\.\d\/s$/);
    assert.match((await page.textContent('#m-latency')) ?? '', /^\d+\.\d ms$/);

    await page.screenshot({ path: join(SHOTS, 'console.png'), fullPage: true });

    // Disconnect and connect again: the subscription comes back and stays live.
    await page.click('#disconnect');
    await page.waitForSelector(`#state[data-state="closed"]`, { timeout: 10_000 });
    await page.waitForSelector(`#subs li[data-topic="${topic}"][data-state="inactive"]`, { timeout: 5_000 });
    await page.click('#connect');
    await page.waitForSelector(`#subs li[data-topic="${topic}"][data-state="active"]`, { timeout: 15_000 });
    await kcatProduce(gateway.bootstrap, topic, ['after-reconnect\t{"temp":1}'], true);
    await page.waitForFunction(
      (t) => Array.from(document.querySelectorAll(`#rows tr[data-pos^="${t}/"] td.key`)).some((td) => td.textContent === 'after-reconnect'),
      topic,
      { timeout: 15_000 },
    );
    assert.deepEqual(browser.errors, []);
    const foreign = requests.filter((url) => !url.startsWith(`${origin}/`));
    assert.deepEqual(foreign, [], 'every request stays on the gateway origin');
  });
});
