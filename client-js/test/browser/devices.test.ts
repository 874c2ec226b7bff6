/**
 * Real-browser test of the keyed-store example: headless Chromium opens
 * examples/devices/, which loads the ES module build (dist/esm/index.js,
 * with `createState`) and talks to a real gateway whose `[[tables]]`
 * config covers the topic.
 *
 * Before the page opens, kcat produces 10,050 devices, newer versions of
 * some of them, tombstones for 51 (one of which comes back): 10,000 live
 * keys. The page must show exactly those 10,000 keys from the snapshot,
 * every value the latest, then live changes produced after it is ready:
 * updated values visible and highlighted, a tombstone that takes the count
 * down, a new key that brings it back up. A screenshot is saved under
 * test-output/browser/.
 *
 * Needs `npm run build` first, the gateway binary, /usr/bin/chromium, kcat.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import type { FerryState } from '../../src/index.js';
import { SHOTS, launchChromium, requireBrowser, startStaticServer, type Browser, type StaticServer } from '../support/browser.js';
import { OUTPUT_DIR, kcatProduce, startGateway, type Gateway } from '../support/gateway.js';

interface Device {
  status: 'ok' | 'warn' | 'fault';
  temp: number;
  v: number;
}

const run = Date.now().toString(36);
const topic = `devices.browser-${run}`;
const KEYS = 10_000;
const key = (i: number): string => `dev-${String(i).padStart(5, '0')}`;
const STATUSES = ['ok', 'ok', 'ok', 'warn', 'fault'] as const;
const device = (i: number, v: number): Device => ({ status: STATUSES[(i + v) % STATUSES.length] as Device['status'], temp: 15 + ((i * 7 + v * 3) % 200) / 10, v });

type PageWindow = { devices: FerryState<Device> };

describe('keyed-store example (examples/devices/) in headless Chromium', () => {
  let gateway: Gateway;
  let web: StaticServer;
  let browser: Browser;
  let page: Page;
  /** What the topic's table holds once every batch is in: the latest value per live key. */
  const expected = new Map<string, Device>();

  /** Produces `lines` (`key\tvalue`; `key\t` is a tombstone) and records them in `expected`. */
  async function produce(records: [string, Device | null][]): Promise<void> {
    await kcatProduce(
      gateway.bootstrap,
      topic,
      records.map(([k, value]) => `${k}\t${value === null ? '' : JSON.stringify(value)}`),
      true,
      { emptyIsNull: true },
    );
    for (const [k, value] of records) {
      if (value === null) expected.delete(k);
      else expected.set(k, value);
    }
  }

  /** Types `k` into the page's lookup box and returns what it shows, once it shows `k`. */
  async function lookup(k: string): Promise<{ text: string; found: string }> {
    await page.fill('#lookup', k);
    const out = await page.waitForSelector(`#lookup-value[data-key="${k}"]`, { timeout: 5_000 });
    return { text: (await out.textContent()) ?? '', found: (await out.getAttribute('data-found')) ?? '' };
  }

  before(async () => {
    requireBrowser({ bundle: false, esm: true });
    mkdirSync(OUTPUT_DIR, { recursive: true });
    const config = join(OUTPUT_DIR, `devices-${run}.toml`);
    writeFileSync(config, '[[tables]]\ntopics = "devices.*"\nmax_keys = 100000\nmax_bytes = 67108864\n');
    gateway = await startGateway({ name: 'browser-devices', args: ['--config', config] });
    web = await startStaticServer();
    browser = await launchChromium({ viewport: { width: 1200, height: 900 } });
    page = browser.page;
  });

  after(async () => {
    await browser?.close();
    await web?.close();
    await gateway?.stop();
  });

  it('shows the 10,000 keys of the snapshot with their latest values, then live changes', async () => {
    // History before the page opens, in batches so that each comes after the one before it:
    // 10,050 devices; a newer version of every 10th and again of every 100th; tombstones
    // for the last 50 and for dev-00042; then dev-00042 back.
    await produce(Array.from({ length: KEYS + 50 }, (_, i): [string, Device] => [key(i), device(i, 1)]));
    await produce(Array.from({ length: (KEYS + 50) / 10 }, (_, j): [string, Device] => [key(j * 10), device(j * 10, 2)]));
    await produce(Array.from({ length: KEYS / 100 }, (_, j): [string, Device] => [key(j * 100), device(j * 100, 3)]));
    await produce([...Array.from({ length: 50 }, (_, j): [string, null] => [key(KEYS + j), null]), [key(42), null]]);
    await produce([[key(42), device(42, 9)]]);
    assert.equal(expected.size, KEYS);

    await page.goto(`${web.origin}/examples/devices/?url=${encodeURIComponent(gateway.url)}&topic=${topic}&throttle=200`);
    await page.waitForSelector('#state[data-state="open"]', { timeout: 15_000 });
    await page.waitForSelector('#sync[data-state="live"]', { timeout: 60_000 });
    // The count rendered after snapshot_end is the snapshot's, exactly.
    await page.waitForSelector(`#count[data-count="${KEYS}"]`, { timeout: 5_000 });
    assert.equal(await page.textContent('#count'), '10,000 keys');

    // Every key of the store holds the latest value, and no other key is there.
    const mismatches = await page.evaluate((want: [string, Device][]) => {
      const state = (window as unknown as PageWindow).devices;
      const bad: string[] = [];
      if (state.size !== want.length) bad.push(`size ${state.size}`);
      for (const [k, v] of want) if (JSON.stringify(state.get(k)) !== JSON.stringify(v)) bad.push(`${k}: ${JSON.stringify(state.get(k))}`);
      return bad.slice(0, 10);
    }, [...expected]);
    assert.deepEqual(mismatches, []);

    // Chromium offered permessage-deflate and the gateway took it: the
    // snapshot's frames went out compressed.
    const metrics = await (await fetch(`http://127.0.0.1:${gateway.port}/metrics`)).text();
    const counter = (name: string) => Number(metrics.match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1] ?? 0);
    const [deflateIn, deflateOut] = [counter('ferry_deflate_input_bytes_total'), counter('ferry_deflate_output_bytes_total')];
    // Each ~200-byte frame compresses on its own (no context takeover): a
    // fifth or so smaller.
    assert.ok(deflateIn > 1_000_000 && deflateOut < deflateIn * 0.9, `deflate: ${deflateIn} bytes in, ${deflateOut} out`);
    console.log(`snapshot frames compressed from ${deflateIn} to ${deflateOut} bytes`);

    // The summary adds up to the count.
    const summary = await page.$$eval(['#ok', '#warn', '#fault'].join(','), (els) => els.map((el) => Number(el.textContent?.replace(/,/g, ''))));
    assert.equal(summary.reduce((a, b) => a + b, 0), KEYS, `summary ${JSON.stringify(summary)}`);
    const wantOk = [...expected.values()].filter((d) => d.status === 'ok').length;
    assert.equal(summary[0], wantOk);

    // Sampled in the DOM: a version 1, 2 and 3 key, the key that came back, tombstoned keys.
    for (const k of [key(1), key(10), key(300), key(9_999), key(42)]) {
      const shown = await lookup(k);
      assert.equal(shown.found, 'true', k);
      assert.deepEqual(JSON.parse(shown.text), expected.get(k), k);
    }
    for (const k of [key(KEYS), key(KEYS + 49)]) assert.deepEqual(await lookup(k), { text: 'no such key', found: 'false' }, k);
    // The key list shows its first page, sorted, with the latest values.
    assert.equal(await page.textContent('#page-info'), 'page 1 of 200 (10,000 keys)');
    assert.equal(await page.$$eval('#rows tr', (rows) => rows.length), 50);
    assert.equal(await page.textContent('#rows tr[data-key="dev-00010"] td.value'), JSON.stringify(expected.get(key(10))));
    assert.equal(await page.$$eval('#recent tr', (rows) => rows.length), 0, 'snapshot records are not changes');

    // Live: two updates (one on the visible page), then a tombstone, then a new key.
    const hot: Device = { status: 'fault', temp: 99.5, v: 10 };
    await produce([[key(1), hot], [key(5_000), { status: 'warn', temp: 42.25, v: 10 }]]);
    await page.waitForSelector('#recent tr[data-key="dev-00001"]', { timeout: 15_000 });
    await page.waitForSelector('#recent tr[data-key="dev-05000"]', { timeout: 15_000 });
    // Highlighted for a while (HIGHLIGHT_MS in app.js), in the recent list and in the key list.
    await page.waitForSelector('#recent tr.changed[data-key="dev-00001"]', { timeout: 2_000 });
    await page.waitForSelector('#rows tr.changed[data-key="dev-00001"]', { timeout: 2_000 });
    await page.screenshot({ path: join(SHOTS, 'devices.png'), fullPage: true });
    assert.equal(await page.textContent('#recent tr[data-key="dev-00001"] td.value'), JSON.stringify(hot));
    assert.equal(await page.textContent('#rows tr[data-key="dev-00001"] td.value'), JSON.stringify(hot));
    assert.deepEqual(JSON.parse((await lookup(key(5_000))).text), expected.get(key(5_000)));
    assert.equal(await page.getAttribute('#count', 'data-count'), String(KEYS), 'an update adds no key');

    await produce([[key(2), null]]);
    await page.waitForSelector(`#count[data-count="${KEYS - 1}"]`, { timeout: 15_000 });
    assert.equal(await page.textContent('#count'), '9,999 keys');
    await page.waitForSelector('#recent tr[data-kind="delete"][data-key="dev-00002"]', { timeout: 5_000 });
    assert.equal(await page.$('#rows tr[data-key="dev-00002"]'), null, 'the deleted key left the key list');
    assert.deepEqual(await lookup(key(2)), { text: 'no such key', found: 'false' });

    await produce([[key(20_000), { status: 'ok', temp: 20, v: 1 }]]);
    await page.waitForSelector(`#count[data-count="${KEYS}"]`, { timeout: 15_000 });
    assert.equal(await page.textContent('#changes'), '4');
    assert.equal(await page.evaluate(() => (window as unknown as PageWindow).devices.size), expected.size);

    await page.screenshot({ path: join(SHOTS, 'devices-live.png'), fullPage: true });
    assert.deepEqual(browser.errors, []);
  });
});
