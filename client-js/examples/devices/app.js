// Ferry devices: the current value of every key of a topic (createState:
// a snapshot, then live changes), for tens of thousands of keys.
// Query parameters: ?url=ws://host:port/ws&topic=devices&throttle=250
//
// Rendering stays cheap however many keys there are: change events only
// mark what changed, and one render per animation frame updates the
// counters, the recent-changes table (RECENT rows) and the visible page of
// the key list (PAGE rows). No row per key is ever in the DOM.
import { FerryClient, createState } from '../../dist/esm/index.js';

const params = new URLSearchParams(location.search);
const url = params.get('url') || `ws://${location.hostname || '127.0.0.1'}:8080/ws`;
const topic = params.get('topic') || 'devices';
const throttleMs = Number(params.get('throttle') ?? 250);
const PAGE = 50;
const RECENT = 25;
const $ = (id) => document.getElementById(id);
$('topic').textContent = topic;
$('throttle').textContent = String(throttleMs);

const hub = new FerryClient({ url });
hub.on('state', (state) => {
  $('state').textContent = state;
  $('state').dataset.state = state;
});
hub.on('error', (err) => console.warn('ferry:', err.code, err.message));

const devices = createState(hub, topic, { throttleMs });

// What changed since the last render.
const HIGHLIGHT_MS = 4000; // a live change stays highlighted this long
const changed = new Set(); // keys set or deleted by live records since the last render
const changedAt = new Map(); // key -> time of its last live change, for the highlight
const recent = []; // live changes, newest first: { key, value, kind, at }
let liveChanges = 0;
const indexed = new Set(); // the keys, to know when one comes or goes
let keysChanged = true; // a key came or went: the sorted key list is stale
let sorted = []; // the keys, sorted (rebuilt only when keysChanged)
let page = 0;
let sync = 'snapshot';
let dirty = false;

devices.on('set', (key, value, message) => {
  if (!indexed.has(key)) {
    indexed.add(key);
    keysChanged = true;
  }
  if (!message.snapshot) noteLive({ key, value, kind: 'set' });
  schedule();
});
devices.on('delete', (key) => {
  indexed.delete(key);
  keysChanged = true;
  noteLive({ key, value: null, kind: 'delete' });
  schedule();
});
devices.on('clear', () => {
  // The connection dropped before the snapshot was complete: it comes again.
  indexed.clear();
  keysChanged = true;
  sync = 'snapshot';
  schedule();
});
devices.ready.then(
  () => {
    sync = 'live';
    schedule();
  },
  (err) => {
    sync = 'error';
    $('sync').textContent = `${err.code}: ${err.message}`;
    schedule();
  },
);

function noteLive(change) {
  const at = Date.now();
  liveChanges++;
  changed.add(change.key);
  changedAt.set(change.key, at);
  recent.unshift({ ...change, at });
  if (recent.length > RECENT) recent.length = RECENT;
  // Render again when the highlight is over.
  setTimeout(schedule, HIGHLIGHT_MS + 50);
}

/** One render per animation frame, whatever the number of changes. */
function schedule() {
  if (dirty) return;
  dirty = true;
  window.requestAnimationFrame(render);
}

const num = (n) => n.toLocaleString('en-US');
const text = (v) => (v instanceof Uint8Array ? `<${v.length} bytes>` : JSON.stringify(v));
const field = (v, name) => (v && typeof v === 'object' && !(v instanceof Uint8Array) ? v[name] : undefined);
const highlighted = (key, now) => now - (changedAt.get(key) ?? -Infinity) < HIGHLIGHT_MS;

function row(key, kind, values) {
  const tr = document.createElement('tr');
  tr.dataset.key = key;
  tr.dataset.kind = kind;
  for (const [content, className] of values) {
    const cell = document.createElement('td');
    if (className) cell.className = className;
    if (content && typeof content === 'object') cell.append(content);
    else cell.textContent = content === undefined ? '' : String(content);
    tr.append(cell);
  }
  return tr;
}

