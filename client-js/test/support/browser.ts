/**
 * What the browser tests share: the system's Chromium driven by
 * playwright-core with a throw-away profile, and a static server for the
 * example pages and the built bundle (plain or over TLS).
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type RequestListener, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { OUTPUT_DIR, PACKAGE_ROOT, freePort } from './gateway.js';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const BUNDLE = join(PACKAGE_ROOT, 'dist/browser/ferry.min.js');
/** The ES module build (with `createState`, which the bundles leave out), as examples/devices/ loads it. */
export const ESM_BUILD = join(PACKAGE_ROOT, 'dist/esm/index.js');
/** Where the tests save their screenshots. */
export const SHOTS = join(OUTPUT_DIR, 'browser');

/** Serves `page` at `/` and the built bundle at `/ferry.min.js` (and an empty favicon), nothing else. */
export function pageWithBundle(page: string): RequestListener {
  return (req, res) => {
    if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page);
    } else if (req.url === '/ferry.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(readFileSync(BUNDLE));
    } else if (req.url === '/favicon.ico') {
      res.writeHead(204).end(); // asked for by the browser itself
    } else {
      res.writeHead(404).end('not found');
    }
  };
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.css': 'text/css',
};

/** Fails with the fix when Chromium, or (with `bundle`, `esm`) the built bundle or ES module build, is missing. */
export function requireBrowser({ bundle = true, esm = false }: { bundle?: boolean; esm?: boolean } = {}): void {
  if (bundle && !existsSync(BUNDLE)) throw new Error(`${BUNDLE} is missing: run \`npm run build\` first`);
  if (esm && !existsSync(ESM_BUILD)) throw new Error(`${ESM_BUILD} is missing: run \`npm run build\` first`);
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (or set CHROMIUM_PATH)`);
}

/** Serves examples/, dist/browser/ and dist/esm/ of the package, nothing else. */
const packageFiles: RequestListener = (req, res) => {
  const allowed = ['examples', 'dist/browser', 'dist/esm'].map((dir) => join(PACKAGE_ROOT, dir) + sep);
  const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
  let file = resolve(PACKAGE_ROOT, normalize(`.${path}`));
  if (path.endsWith('/')) file = join(file, 'index.html');
  if (!allowed.some((dir) => file.startsWith(dir)) || !existsSync(file)) {
    res.writeHead(404).end('not found');
    return;
  }
  res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
  res.end(readFileSync(file));
};

export interface StaticServer {
  server: Server;
  /** `http://127.0.0.1:PORT`, or `https://` with `tls`. */
  origin: string;
  close(): Promise<void>;
}

/**
 * A static server on a free loopback port: the package's examples/,
 * dist/browser/ and dist/esm/ by default, or `handler`; over TLS with `tls`.
 */
export async function startStaticServer(
  options: { handler?: RequestListener; tls?: { cert: string; key: string } } = {},
): Promise<StaticServer> {
  const handler = options.handler ?? packageFiles;
  const server = options.tls ? createHttpsServer(options.tls, handler) : createHttpServer(handler);
  const port = await freePort();
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
  const scheme = options.tls ? 'https' : 'http';
  return {
    server,
    origin: `${scheme}://127.0.0.1:${port}`,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

export interface Browser {
  context: BrowserContext;
  page: Page;
  /** Uncaught page errors, and console errors unless turned off. */
  errors: string[];
  close(): Promise<void>;
}

/** Headless Chromium with a profile of its own, removed on close. */
export async function launchChromium(
  options: { args?: string[]; viewport?: { width: number; height: number }; consoleErrors?: boolean } = {},
): Promise<Browser> {
  mkdirSync(SHOTS, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'ferry-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      ...(options.args ?? []),
    ],
    ...(options.viewport ? { viewport: options.viewport } : {}),
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  if (options.consoleErrors ?? true) {
    page.on('console', (msg) => {
      if (msg.type() === 'error') errors.push(msg.text());
    });
  }
  return {
    context,
    page,
    errors,
    close: async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
