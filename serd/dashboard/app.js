/* serd live dashboard: subscribes to {prefix}/+/{emotion,alert,status} over MQTT-over-WebSockets
 * and shows one line per device and channel. No build step, no network access besides the
 * broker; payloads are documented in docs/events.md. Text from the broker is only ever put
 * into the page with textContent (never as HTML).
 */
(function () {
  'use strict';

  var COLORS = {
    neutral: '#9aa5b1', calm: '#6fb7b0', happy: '#f2b632', sad: '#3f74c9',
    angry: '#d9372b', fearful: '#8a55d1', disgust: '#3d9a57', surprised: '#ef7d22',
  };
  var EXTRA_COLORS = ['#c2549d', '#2aa3b8', '#9c6b30', '#6b7bd6', '#78a03c', '#b54848'];
  var UNSURE = 'unsure';
  var UNSURE_COLOR = '#cfd5dc';
  var ALERT_FILL = 'rgba(217, 55, 43, 0.16)';
  var ALERT_EDGE = 'rgba(217, 55, 43, 0.85)';
  var REDRAW_MS = 500;
  var MAX_SEGMENTS = 4000;

  var params = new URLSearchParams(window.location.search);
  var state = {
    client: null,
    settings: null,
    devices: new Map(),  // device -> {availability, reason, version, seq: {emotion, alert}, skews: []}
    lines: new Map(),    // device \0 channel -> line
    labels: [],          // labels seen, in first-seen order (model order from probs)
    messages: 0,
    openedAt: Date.now(),
  };

  // ---------------------------------------------------------------- helpers

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function colorOf(label) {
    if (!label) return UNSURE_COLOR;
    if (COLORS[label]) return COLORS[label];
    var h = 0;
    for (var i = 0; i < label.length; i++) h = (h * 31 + label.charCodeAt(i)) >>> 0;
    return EXTRA_COLORS[h % EXTRA_COLORS.length];
  }

  function parseTime(text) {
    var t = Date.parse(text);
    return isNaN(t) ? null : t;
  }

  function clock(ms) {
    var d = new Date(ms);
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  function ago(ms) {
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    return Math.floor(s / 3600) + ' h ago';
  }

  function alertState(p) {
    return p.state === 'cleared' ? 'cleared' : 'started';
  }

  function alertText(p) {
    var msg = typeof p.message === 'string' ? p.message : '';
    return p.rule + ' (' + p.label + ')' + (msg ? ': ' + msg : '');
  }

  function addLabel(label) {
    if (!label || state.labels.indexOf(label) >= 0) return;
    state.labels.push(label);
    renderLegend();
  }

  // ---------------------------------------------------------------- settings

  function defaultBroker() {
    var secure = window.location.protocol === 'https:';
    var host = window.location.hostname || 'localhost';
    return (secure ? 'wss' : 'ws') + '://' + host + ':' + (secure ? '8081' : '9001');
  }

  function readForm() {
    return {
      broker: $('broker').value.trim(),
      prefix: $('prefix').value.trim().replace(/\/+$/, '') || 'serd',
      username: $('username').value,
      password: $('password').value,
      minutes: Math.min(60, Math.max(1, Number($('minutes').value) || 5)),
    };
  }

  function fillForm(s) {
    $('broker').value = s.broker || '';
    $('prefix').value = s.prefix || 'serd';
    $('username').value = s.username || '';
    $('password').value = s.password || '';
    $('minutes').value = s.minutes || 5;
  }

  function loadServerConfig() {
    // `serd dashboard` serves config.json; any other static server simply has none.
    if (window.location.protocol === 'file:' || !window.fetch) return Promise.resolve({});
    return fetch('config.json', { cache: 'no-store' })
      .then(function (r) { return r.ok ? r.json() : {}; })
      .catch(function () { return {}; });
  }

  // ---------------------------------------------------------------- connection

  function setConn(kind, text) {
    var c = $('conn');
    c.dataset.state = kind;
    c.textContent = text;
  }

  function connect(s) {
    if (state.client) {
      state.client.end(true);
      state.client = null;
    }
    state.settings = s;
    if (!s.broker) {
      setConn('idle', 'not connected');
      $('settings').open = true;
      return;
    }
    if (!window.mqtt || !window.mqtt.connect) {
      setConn('error', 'MQTT client failed to load (vendor/mqtt.min.js)');
      return;
    }
    var query = new URLSearchParams(window.location.search);
    query.set('broker', s.broker);
    query.set('prefix', s.prefix);
    if (s.username) query.set('username', s.username); else query.delete('username');
    if (s.minutes !== 5) query.set('minutes', String(s.minutes)); else query.delete('minutes');
    // The password stays in the address only if it was given there.
    if (!params.has('password')) query.delete('password');
    window.history.replaceState(null, '', '?' + query.toString());

    setConn('connecting', 'connecting to ' + s.broker);
    var options = {
      clientId: 'serd-dashboard-' + Math.random().toString(16).slice(2, 10),
      clean: true,
      keepalive: 30,
      reconnectPeriod: 2000,
      connectTimeout: 10000,
      protocolVersion: 4,
    };
    if (s.username) options.username = s.username;
    if (s.password) options.password = s.password;
    var client;
    try {
      client = window.mqtt.connect(s.broker, options);
    } catch (e) {
      setConn('error', 'cannot connect: ' + (e && e.message ? e.message : e));
      $('settings').open = true;
      return;
    }
    state.client = client;
    var topics = ['emotion', 'alert', 'status'].map(function (t) { return s.prefix + '/+/' + t; });
    client.on('connect', function () {
      if (client !== state.client) return;
      setConn('connected', 'connected to ' + s.broker);
      $('settings').open = false;
      client.subscribe(topics, { qos: 1 }, function (err) {
        if (err) setConn('error', 'subscribe failed: ' + err.message);
      });
    });
    client.on('reconnect', function () {
      if (client === state.client) setConn('reconnecting', 'reconnecting to ' + s.broker + '\u2026');
    });
    client.on('close', function () {
      if (client === state.client && $('conn').dataset.state === 'connected') {
        setConn('reconnecting', 'connection lost; reconnecting\u2026');
      }
    });
    client.on('offline', function () {
      if (client === state.client) setConn('reconnecting', 'broker unreachable; retrying\u2026');
    });
    client.on('error', function (err) {
      if (client === state.client) setConn('error', (err && err.message ? err.message : 'error') + '; retrying');
    });
    client.on('message', function (topic, payload) {
      if (client === state.client) onMessage(topic, payload);
    });
  }

  // ---------------------------------------------------------------- messages

  function onMessage(topic, payload) {
    var prefix = state.settings.prefix + '/';
    if (topic.indexOf(prefix) !== 0) return;
    var rest = topic.slice(prefix.length).split('/');
    if (rest.length !== 2) return;
    var device = rest[0];
    var kind = rest[1];
    var p;
    try {
      p = JSON.parse(new TextDecoder().decode(payload));
    } catch (e) {
      return;  // not ours
    }
    if (!p || typeof p !== 'object') return;
    state.messages++;
    var dev = getDevice(device);
    if (kind === 'status') onStatus(dev, device, p);
    else if (kind === 'emotion') onEmotion(dev, device, p);
    else if (kind === 'alert') onAlert(dev, device, p);
    renderSummary();
  }

  function getDevice(device) {
    var dev = state.devices.get(device);
    if (!dev) {
      dev = { availability: 'unknown', reason: '', version: '', seq: {}, fresh: {}, skews: [],
        offset: 0 };
      state.devices.set(device, dev);
    }
    return dev;
  }

  function isDuplicate(dev, kind, seq) {
    // A seq already seen is an event re-sent after a reconnect. seq starts again at 1 only
    // when the device's state was wiped; it then comes back online first (docs/events.md).
    if (typeof seq !== 'number') return false;
    var last = dev.seq[kind] || 0;
    var restarted = dev.fresh[kind] === true && seq === 1;
    dev.fresh[kind] = false;
    if (seq <= last && !restarted && last - seq < 1000) return true;
    dev.seq[kind] = seq;
    return false;
  }

  function noteSkew(dev, p) {
    // Device clocks may be off: estimate (browser - device) from ts; delays only add, so
    // the smallest recent difference is the best estimate.
    var ts = parseTime(p.ts);
    if (ts === null) return;
    dev.skews.push(Date.now() - ts);
    if (dev.skews.length > 40) dev.skews.shift();
    var min = Math.min.apply(null, dev.skews);
    dev.offset = Math.abs(min) > 2000 ? min : 0;
  }

  function onStatus(dev, device, p) {
    var was = dev.availability;
    dev.availability = p.state === 'online' ? 'online' : (p.state === 'offline' ? 'offline' : 'unknown');
    dev.reason = p.reason || '';
    dev.version = p.version || '';
    if (dev.availability === 'online' && was !== 'online') dev.fresh = { emotion: true, alert: true };
    if (!hasLines(device)) getLine(device, null);
    state.lines.forEach(function (line) { if (line.device === device) renderLine(line); });
  }

  function onEmotion(dev, device, p) {
    if (typeof p.channel !== 'string' || isDuplicate(dev, 'emotion', p.seq)) return;
    noteSkew(dev, p);
    var start = parseTime(p.start), end = parseTime(p.end);
    if (start === null || end === null) return;
    start += dev.offset;
    end += dev.offset;
    if (p.probs && typeof p.probs === 'object') Object.keys(p.probs).forEach(addLabel);
    var line = getLine(device, p.channel);
    var label = typeof p.label === 'string' && p.label ? p.label : null;
    var conf = typeof p.confidence === 'number' ? p.confidence : 0;
    if (p.type === 'window') {
      // Windows overlap (e.g. 2 s every 0.5 s): draw only what the previous one did not cover.
      var from = (start < line.lastWindowEnd && line.lastWindowEnd - start < 30000) ? line.lastWindowEnd : start;
      if (end > from) line.windows.push({ start: from, end: end, label: label, conf: conf });
      line.lastWindowEnd = Math.max(line.lastWindowEnd, end);
      trim(line.windows);
    } else if (p.type === 'utterance') {
      line.utterances.push({ start: start, end: end, label: label, conf: conf });
      trim(line.utterances);
      var key = label || UNSURE;
      line.counts[key] = (line.counts[key] || 0) + 1;
    } else {
      return;
    }
    var best = null;
    if (!label && p.probs && typeof p.probs === 'object') {
      Object.keys(p.probs).forEach(function (k) {
        if (typeof p.probs[k] === 'number' && (best === null || p.probs[k] > p.probs[best])) best = k;
      });
    }
    line.current = { label: label, conf: conf, type: p.type, best: best, at: Date.now() };
    renderLine(line);
  }

  function onAlert(dev, device, p) {
    if (typeof p.channel !== 'string' || isDuplicate(dev, 'alert', p.seq)) return;
    noteSkew(dev, p);
    var line = getLine(device, p.channel);
    var start = parseTime(p.start), end = parseTime(p.end);
    if (start === null || end === null) return;
    start += dev.offset;
    end += dev.offset;
    var st = alertState(p);
    var open = null;
    for (var i = line.alerts.length - 1; i >= 0; i--) {
      if (line.alerts[i].rule === p.rule && line.alerts[i].active) { open = line.alerts[i]; break; }
    }
    if (st === 'started') {
      if (!open) {
        line.alerts.push({ rule: p.rule, label: p.label, start: start, end: null, active: true,
          text: alertText(p), at: Date.now() });
      }
    } else if (open) {
      open.active = false;
      open.end = end;
      open.text = alertText(p);
      open.clearedAt = Date.now();
    } else {
      // Cleared before this page saw it start: still show the span.
      line.alerts.push({ rule: p.rule, label: p.label, start: start, end: end, active: false,
        text: alertText(p), at: Date.now(), clearedAt: Date.now() });
    }
    trim(line.alerts);
    line.lastAlert = line.alerts[line.alerts.length - 1];
    renderLine(line);
  }

  function trim(list) {
    if (list.length > MAX_SEGMENTS) list.splice(0, list.length - MAX_SEGMENTS);
  }

  // ---------------------------------------------------------------- lines

  function lineKey(device, channel) { return device + '\u0000' + (channel === null ? '' : channel); }

  function hasLines(device) {
    var found = false;
    state.lines.forEach(function (line) { if (line.device === device) found = true; });
    return found;
  }

  function getLine(device, channel) {
    if (channel !== null) {
      // The device's placeholder (status seen, no events yet) gives way to real channels.
      var placeholder = state.lines.get(lineKey(device, null));
      if (placeholder) {
        placeholder.el.root.remove();
        state.lines.delete(lineKey(device, null));
      }
    }
    var key = lineKey(device, channel);
    var line = state.lines.get(key);
    if (line) return line;
    line = {
      device: device, channel: channel, current: null, windows: [], utterances: [],
      alerts: [], lastAlert: null, counts: {}, lastWindowEnd: 0, el: null,
    };
    line.el = buildLine(line);
    state.lines.set(key, line);
    insertSorted(line);
    $('empty').hidden = true;
    return line;
  }

  function buildLine(line) {
    var root = el('section', 'line');
    root.dataset.device = line.device;
    root.dataset.channel = line.channel === null ? '' : line.channel;
    var head = el('div', 'line-head');
    var title = el('div', 'line-title', line.device);
    var chan = el('span', 'channel', ' / ' + (line.channel === null ? '\u2014' : line.channel));
    title.appendChild(chan);
    var avail = el('span', 'availability', 'unknown');
    var emotion = el('div', 'emotion');
    var label = el('span', 'emotion-label', line.channel === null ? 'no events yet' : 'waiting');
    label.dataset.label = '';
    var conf = el('span', 'emotion-conf', '');
    emotion.appendChild(label);
    emotion.appendChild(conf);
    var updated = el('span', 'updated', '');
    head.appendChild(title);
    head.appendChild(avail);
    head.appendChild(emotion);
    head.appendChild(updated);
    var banner = el('div', 'alert-banner', '');
    banner.hidden = true;
    banner.setAttribute('role', 'alert');
    var canvas = el('canvas', 'timeline');
    canvas.setAttribute('aria-label', 'emotion timeline of ' + line.device + ' ' + (line.channel || ''));
    var counts = el('div', 'counts');
    root.appendChild(head);
    root.appendChild(banner);
    root.appendChild(canvas);
    root.appendChild(counts);
    return { root: root, avail: avail, label: label, conf: conf, updated: updated,
      banner: banner, canvas: canvas, counts: counts };
  }

  function insertSorted(line) {
    var container = $('lines');
    var keys = Array.from(state.lines.values())
      .map(function (l) { return [l.device, l.channel === null ? '' : l.channel, l]; })
      .sort(function (a, b) { return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0); });
    var idx = keys.findIndex(function (k) { return k[2] === line; });
    var next = keys[idx + 1];
    if (next && next[2].el.root.parentNode === container) container.insertBefore(line.el.root, next[2].el.root);
    else container.appendChild(line.el.root);
    renderLine(line);
  }

  function renderLine(line) {
    var dev = getDevice(line.device);
    var e = line.el;
    e.root.dataset.availability = dev.availability;
    e.avail.dataset.state = dev.availability;
    e.avail.textContent = dev.availability === 'offline'
      ? 'offline' + (dev.reason ? ' (' + dev.reason.replace(/_/g, ' ') + ')' : '')
      : dev.availability;
    if (line.current) {
      var lab = line.current.label;
      e.label.textContent = lab || UNSURE;
      e.label.dataset.label = lab || '';
      e.label.style.color = lab ? colorOf(lab) : '';
      var pct = Math.round(line.current.conf * 100) + '%';
      e.conf.textContent = (lab || !line.current.best ? pct : 'best guess ' + line.current.best + ' ' + pct) +
        ' \u00b7 ' + line.current.type;
    }
    var a = line.lastAlert;
    if (a) {
      e.banner.hidden = false;
      e.banner.dataset.state = a.active ? 'active' : 'cleared';
      e.banner.textContent = a.active
        ? 'ALERT ' + a.text + ' \u2014 since ' + clock(a.start)
        : 'last alert: ' + a.text + ' \u2014 ' + clock(a.start) + '\u2013' + clock(a.end);
      e.root.dataset.alert = a.active ? 'active' : 'cleared';
    } else {
      e.root.dataset.alert = 'none';
    }
    renderCounts(line);
    renderTime(line);
    drawTimeline(line);
  }

  function renderTime(line) {
    line.el.updated.textContent = line.current ? 'updated ' + ago(line.current.at) : '';
  }

  function renderCounts(line) {
    var box = line.el.counts;
    box.textContent = '';
    var keys = state.labels.filter(function (k) { return line.counts[k]; });
    if (line.counts[UNSURE]) keys.push(UNSURE);
    keys.forEach(function (k) {
      var item = el('span', 'count');
      item.dataset.label = k;
      var sw = el('span', 'swatch');
      sw.style.background = k === UNSURE ? UNSURE_COLOR : colorOf(k);
      item.appendChild(sw);
      item.appendChild(document.createTextNode(k + ' '));
      item.appendChild(el('b', null, line.counts[k]));
      box.appendChild(item);
    });
  }

  function renderLegend() {
    var box = $('legend');
    box.textContent = '';
    state.labels.concat([UNSURE]).forEach(function (k) {
      var key = el('span', 'key');
      var sw = el('span', 'swatch');
      sw.style.background = k === UNSURE ? UNSURE_COLOR : colorOf(k);
      key.appendChild(sw);
      key.appendChild(document.createTextNode(k === UNSURE ? 'unsure (below threshold)' : k));
      box.appendChild(key);
    });
    var al = el('span', 'key');
    var asw = el('span', 'swatch');
    asw.style.background = ALERT_EDGE;
    al.appendChild(asw);
    al.appendChild(document.createTextNode('alert'));
    box.appendChild(al);
  }

  function renderSummary() {
    var online = 0, offline = 0, alerts = 0;
    state.devices.forEach(function (d) {
      if (d.availability === 'online') online++;
      else if (d.availability === 'offline') offline++;
    });
    state.lines.forEach(function (l) { if (l.lastAlert && l.lastAlert.active) alerts++; });
    var parts = [state.devices.size + ' device' + (state.devices.size === 1 ? '' : 's'),
      online + ' online'];
    if (offline) parts.push(offline + ' offline');
    parts.push(alerts ? alerts + ' active alert' + (alerts === 1 ? '' : 's') : 'no active alerts');
    $('summary').textContent = parts.join(' \u00b7 ');
  }

  // ---------------------------------------------------------------- timeline

  function drawTimeline(line) {
    var canvas = line.el.canvas;
    var dpr = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    var ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var span = (state.settings ? state.settings.minutes : 5) * 60000;
    var now = Date.now();
    var t0 = now - span;
    var axisH = 14, uttH = 9, gap = 3;
    var barTop = 2, barBottom = h - axisH - uttH - gap;
    function x(t) { return (t - t0) / span * w; }

    ctx.fillStyle = '#f7f8fa';
    ctx.fillRect(0, 0, w, h - axisH);

    // alerts: shaded spans
    line.alerts.forEach(function (a) {
      var end = a.end === null ? now : a.end;
      if (end < t0) return;
      var x0 = Math.max(0, x(a.start)), x1 = Math.min(w, x(end));
      ctx.fillStyle = ALERT_FILL;
      ctx.fillRect(x0, 0, Math.max(2, x1 - x0), h - axisH);
      ctx.fillStyle = ALERT_EDGE;
      ctx.fillRect(x0, 0, Math.max(2, x1 - x0), 3);
    });

    // grid: one line per minute
    ctx.strokeStyle = '#e3e7ec';
    ctx.lineWidth = 1;
    ctx.fillStyle = '#7a8591';
    ctx.font = '10px system-ui, sans-serif';
    ctx.textBaseline = 'top';
    var step = span <= 60000 ? 10000 : span <= 3 * 60000 ? 30000 : span <= 10 * 60000 ? 60000 : 300000;
    for (var k = 0; k * step <= span; k++) {
      var tx = w - k * step / span * w;
      ctx.beginPath();
      ctx.moveTo(Math.round(tx) + 0.5, 0);
      ctx.lineTo(Math.round(tx) + 0.5, h - axisH);
      ctx.stroke();
      var back = k * step / 1000;
      var txt = k === 0 ? 'now' : '\u2212' + (back % 60 ? back + ' s' : back / 60 + ' min');
      ctx.textAlign = k === 0 ? 'right' : 'center';
      ctx.fillText(txt, Math.min(w - 1, Math.max(14, tx)), h - axisH + 2);
    }

    // windows: bars, height = confidence
    line.windows.forEach(function (s) {
      if (s.end < t0) return;
      // Whole pixels: adjacent windows meet without anti-aliased seams.
      var x0 = Math.floor(x(s.start)), x1 = Math.ceil(x(s.end));
      var bh = Math.max(3, (barBottom - barTop) * Math.min(1, Math.max(0.05, s.conf)));
      ctx.fillStyle = colorOf(s.label);
      ctx.fillRect(x0, barBottom - bh, Math.max(1, x1 - x0), bh);
    });

    // utterances: a strip below
    line.utterances.forEach(function (s) {
      if (s.end < t0) return;
      var x0 = Math.floor(x(s.start)), x1 = Math.ceil(x(s.end));
      ctx.fillStyle = colorOf(s.label);
      ctx.fillRect(x0, barBottom + gap, Math.max(2, x1 - x0), uttH);
    });
  }

  function redrawAll() {
    state.lines.forEach(function (line) { drawTimeline(line); renderTime(line); });
  }

  // ---------------------------------------------------------------- start

  function init() {
    renderLegend();
    renderSummary();
    $('connect-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var s = readForm();
      try { window.localStorage.setItem('serd.dashboard', JSON.stringify({ broker: s.broker, prefix: s.prefix, username: s.username, minutes: s.minutes })); } catch (e) { /* private mode */ }
      connect(s);
    });
    window.addEventListener('resize', redrawAll);
    setInterval(redrawAll, REDRAW_MS);
    loadServerConfig().then(function (server) {
      var saved = {};
      try { saved = JSON.parse(window.localStorage.getItem('serd.dashboard') || '{}') || {}; } catch (e) { saved = {}; }
      var s = {
        broker: params.get('broker') || server.broker || saved.broker || defaultBroker(),
        prefix: params.get('prefix') || server.prefix || saved.prefix || 'serd',
        username: params.get('username') || server.username || saved.username || '',
        password: params.get('password') || '',
        minutes: Number(params.get('minutes') || server.minutes || saved.minutes || 5) || 5,
      };
      fillForm(s);
      connect(readForm());
    });
  }

  // For tests and the curious: the page's state (read-only use, please).
  window.serdDashboard = state;
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
}());
