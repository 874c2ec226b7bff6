// Ferry console: speaks protocol v1 (subprotocol `ferry.v1`) over the
// gateway's own /ws, and reads /metrics. Served by the gateway under a
// strict Content-Security-Policy: no inline script, no other origin.
// Everything from the wire is shown with textContent, never as HTML.
'use strict';

(function () {
  const MAX_ROWS = 500;
  const METRICS_EVERY_MS = 2000;
  const $ = (id) => document.getElementById(id);

  let ws = null;
  let welcome = null;
  let nextId = 1;
  const pending = new Map(); // request id -> handler(frame)
  const subs = new Map(); // topic -> { li, count, lastCount, lastAt, state }

  // ---- connection -------------------------------------------------------

  function wsUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws`;
  }

  function setState(state, text) {
    const el = $('state');
    el.dataset.state = state;
    el.textContent = text;
    $('connect').disabled = state === 'open' || state === 'connecting';
    $('disconnect').disabled = state === 'closed';
  }

  function note(id, text, kind) {
    const el = $(id);
    el.textContent = text;
    el.className = 'note' + (kind ? ' ' + kind : '');
  }

  function connect() {
    if (ws) ws.close(1000);
    const token = $('token').value.trim();
    welcome = null;
    setState('connecting', 'connecting…');
    note('conn-note', '');
    const socket = new WebSocket(wsUrl(), 'ferry.v1');
    ws = socket;
    socket.onopen = () => {
      if (ws !== socket) return;
      if (token) {
        setState('connecting', 'authenticating…');
        request({ type: 'auth', token }, (reply) => {
          if (reply.type === 'error' && welcome) {
            note('conn-note', `token not used: ${reply.message}`, 'warn');
          } else if (reply.type === 'error') {
            note('conn-note', `token refused (${reply.code}): ${reply.message}`, 'bad');
          }
        });
      } else {
        setState('connecting', 'waiting for welcome…');
        setTimeout(() => {
          if (ws === socket && !welcome) {
            note('conn-note', 'no welcome yet: this gateway wants a token (type it and press Connect)', 'warn');
          }
        }, 2000);
      }
    };
    socket.onmessage = (event) => {
      if (ws !== socket) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      onFrame(frame);
    };
    socket.onclose = (event) => {
      if (ws !== socket) return;
      ws = null;
      welcome = null;
      pending.clear();
      const why = event.reason ? ` ${event.reason}` : '';
      setState('closed', `closed (${event.code}${why})`);
      $('node').textContent = '';
      for (const sub of subs.values()) setSubState(sub, 'inactive', 'not subscribed (disconnected)');
    };
  }

  function disconnect() {
    if (ws) ws.close(1000);
  }

  function send(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
    return true;
  }

  /** Sends a request with a fresh id; `handler` gets its reply. */
  function request(frame, handler) {
    const id = `c${nextId++}`;
    pending.set(id, handler);
    if (typeof frame === 'string') {
      // Pre-encoded JSON (a publish whose value keeps the text as typed).
      send(frame.replace(/^\{/, `{"id":${JSON.stringify(id)},`));
    } else {
      send({ ...frame, id });
    }
    return id;
  }

  function hasCapability(name) {
    // A welcome without the list comes from a gateway that has them all.
    return !welcome || !Array.isArray(welcome.capabilities) || welcome.capabilities.includes(name);
  }

  function onFrame(frame) {
    if (frame.type === 'welcome') {
      welcome = frame;
      setState('open', 'connected');
      $('node').textContent = `node ${frame.node}` + (frame.subject ? ` · subject ${frame.subject}` : '');
      for (const [topic, sub] of subs) subscribe(topic, sub.from);
      return;
    }
    if (frame.type === 'message') return onMessage(frame);
    if (frame.type === 'unsubscribed' && !frame.id) {
      const sub = subs.get(frame.topic);
      if (sub) setSubState(sub, 'inactive', `ended by the gateway: ${frame.reason ?? ''}`);
      return;
    }
    if (frame.type === 'lagged' || frame.type === 'gap') {
      const sub = subs.get(frame.topic);
      if (sub) sub.li.querySelector('.detail').textContent = `${frame.type}: ${JSON.stringify(frame)}`;
      return;
    }
    if (frame.id !== undefined && pending.has(frame.id)) {
      const handler = pending.get(frame.id);
      pending.delete(frame.id);
      handler(frame);
      return;
    }
    if (frame.type === 'error') note('conn-note', `${frame.code}: ${frame.message}`, 'bad');
  }

  // ---- subscriptions ----------------------------------------------------

  function setSubState(sub, state, text) {
    sub.li.dataset.state = state;
    sub.li.querySelector('.detail').textContent = text;
  }

  function addSub(topic, from) {
    if (subs.has(topic)) return subs.get(topic);
    const li = document.createElement('li');
    li.dataset.topic = topic;
    const name = document.createElement('strong');
    name.textContent = topic;
    const rate = document.createElement('span');
    rate.className = 'rate';
    rate.textContent = '0.0/s';
    const count = document.createElement('span');
    count.className = 'count';
    count.textContent = '0';
    const detail = document.createElement('span');
    detail.className = 'detail';
    const drop = document.createElement('button');
    drop.type = 'button';
    drop.textContent = '×';
    drop.title = 'unsubscribe';
    drop.addEventListener('click', () => {
      send({ type: 'unsubscribe', id: `c${nextId++}`, topic });
      subs.delete(topic);
      li.remove();
    });
    li.append(name, rate, count, detail, drop);
    $('subs').append(li);
    const sub = { li, from, count: 0, lastCount: 0, lastAt: performance.now(), rate: 0 };
    subs.set(topic, sub);
    return sub;
  }

  function subscribe(topic, from) {
    const sub = addSub(topic, from);
    sub.from = from;
    if (!welcome) {
      setSubState(sub, 'inactive', 'not connected');
      return;
    }
    setSubState(sub, 'pending', 'subscribing…');
    const frame = { type: 'subscribe', topic };
    if (from !== 'latest' && hasCapability('from')) frame.from = from;
    request(frame, (reply) => {
      if (reply.type === 'subscribed') {
        const parts = reply.partitions ? Object.keys(reply.partitions).length : 0;
        setSubState(sub, 'active', parts ? `${parts} partitions` : 'subscribed');
      } else {
        setSubState(sub, 'failed', `${reply.code}: ${reply.message}`);
      }
    });
  }

  function tickRates() {
    const now = performance.now();
    for (const sub of subs.values()) {
      const seconds = (now - sub.lastAt) / 1000;
      const instant = (sub.count - sub.lastCount) / seconds;
      // Smoothed so a burst does not flicker; decays to 0 when idle.
      sub.rate = sub.rate * 0.5 + instant * 0.5;
      if (sub.rate < 0.05) sub.rate = instant;
      sub.lastCount = sub.count;
      sub.lastAt = now;
      sub.li.querySelector('.rate').textContent = `${sub.rate.toFixed(1)}/s`;
    }
  }

  // ---- records ----------------------------------------------------------

  function shown(text, max) {
    return text.length > max ? text.slice(0, max - 1) + '…' : text;
  }

  function cell(text, className, title) {
    const td = document.createElement('td');
    td.className = className;
    td.textContent = text;
    if (title) td.title = title;
    return td;
  }

  function onMessage(m) {
    const sub = subs.get(m.topic);
    if (sub) {
      sub.count += 1;
      sub.li.querySelector('.count').textContent = String(sub.count);
    }
    let value;
    if ('value' in m) value = JSON.stringify(m.value);
    else if (m.value_b64 !== undefined) value = `base64:${m.value_b64}`;
    else value = 'null';
    const key = m.key ?? (m.key_b64 !== undefined ? `base64:${m.key_b64}` : '');
    const time = typeof m.timestamp === 'number' ? new Date(m.timestamp) : null;
    const tr = document.createElement('tr');
    tr.dataset.pos = `${m.topic}/${m.partition}/${m.offset}`;
    tr.append(
      cell(m.topic, 'topic'),
      cell(String(m.partition), 'partition'),
      cell(String(m.offset), 'offset'),
      cell(shown(key, 80), 'key', key.length > 80 ? key : ''),
      cell(shown(value, 400), 'value', value.length > 400 ? shown(value, 4000) : ''),
      cell(time ? time.toISOString().slice(11, 23) : '', 'time', time ? time.toISOString() : ''),
    );
    const rows = $('rows');
    rows.prepend(tr);
    while (rows.childElementCount > MAX_ROWS) rows.lastElementChild.remove();
    $('row-count').textContent = String(rows.childElementCount);
  }

  // ---- publish ----------------------------------------------------------

  function publish() {
    const topic = $('pub-topic').value.trim();
    const key = $('pub-key').value;
    const text = $('pub-value').value.trim();
    if (!welcome) {
      note('pub-result', 'not connected', 'bad');
      return;
    }
    let value;
    try {
      JSON.parse(text);
      value = text; // valid JSON: sent as typed, byte for byte
    } catch {
      value = JSON.stringify(text); // anything else: as a JSON string
    }
    let frame = `{"type":"publish","topic":${JSON.stringify(topic)},"value":${value}`;
    if (key !== '') frame += `,"key":${JSON.stringify(key)}`;
    frame += '}';
    const result = $('pub-result');
    delete result.dataset.partition;
    delete result.dataset.offset;
    delete result.dataset.code;
    note('pub-result', 'publishing…');
    request(frame, (reply) => {
      if (reply.type === 'ack') {
        result.dataset.partition = String(reply.partition);
        result.dataset.offset = String(reply.offset);
        note('pub-result', `acked: partition ${reply.partition} offset ${reply.offset}`, 'good');
      } else {
        result.dataset.code = reply.code ?? 'error';
        note('pub-result', `${reply.code}: ${reply.message}`, 'bad');
      }
    });
  }

  // ---- node figures -----------------------------------------------------

  /** Prometheus text → metric name → sum over its series. */
  function parseMetrics(text) {
    const sums = new Map();
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const value = Number(match[3]);
      if (!Number.isFinite(value)) continue;
      sums.set(match[1], (sums.get(match[1]) ?? 0) + value);
    }
    return sums;
  }

  let previous = null;

  function figure(id, text) {
    $(id).textContent = text;
  }

  async function refreshMetrics() {
    try {
      const res = await fetch('/metrics', { cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const m = parseMetrics(await res.text());
      const at = performance.now();
      const get = (name) => m.get(name) ?? 0;
      figure('m-kafka', get('ferry_kafka_ready') >= 1 ? 'ready' : 'unreachable');
      $('m-kafka').dataset.ready = String(get('ferry_kafka_ready') >= 1);
      figure('m-connections', String(get('ferry_connections')));
      figure('m-subscriptions', String(get('ferry_subscriptions')));
      figure('m-acked', String(get('ferry_publishes_acked_total')));
      figure('m-failed', String(get('ferry_publishes_failed_total')));
      figure('m-fanout', String(get('ferry_fanout_records_total')));
      figure('m-schema', String(get('ferry_schema_rejections_total')));
      const count = get('ferry_publish_latency_seconds_count');
      const sum = get('ferry_publish_latency_seconds_sum');
      figure('m-latency', count > 0 ? `${((sum / count) * 1000).toFixed(1)} ms` : '–');
      if (previous) {
        const seconds = (at - previous.at) / 1000;
        const rate = (name) => Math.max(0, (get(name) - (previous.m.get(name) ?? 0)) / seconds).toFixed(1);
        figure('m-publish-rate', `${rate('ferry_publishes_acked_total')}/s`);
        figure('m-fanout-rate', `${rate('ferry_fanout_records_total')}/s`);
      }
      previous = { m, at };
      $('metrics').dataset.updated = String(Date.now());
      note('metrics-note', '');
    } catch (e) {
      note('metrics-note', `cannot read /metrics: ${e.message}`, 'bad');
    }
  }

  // ---- wiring -----------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('connect-form').addEventListener('submit', (e) => {
      e.preventDefault();
      connect();
    });
    $('disconnect').addEventListener('click', disconnect);
    $('sub-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const topic = $('sub-topic').value.trim();
      const known = subs.get(topic);
      // Already subscribed (or on its way): the gateway would refuse a second one.
      if (topic && !(known && ['active', 'pending'].includes(known.li.dataset.state))) {
        subscribe(topic, $('sub-from').value);
      }
    });
    $('pub-form').addEventListener('submit', (e) => {
      e.preventDefault();
      publish();
    });
    $('clear').addEventListener('click', () => {
      $('rows').replaceChildren();
      $('row-count').textContent = '0';
    });
    setInterval(tickRates, 1000);
    setInterval(refreshMetrics, METRICS_EVERY_MS);
    refreshMetrics();
  });
})();
