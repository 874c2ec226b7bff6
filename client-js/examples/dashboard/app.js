// Ferry dashboard: subscribe to a topic and render it live; publish from a form.
// Query parameters: ?url=ws://host:port/ws&topic=dashboard
const params = new URLSearchParams(location.search);
const url = params.get('url') || `ws://${location.hostname}:8080/ws`;
const topic = params.get('topic') || 'dashboard';
const $ = (id) => document.getElementById(id);
$('topic').textContent = topic;

const hub = new Ferry.FerryClient({
  url,
  offlineQueue: { maxSize: 500, storage: new Ferry.IndexedDBStorage({ storeName: `outbox-${topic}` }) },
});
const showState = (state) => {
  $('state').textContent = state;
  $('state').dataset.state = state;
  $('queued').textContent = String(hub.queued);
};
hub.on('state', showState);
hub.on('error', (err) => console.warn('ferry:', err.code, err.message));
hub.on('gap', (gap) => console.warn('ferry gap:', gap));

// Live table (newest first, 20 rows) and chart (last 60 numeric points).
const points = [];
let count = 0;
const show = (v) => (v instanceof Uint8Array ? `<${v.length} bytes>` : JSON.stringify(v));
hub.subscribe(topic, (msg) => {
  count++;
  $('count').textContent = `${count} records`;
  const row = document.createElement('tr');
  row.dataset.offset = `${msg.partition}/${msg.offset}`;
  for (const text of [msg.partition, msg.offset, msg.key instanceof Uint8Array ? '<bytes>' : (msg.key ?? ''), show(msg.value)]) {
    const cell = document.createElement('td');
    cell.textContent = String(text);
    row.append(cell);
  }
  row.lastChild.className = 'value';
  $('rows').prepend(row);
  while ($('rows').children.length > 20) $('rows').lastChild.remove();

  const temp = msg.value && typeof msg.value === 'object' ? msg.value.temp : undefined;
  if (typeof temp === 'number') {
    points.push(temp);
    if (points.length > 60) points.shift();
    const min = Math.min(...points);
    const span = Math.max(...points) - min || 1;
    $('line').setAttribute(
      'points',
      points.map((p, i) => `${(i / Math.max(1, points.length - 1)) * 600},${130 - ((p - min) / span) * 120}`).join(' '),
    );
  }
});

$('publish').addEventListener('submit', async (event) => {
  event.preventDefault();
  const ack = $('ack');
  ack.className = '';
  let value;
  try {
    value = JSON.parse($('value').value);
  } catch {
    ack.className = 'error';
    ack.textContent = 'value is not valid JSON';
    return;
  }
  const key = $('key').value;
  ack.textContent = hub.state === 'open' ? 'publishing…' : 'queued until reconnect…';
  $('queued').textContent = String(hub.queued + 1);
  try {
    const { partition, offset } = await hub.publish(topic, value, key ? { key } : {});
    ack.textContent = `acked: partition ${partition} offset ${offset}`;
    ack.dataset.partition = String(partition);
    ack.dataset.offset = String(offset);
  } catch (err) {
    ack.className = 'error';
    ack.textContent = `${err.code}: ${err.message}`;
  }
  $('queued').textContent = String(hub.queued);
});

hub.connect();
window.hub = hub; // for poking around in the console