function statusBadge(status) {
  const span = document.createElement('span');
  if (typeof status === 'string') {
    span.className = `status status-${status}`;
    span.textContent = status;
  }
  return span;
}

function render() {
  dirty = false;
  const now = Date.now();
  for (const [key, at] of changedAt) if (now - at >= HIGHLIGHT_MS) changedAt.delete(key);

  $('sync').dataset.state = sync;
  if (sync !== 'error') $('sync').textContent = sync === 'live' ? 'live' : 'loading snapshot…';
  $('count').dataset.count = String(devices.size);
  $('count').textContent = `${num(devices.size)} keys`;
  $('changes').textContent = num(liveChanges);

  // Summary: one pass over the values (cheap next to a DOM update).
  const byStatus = { ok: 0, warn: 0, fault: 0 };
  for (const value of devices.values()) {
    const status = field(value, 'status');
    if (status in byStatus) byStatus[status]++;
  }
  for (const [status, n] of Object.entries(byStatus)) $(status).textContent = num(n);

  // Recent changes: at most RECENT rows; the newest change of a key is highlighted for a while.
  const seen = new Set();
  $('recent').replaceChildren(
    ...recent.map((change) => {
      const deleted = change.kind === 'delete';
      const tr = row(change.key, change.kind, [
        [new Date(change.at).toLocaleTimeString('en-GB')],
        [change.key],
        [deleted ? 'deleted' : statusBadge(field(change.value, 'status'))],
        [deleted ? '' : field(change.value, 'temp'), 'num'],
        [deleted ? '' : text(change.value), 'value'],
      ]);
      if (!seen.has(change.key) && now - change.at < HIGHLIGHT_MS) tr.className = 'changed';
      seen.add(change.key);
      return tr;
    }),
  );

  renderPage(now);
  renderLookup();
  changed.clear();
}

function visibleKeys() {
  if (keysChanged) {
    sorted = [...devices.keys()].sort();
    keysChanged = false;
  }
  const prefix = $('prefix').value.trim();
  return prefix ? sorted.filter((key) => key.startsWith(prefix)) : sorted;
}

let shown = '';
function renderPage(now) {
  const keys = visibleKeys();
  const pages = Math.max(1, Math.ceil(keys.length / PAGE));
  page = Math.min(page, pages - 1);
  const slice = keys.slice(page * PAGE, (page + 1) * PAGE);
  $('page-info').textContent = `page ${page + 1} of ${num(pages)} (${num(keys.length)} keys)`;
  // Rebuild the page's rows only when it shows other keys, one of them changed, or a highlight ended.
  const lit = slice.filter((key) => highlighted(key, now));
  const id = `${page}|${slice.join(',')}|${lit.join(',')}`;
  if (id === shown && !slice.some((key) => changed.has(key))) return;
  shown = id;
  $('rows').replaceChildren(
    ...slice.map((key) => {
      const value = devices.get(key);
      const tr = row(key, 'set', [[key], [statusBadge(field(value, 'status'))], [field(value, 'temp'), 'num'], [text(value), 'value']]);
      if (lit.includes(key)) tr.className = 'changed';
      return tr;
    }),
  );
}

function renderLookup() {
  const key = $('lookup').value.trim();
  const out = $('lookup-value');
  out.dataset.key = key;
  if (!key) {
    out.textContent = '';
    out.dataset.found = '';
  } else if (devices.has(key)) {
    out.textContent = text(devices.get(key));
    out.dataset.found = 'true';
  } else {
    out.textContent = sync === 'live' ? 'no such key' : 'not (yet) in the snapshot';
    out.dataset.found = 'false';
  }
}

$('prev').addEventListener('click', () => {
  page = Math.max(0, page - 1);
  schedule();
});
$('next').addEventListener('click', () => {
  page++;
  schedule();
});
$('prefix').addEventListener('input', () => {
  page = 0;
  schedule();
});
$('lookup').addEventListener('input', schedule);

hub.connect().catch((err) => console.warn('ferry connect:', err.code, err.message));
schedule();
// For poking around in the console (and for the browser test).
window.hub = hub;
window.devices = devices;
