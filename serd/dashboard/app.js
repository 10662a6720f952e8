/* serd live dashboard: a wallboard of every device and channel publishing under {prefix}/,
 * read over MQTT-over-WebSockets ({prefix}/+/emotion, alert, status, state). No build step,
 * no network access besides the broker; payloads are documented in docs/events.md.
 *
 * Every message is hostile until checked: topics and fields are type-checked and
 * size-bounded, object keys are only read as own properties (a probs key named
 * "constructor" or "__proto__" is just a string), per-message work is O(1) in the number
 * of devices (rendering is batched per animation frame, sorting once a second), and the
 * number of devices, channels, labels and timeline segments is capped. Text from the broker
 * is only ever put into the page with textContent (never as HTML).
 */
(function () {
  'use strict';

  // Okabe-Ito (colour-blind safe). Emotions use its colours; status and alerts use none of
  // them (black, greys and shapes), so an emotion can never be mistaken for an alert.
  var COLORS = {
    neutral: '#999999', calm: '#56B4E9', happy: '#F0E442', sad: '#0072B2',
    angry: '#D55E00', fearful: '#CC79A7', disgust: '#009E73', surprised: '#E69F00',
  };
  var EXTRA_COLORS = ['#8C6D31', '#7F7FBF', '#B3B3B3', '#5C8A8A'];
  // How negative each known label is (0..1): lines sort by this times confidence.
  var NEGATIVITY = {
    angry: 1, fearful: 0.9, disgust: 0.85, sad: 0.75, surprised: 0.3,
    neutral: 0.1, calm: 0, happy: 0,
  };
  var UNKNOWN_NEGATIVITY = 0.2;
  var UNSURE = 'unsure';
  var UNSURE_COLOR = '#DDDDDD';
  var ALERT_FILL = 'rgba(0, 0, 0, 0.10)';
  var ALERT_EDGE = '#000000';

  var LIMITS = {
    // Largest payload read per topic; larger ones are dropped (and counted). A real emotion
    // event is about 300 bytes, a state with 16 channels and alerts a few KB.
    payloadBytes: { emotion: 8192, alert: 8192, status: 2048, state: 32768 },
    depth: 6,                // JSON nesting read at most (serd's payloads nest 3 deep)
    devices: 3000,           // beyond this the longest-silent offline device gives way
    channels: 16,            // per device
    labels: 16,              // distinct labels in the legend; more show as "other"
    text: 64,                // device, channel, rule, label, role
    message: 200,            // alert message text shown
    probsKeys: 64,           // probs keys looked at for a best guess
    stateAlerts: 32,         // alerts read from one state payload
    segments: 1500,          // windows / utterances / alerts kept per line
  };
  var DEVICE_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
  var KINDS = { emotion: 1, alert: 1, status: 1, state: 1 };
  var AVAILABILITY = { online: 1, degraded: 1, offline: 1 };
  var REDRAW_MS = 1000;
  var SORT_MS = 1000;
  var SAVE_MS = 5000;
  var SCORE_TAU_MS = 5000;    // the sort key is a moving average over about 5 s of audio
  var LINES_PER_FRAME = 100;
  var STORE_KEY = 'serd.dashboard';
  var HIDDEN_KEY = 'serd.dashboard.hidden';
  var TIMELINE_KEY = 'serd.dashboard.timeline.v1';

  var params = new URLSearchParams(window.location.search);
  var state = {
    client: null,
    settings: null,
    devices: new Map(),   // device -> device record
    lines: new Map(),     // device \0 channel -> line
    labels: [],           // legend labels, first seen first (capped)
    hidden: new Map(),    // device -> epoch ms hidden by the user (this browser)
    staleMs: 60 * 60000,  // offline and silent this long: aged out of the board
    showHidden: false,
    conn: 'idle',
    everConnected: false,
    messages: 0,
    dropped: 0,           // messages refused (size, shape, type, topic, caps)
    droppedDevices: 0,
    perf: { count: 0, total: 0, max: 0, over1: 0, over5: 0, slow: [], samples: [], frameMax: 0, sortMax: 0, tickMax: 0 },
    openedAt: Date.now(),
  };
  var dirty = new Set();
  var dirtySummary = true;
  var frameQueued = false;
  var timelineDirty = false;
  var observer = null;

  // ---------------------------------------------------------------- helpers

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function own(obj, key) { return Object.prototype.hasOwnProperty.call(obj, key); }

  function str(v, max) {
    // A bounded, printable string, or null.
    if (typeof v !== 'string' || v.length === 0 || v.length > (max || LIMITS.text)) return null;
    return v;
  }

  function unit(v) {
    return (typeof v === 'number' && isFinite(v)) ? Math.min(1, Math.max(0, v)) : null;
  }

  function parseTime(v) {
    if (typeof v !== 'string' || v.length > 40) return null;
    var t = Date.parse(v);
    return isNaN(t) ? null : t;
  }

  function colorOf(label) {
    if (!label) return UNSURE_COLOR;
    if (own(COLORS, label)) return COLORS[label];
    var i = state.labels.indexOf(label);
    return i < 0 ? '#666666' : EXTRA_COLORS[i % EXTRA_COLORS.length];
  }

  function negativity(label) {
    if (!label) return 0.05;
    return own(NEGATIVITY, label) ? NEGATIVITY[label] : UNKNOWN_NEGATIVITY;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  function ago(ms) {
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min';
    return Math.floor(s / 3600) + ' h';
  }

  function addLabel(label) {
    // The legend grows only with a new label and never past LIMITS.labels.
    if (!label || state.labels.indexOf(label) >= 0) return;
    if (state.labels.length >= LIMITS.labels) return;
    state.labels.push(label);
    renderLegend();
  }

  function shownLabel(label) {
    return label && state.labels.indexOf(label) < 0 && !own(COLORS, label) ? 'other' : label;
  }

  function mark(line) {
    dirty.add(line);
    dirtySummary = true;
    queueFrame();
  }

  function queueFrame() {
    if (frameQueued) return;
    frameQueued = true;
    window.requestAnimationFrame(frame);
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
      .then(function (j) { return j && typeof j === 'object' ? j : {}; })
      .catch(function () { return {}; });
  }

  function loadJson(storage, key) {
    try {
      var v = JSON.parse(storage.getItem(key) || 'null');
      return v && typeof v === 'object' ? v : null;
    } catch (e) { return null; }
  }

  function saveJson(storage, key, value) {
    try { storage.setItem(key, JSON.stringify(value)); return true; } catch (e) { return false; }
  }

  // ---------------------------------------------------------------- connection

  function setConn(kind, text, detail) {
    var c = $('conn');
    state.conn = kind;
    c.dataset.state = kind;
    c.textContent = text;
    c.title = detail || text;
    dirtySummary = true;
    queueFrame();
  }

  function connect(s) {
    if (state.client) {
      state.client.end(true);
      state.client = null;
    }
    state.settings = s;
    restoreTimeline();
    if (!s.broker) {
      setConn('idle', 'not connected');
      $('settings').open = true;
      return;
    }
    if (!window.mqtt || !window.mqtt.connect) {
      setConn('error', 'MQTT client failed to load', 'vendor/mqtt.min.js did not load');
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

    setConn('connecting', 'connecting', 'connecting to ' + s.broker);
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
      setConn('error', 'cannot connect', 'cannot connect: ' + (e && e.message ? e.message : e));
      $('settings').open = true;
      return;
    }
    state.client = client;
    var topics = ['emotion', 'alert', 'status', 'state'].map(function (t) { return s.prefix + '/+/' + t; });
    client.on('connect', function () {
      if (client !== state.client) return;
      state.everConnected = true;
      setConn('connected', 'connected', 'connected to ' + s.broker);
      $('settings').open = false;
      client.subscribe(topics, { qos: 1 }, function (err) {
        if (err) setConn('error', 'subscribe failed', 'subscribe failed: ' + err.message);
      });
    });
    client.on('reconnect', function () {
      if (client === state.client && state.conn !== 'error') {
        setConn('reconnecting', 'reconnecting', 'reconnecting to ' + s.broker + '\u2026');
      }
    });
    client.on('close', function () {
      if (client !== state.client) return;
      if (state.conn === 'connected') setConn('reconnecting', 'connection lost', 'connection to ' + s.broker + ' lost; reconnecting\u2026');
      else if (state.conn !== 'error') setConn('unreachable', 'broker unreachable', 'cannot reach the broker at ' + s.broker + '; retrying every 2 s');
    });
    client.on('offline', function () {
      if (client === state.client && state.conn !== 'error') setConn('unreachable', 'broker unreachable', 'cannot reach the broker at ' + s.broker + '; retrying every 2 s');
    });
    client.on('error', function (err) {
      if (client === state.client) setConn('error', 'broker refused', (err && err.message ? err.message : 'error') + '; retrying');
    });
    client.on('message', function (topic, payload, packet) {
      if (client === state.client) onMessage(topic, payload, !!(packet && packet.retain));
    });
  }

  // ---------------------------------------------------------------- messages

  var decoder = new TextDecoder('utf-8', { fatal: false });

  function onMessage(topic, payload, retained) {
    var t0 = performance.now();
    try {
      handle(topic, payload, retained);
    } catch (e) {
      state.dropped++;   // a shape we did not foresee: never let it stop the page
    }
    var dt = performance.now() - t0;
    var p = state.perf;
    p.count++;
    p.total += dt;
    if (dt > p.max) p.max = dt;
    if (p.samples.length < 50000) p.samples.push(dt);
    if (dt > 1) p.over1++;
    if (dt > 5) p.over5++;
    if (dt > 1 && p.slow.length < 20) p.slow.push([Math.round(dt * 10) / 10, String(topic).slice(0, 60), payload ? payload.length : 0]);
  }

  function handle(topic, payload, retained) {
    state.messages++;
    var prefix = state.settings.prefix + '/';
    if (typeof topic !== 'string' || topic.indexOf(prefix) !== 0) { state.dropped++; return; }
    var rest = topic.slice(prefix.length).split('/');
    if (rest.length !== 2 || !DEVICE_RE.test(rest[0]) || !own(KINDS, rest[1])) { state.dropped++; return; }
    var device = rest[0];
    var kind = rest[1];
    if (!payload || payload.length > LIMITS.payloadBytes[kind]) { state.dropped++; return; }
    if (payload.length === 0) {
      // An empty retained message deletes the retained topic (serd forget): forget it here.
      if (kind === 'status') forgetDevice(device);
      return;
    }
    if (tooDeep(payload)) { state.dropped++; return; }
    var p;
    try {
      p = JSON.parse(decoder.decode(payload));
    } catch (e) {
      state.dropped++;
      return;
    }
    if (!p || typeof p !== 'object' || Array.isArray(p)) { state.dropped++; return; }
    var dev = getDevice(device);
    if (!dev) return;
    dev.heard = Date.now();
    // Retained messages are replayed to every new subscriber: only live ones are news.
    if (!retained) dev.liveAt = dev.heard;
    if (kind === 'status') onStatus(dev, p);
    else if (kind === 'emotion') onEmotion(dev, p);
    else if (kind === 'alert') onAlert(dev, p);
    else onState(dev, p);
  }

  function tooDeep(bytes) {
    // JSON nested deeper than serd's payloads ever are; parsing [[[[... is slow in itself.
    var depth = 0, inString = false;
    for (var i = 0; i < bytes.length; i++) {
      var b = bytes[i];
      if (inString) {
        if (b === 0x5C) i++;            // backslash: skip the escaped byte
        else if (b === 0x22) inString = false;
      } else if (b === 0x22) {
        inString = true;
      } else if (b === 0x5B || b === 0x7B) {
        if (++depth > LIMITS.depth) return true;
      } else if (b === 0x5D || b === 0x7D) {
        depth--;
      }
    }
    return false;
  }

  function getDevice(device) {
    var dev = state.devices.get(device);
    if (dev) return dev;
    if (state.devices.size >= LIMITS.devices && !evictOne()) {
      state.droppedDevices++;
      state.dropped++;
      return null;
    }
    dev = { name: device, availability: 'unknown', reason: '', version: '', seq: {}, fresh: {},
      skews: [], offset: 0, heard: Date.now(), lines: new Map(), alertSeen: new Map() };
    state.devices.set(device, dev);
    dirtySummary = true;
    return dev;
  }

  function evictOne() {
    // The longest-silent device that is not online gives way to a new one.
    var victim = null;
    state.devices.forEach(function (d) {
      if (d.availability === 'online' || d.availability === 'degraded') return;
      if (victim === null || d.heard < victim.heard) victim = d;
    });
    if (victim === null) return false;
    forgetDevice(victim.name);
    return true;
  }

  function forgetDevice(device) {
    var dev = state.devices.get(device);
    if (!dev) return;
    dev.lines.forEach(function (line) { removeLine(line); });
    state.devices.delete(device);
    dirtySummary = true;
    timelineDirty = true;
    queueFrame();
  }

  function isDuplicate(dev, kind, seq) {
    // A seq already seen is an event re-sent after a reconnect. seq starts again at 1 only
    // when the device's state was wiped; it then comes back online first (docs/events.md).
    if (typeof seq !== 'number' || !isFinite(seq)) return false;
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
    var min = Infinity;
    for (var i = 0; i < dev.skews.length; i++) if (dev.skews[i] < min) min = dev.skews[i];
    dev.offset = Math.abs(min) > 2000 ? min : 0;
  }

  function onStatus(dev, p) {
    var was = dev.availability;
    dev.availability = typeof p.state === 'string' && own(AVAILABILITY, p.state) ? p.state : 'unknown';
    dev.reason = str(p.reason, 40) || '';
    dev.version = str(p.version, 40) || '';
    var ts = parseTime(p.ts);
    if (ts !== null) dev.statusTs = ts + dev.offset;
    if (dev.availability === 'online' && was !== 'online' && was !== 'degraded') {
      dev.fresh = { emotion: true, alert: true };
    }
    if (dev.lines.size === 0) getLine(dev, null);
    dev.lines.forEach(mark);
  }

  function setRole(line, role) {
    role = str(role, LIMITS.text);
    if (role && role !== line.role) { line.role = role; mark(line); }
  }

  function onEmotion(dev, p) {
    var channel = str(p.channel);
    if (!channel || isDuplicate(dev, 'emotion', p.seq)) return;
    if (p.type !== 'window' && p.type !== 'utterance') { state.dropped++; return; }
    var start = parseTime(p.start), end = parseTime(p.end);
    if (start === null || end === null || end < start) { state.dropped++; return; }
    noteSkew(dev, p);
    var line = getLine(dev, channel);
    if (!line) return;
    setRole(line, p.role);
    var label = str(p.label, LIMITS.text);
    addLabel(label);
    var conf = unit(p.confidence);
    if (conf === null) conf = 0;
    var endDev = end;
    start += dev.offset;
    end += dev.offset;
    if (p.type === 'window') {
      // Windows overlap (e.g. 2 s every 0.5 s): draw only what the previous one did not cover.
      var from = (start < line.lastWindowEnd && line.lastWindowEnd - start < 30000) ? line.lastWindowEnd : start;
      if (end > from) push(line.windows, { start: from, end: end, label: label, conf: conf });
      line.lastWindowEnd = Math.max(line.lastWindowEnd, end);
    } else {
      push(line.utterances, { start: start, end: end, label: label, conf: conf });
      var key = shownLabel(label) || UNSURE;
      line.counts.set(key, (line.counts.get(key) || 0) + 1);
    }
    var best = null;
    if (!label && p.probs && typeof p.probs === 'object' && !Array.isArray(p.probs)) {
      var bestP = -1, n = 0;
      for (var k in p.probs) {
        if (!own(p.probs, k)) continue;
        if (++n > LIMITS.probsKeys) break;
        var v = p.probs[k];
        if (typeof v === 'number' && v > bestP && k.length <= LIMITS.text) { bestP = v; best = k; }
      }
    }
    setCurrent(line, { label: label, conf: conf, type: p.type, best: best, at: end, endDev: endDev });
    timelineDirty = true;
    mark(line);
  }

  function setCurrent(line, cur) {
    line.current = cur;
    // Sort key: how negative times how confident, averaged over the last few seconds of the
    // device's audio (its own clock, so a backlog arriving at once still averages right).
    var x = negativity(cur.label) * cur.conf;
    var dt = line.scoreEnd ? Math.max(0, cur.endDev - line.scoreEnd) : Infinity;
    var w = Math.exp(-dt / SCORE_TAU_MS);
    line.score = line.score * w + x * (1 - w);
    line.scoreEnd = Math.max(line.scoreEnd || 0, cur.endDev);
    line.scoreAt = Date.now();
  }

  function push(list, item) {
    list.push(item);
    if (list.length > LIMITS.segments) list.splice(0, list.length - LIMITS.segments);
  }

  function findOpen(line, rule) {
    for (var i = line.alerts.length - 1; i >= 0; i--) {
      if (line.alerts[i].rule === rule && line.alerts[i].active) return line.alerts[i];
    }
    return null;
  }

  function alertText(rule, label, message) {
    return rule + ' (' + label + ')' + (message ? ': ' + message.slice(0, LIMITS.message) : '');
  }

  function onAlert(dev, p) {
    var channel = str(p.channel), rule = str(p.rule), label = str(p.label) || '?';
    if (!channel || !rule || isDuplicate(dev, 'alert', p.seq)) return;
    var start = parseTime(p.start), end = parseTime(p.end);
    if (start === null || end === null) { state.dropped++; return; }
    noteSkew(dev, p);
    var line = getLine(dev, channel);
    if (!line) return;
    setRole(line, p.role);
    var tsDev = parseTime(p.ts) || end;
    var cleared = p.state === 'cleared';
    dev.alertSeen.set(channel + '\u0000' + rule, { cleared: cleared, tsDev: tsDev });
    start += dev.offset;
    end += dev.offset;
    var message = typeof p.message === 'string' ? p.message : '';
    var open = findOpen(line, rule);
    if (!cleared) {
      if (!open) {
        push(line.alerts, { rule: rule, label: label, start: start, end: null, active: true,
          text: alertText(rule, label, message) });
      }
    } else if (open) {
      open.active = false;
      open.end = end;
      open.text = alertText(rule, label, message);
      open.clearedAt = Date.now();
    } else {
      // Cleared before this page saw it start: still show the span.
      push(line.alerts, { rule: rule, label: label, start: start, end: end, active: false,
        text: alertText(rule, label, message), clearedAt: Date.now() });
    }
    line.lastAlert = line.alerts[line.alerts.length - 1];
    timelineDirty = true;
    mark(line);
  }

  function onState(dev, p) {
    // The retained present (serd.state): last verdict per channel and alerts in progress.
    // Events are fresher, so the state only fills in what this page has not seen itself.
    if (!Array.isArray(p.channels) || !Array.isArray(p.alerts)) { state.dropped++; return; }
    var tsDev = parseTime(p.ts);
    if (tsDev === null) { state.dropped++; return; }
    var n = Math.min(p.channels.length, LIMITS.channels);
    for (var i = 0; i < n; i++) {
      var c = p.channels[i];
      if (!c || typeof c !== 'object') continue;
      var channel = str(c.channel);
      if (!channel) continue;
      var line = getLine(dev, channel);
      if (!line) continue;
      setRole(line, c.role);
      var end = parseTime(c.end);
      if (end === null) continue;
      if (line.current && line.current.endDev >= end) continue;
      var label = str(c.label, LIMITS.text);
      addLabel(label);
      setCurrent(line, { label: label, conf: unit(c.confidence) || 0,
        type: c.kind === 'utterance' ? 'utterance' : 'window', best: null,
        at: end + dev.offset, endDev: end });
      mark(line);
    }
    var listed = new Set();
    var m = Math.min(p.alerts.length, LIMITS.stateAlerts);
    for (var j = 0; j < m; j++) {
      var a = p.alerts[j];
      if (!a || typeof a !== 'object') continue;
      var ch = str(a.channel), rule = str(a.rule), since = parseTime(a.since);
      if (!ch || !rule || since === null) continue;
      listed.add(ch + '\u0000' + rule);
      var seen = dev.alertSeen.get(ch + '\u0000' + rule);
      if (seen && seen.cleared && seen.tsDev >= tsDev) continue;  // the clear is newer
      var al = getLine(dev, ch);
      if (!al || findOpen(al, rule)) continue;
      var lab = str(a.label) || '?';
      push(al.alerts, { rule: rule, label: lab, start: since + dev.offset, end: null, active: true,
        text: alertText(rule, lab, typeof a.message === 'string' ? a.message : '') });
      al.lastAlert = al.alerts[al.alerts.length - 1];
      mark(al);
    }
    // An alert this page holds open that the (newer) state no longer lists has cleared.
    dev.lines.forEach(function (line) {
      line.alerts.forEach(function (a) {
        if (!a.active || listed.has(line.channel + '\u0000' + a.rule)) return;
        var seen = dev.alertSeen.get(line.channel + '\u0000' + a.rule);
        if (seen && seen.tsDev >= tsDev) return;  // its start is newer than this state
        a.active = false;
        a.end = tsDev + dev.offset;
        a.clearedAt = Date.now();
        mark(line);
      });
    });
    timelineDirty = true;
  }

  // ---------------------------------------------------------------- lines

  function lineKey(device, channel) { return device + '\u0000' + (channel === null ? '' : channel); }

  function getLine(dev, channel) {
    if (channel !== null) {
      // The device's placeholder (status seen, no events yet) gives way to real channels.
      var placeholder = dev.lines.get('');
      if (placeholder && placeholder.channel === null) removeLine(placeholder);
    }
    var sub = channel === null ? '' : channel;
    var line = dev.lines.get(sub);
    if (line) return line;
    if (dev.lines.size >= LIMITS.channels) { state.dropped++; return null; }
    line = {
      device: dev.name, channel: channel, role: '', current: null, windows: [], utterances: [],
      alerts: [], lastAlert: null, counts: new Map(), lastWindowEnd: 0, el: null,
      score: 0, scoreAt: 0, scoreEnd: 0, order: -1, visible: !observer, width: 0,
    };
    // Its elements are built in the next frame (with the other new lines), not here: the
    // handler's work stays small however many devices announce themselves at once.
    dev.lines.set(sub, line);
    state.lines.set(lineKey(dev.name, channel), line);
    mark(line);
    return line;
  }

  function removeLine(line) {
    if (line.el) {
      if (observer) observer.unobserve(line.el.root);
      line.el.root.remove();
    }
    state.lines.delete(lineKey(line.device, line.channel));
    var dev = state.devices.get(line.device);
    if (dev) dev.lines.delete(line.channel === null ? '' : line.channel);
    dirty.delete(line);
    dirtySummary = true;
  }

  function buildLine(line) {
    var root = el('section', 'line');
    root.dataset.device = line.device;
    root.dataset.channel = line.channel === null ? '' : line.channel;
    root.id = 'line-' + line.device + '-' + (line.channel === null ? '' : line.channel).replace(/[^A-Za-z0-9_-]/g, '_');
    var who = el('div', 'who');
    who.appendChild(el('span', 'device', line.device));
    var chan = el('span', 'channel', line.channel === null ? '\u2014' : line.channel);
    who.appendChild(chan);
    var role = el('span', 'role', '');
    role.hidden = true;
    who.appendChild(role);
    var avail = el('span', 'availability', 'unknown');
    var emotion = el('div', 'emotion');
    var sw = el('span', 'swatch');
    var label = el('span', 'emotion-label', line.channel === null ? 'no events yet' : 'waiting');
    label.dataset.label = '';
    var conf = el('span', 'emotion-conf', '');
    var bar = el('span', 'confbar');
    var fill = el('i');
    bar.appendChild(fill);
    emotion.appendChild(sw);
    emotion.appendChild(label);
    emotion.appendChild(conf);
    emotion.appendChild(bar);
    var canvas = el('canvas', 'timeline');
    canvas.setAttribute('aria-label', 'emotion timeline of ' + line.device + ' ' + (line.channel || ''));
    var counts = el('div', 'counts');
    var updated = el('span', 'updated', '');
    var hide = el('button', 'hide', '\u00d7');
    hide.type = 'button';
    hide.title = 'Hide ' + line.device + ' in this browser until it is heard again. ' +
      'To forget it for good: serd forget ' + line.device;
    hide.setAttribute('aria-label', 'hide ' + line.device);
    hide.addEventListener('click', function () { hideDevice(line.device); });
    var banner = el('div', 'alert-banner', '');
    banner.hidden = true;
    banner.setAttribute('role', 'alert');
    root.appendChild(who);
    root.appendChild(avail);
    root.appendChild(emotion);
    root.appendChild(canvas);
    root.appendChild(counts);
    root.appendChild(updated);
    root.appendChild(hide);
    root.appendChild(banner);
    return { root: root, avail: avail, swatch: sw, label: label, conf: conf, fill: fill,
      updated: updated, banner: banner, canvas: canvas, counts: counts, role: role };
  }

  function activeAlert(line) {
    var a = line.lastAlert;
    if (!a) return null;
    var dev = state.devices.get(line.device);
    // A device that went offline cannot clear its alert: shown, but not counted as active.
    return a.active && dev && dev.availability !== 'offline' ? a : null;
  }

  var REASONS = { input_missing: 'no mic', spool_backlog: 'backlog', shutdown: 'stopped',
    connection_lost: 'lost', connected: '' };
  var REASONS_LONG = { input_missing: 'the microphone is not open',
    spool_backlog: 'events are backing up on the device (broker slow or refusing them)',
    shutdown: 'stopped cleanly', connection_lost: 'the connection was lost (broker Last Will)' };

  function availabilityText(dev, long) {
    var table = long ? REASONS_LONG : REASONS;
    var r = own(table, dev.reason) ? table[dev.reason] : dev.reason.replace(/_/g, ' ');
    if (dev.availability === 'offline' || dev.availability === 'degraded') {
      return dev.availability + (r ? (long ? ': ' : ' \u00b7 ') + r : '');
    }
    return dev.availability;
  }

  function renderLine(line) {
    var dev = state.devices.get(line.device);
    if (!dev) return;
    if (!line.el) {
      line.el = buildLine(line);
      // At the end until the next sort (within a second) gives it its place.
      line.el.root.style.order = String(1e6);
      $('lines').appendChild(line.el.root);
      if (observer) observer.observe(line.el.root);
    }
    var e = line.el;
    e.root.dataset.availability = dev.availability;
    e.root.hidden = isHidden(dev);
    e.avail.dataset.state = dev.availability;
    e.avail.textContent = availabilityText(dev, false);
    e.avail.title = availabilityText(dev, true) + (dev.version ? ' (serd ' + dev.version + ')' : '');
    if (line.role && line.role !== line.channel && line.role !== 'unspecified') {
      e.role.textContent = line.role;
      e.role.hidden = false;
    }
    if (line.current) {
      var lab = line.current.label;
      e.label.textContent = lab || UNSURE;
      e.label.dataset.label = lab || '';
      e.swatch.style.background = colorOf(lab);
      var pct = Math.round(line.current.conf * 100);
      e.conf.textContent = (lab || !line.current.best ? '' : line.current.best + '? ') + pct + '%';
      e.conf.title = (lab ? '' : 'below the threshold' + (line.current.best ? '; best guess ' + line.current.best : '') + '; ') +
        'confidence ' + pct + '% (' + line.current.type + ')';
      e.fill.style.width = pct + '%';
      e.fill.style.background = colorOf(lab);
      // Confidence is also the label's strength: a 36 % verdict is drawn faintly.
      e.label.style.opacity = String(0.45 + 0.55 * line.current.conf);
    }
    var a = line.lastAlert;
    var act = activeAlert(line);
    if (a && (a.active || Date.now() - (a.clearedAt || 0) < 120000)) {
      e.banner.hidden = false;
      e.banner.dataset.state = act ? 'active' : (a.active ? 'stale' : 'cleared');
      e.banner.textContent = act
        ? 'ALERT since ' + clock(a.start) + ' \u2014 ' + a.text
        : a.active ? 'alert since ' + clock(a.start) + ', device offline, not cleared \u2014 ' + a.text
          : 'last alert ' + clock(a.start) + '\u2013' + clock(a.end) + ' \u2014 ' + a.text;
      e.banner.title = e.banner.textContent;
    } else {
      e.banner.hidden = true;
    }
    e.root.dataset.alert = act ? 'active' : (a ? 'cleared' : 'none');
    renderCounts(line);
    renderTime(line);
  }

  function renderTime(line) {
    if (!line.el) return;
    line.el.updated.textContent = line.current ? ago(line.current.at) : '';
    line.el.updated.title = line.current ? 'last verdict ' + clock(line.current.at) : '';
  }

  function renderCounts(line) {
    var box = line.el.counts;
    box.textContent = '';
    var keys = state.labels.filter(function (k) { return line.counts.get(k); });
    if (line.counts.get('other')) keys.push('other');
    if (line.counts.get(UNSURE)) keys.push(UNSURE);
    keys.forEach(function (k) {
      var item = el('span', 'count');
      item.dataset.label = k;
      item.title = k;
      var sw = el('span', 'swatch');
      sw.style.background = k === UNSURE ? UNSURE_COLOR : colorOf(k);
      item.appendChild(sw);
      item.appendChild(el('b', null, line.counts.get(k)));
      box.appendChild(item);
    });
  }

  function renderLegend() {
    var box = $('legend');
    box.textContent = '';
    var keys = Object.keys(COLORS).filter(function (k) { return state.labels.indexOf(k) >= 0; });
    state.labels.forEach(function (k) { if (!own(COLORS, k)) keys.push(k); });
    if (!keys.length) keys = Object.keys(COLORS);
    keys.concat([UNSURE]).forEach(function (k) {
      var key = el('span', 'key');
      var sw = el('span', 'swatch');
      sw.style.background = k === UNSURE ? UNSURE_COLOR : colorOf(k);
      key.appendChild(sw);
      key.appendChild(document.createTextNode(k === UNSURE ? 'unsure' : k));
      box.appendChild(key);
    });
    var al = el('span', 'key alert-key', '\u26a0 alert');
    box.appendChild(al);
  }

  // ---------------------------------------------------------------- summary and alerts

  function renderSummary() {
    var online = 0, degraded = 0, offline = 0, hidden = 0;
    state.devices.forEach(function (d) {
      if (isHidden(d)) { hidden++; return; }
      if (d.availability === 'online') online++;
      else if (d.availability === 'degraded') degraded++;
      else if (d.availability === 'offline') offline++;
    });
    var inAlert = [];
    state.lines.forEach(function (l) { if (activeAlert(l)) inAlert.push(l); });
    inAlert.sort(function (a, b) { return a.lastAlert.start - b.lastAlert.start; });
    var shown = state.devices.size - hidden;
    // Problems first: on a narrow screen the end of this line is cut, and a deaf device
    // must not be what disappears.
    var parts = [];
    if (degraded) parts.push(degraded + ' degraded');
    if (offline) parts.push(offline + ' offline');
    parts.push(online + ' online', shown + ' device' + (shown === 1 ? '' : 's'));
    $('summary').textContent = parts.join(' \u00b7 ');
    var h = $('hidden-toggle');
    h.hidden = hidden === 0 && !state.showHidden;
    h.textContent = state.showHidden ? 'hide stale/hidden' : hidden + ' hidden';

    var box = $('alerts');
    box.textContent = '';
    box.dataset.count = String(inAlert.length);
    if (!inAlert.length) {
      box.appendChild(el('span', 'no-alerts', 'no active alerts'));
    } else {
      box.appendChild(el('span', 'alert-count', '\u26a0 ' + inAlert.length + ' active alert' + (inAlert.length === 1 ? '' : 's') + ':'));
      inAlert.slice(0, 6).forEach(function (l) {
        var b = el('button', 'alert-link', l.device + ' / ' + (l.channel || '\u2014'));
        b.type = 'button';
        b.title = 'Show ' + l.device + ' ' + (l.channel || '') + ': ' + l.lastAlert.text;
        b.addEventListener('click', function () { jumpTo(l); });
        box.appendChild(b);
      });
      if (inAlert.length > 6) box.appendChild(el('span', 'alert-more', '+' + (inAlert.length - 6) + ' more (at the top)'));
    }
    renderEmpty();
  }

  function jumpTo(line) {
    if (!line.el) return;
    line.el.root.scrollIntoView({ block: 'center', behavior: 'smooth' });
    line.el.root.classList.remove('flash');
    void line.el.root.offsetWidth;  // restart the animation
    line.el.root.classList.add('flash');
  }

  function renderEmpty() {
    var empty = $('empty');
    var visible = state.lines.size > 0;
    var broker = state.settings && state.settings.broker ? state.settings.broker : '';
    var notice = $('notice');
    if (state.conn === 'unreachable' || state.conn === 'error' || state.conn === 'reconnecting') {
      notice.hidden = false;
      notice.dataset.state = state.conn;
      notice.textContent = (state.conn === 'error' ? 'The broker at ' + broker + ' refused the connection: ' + $('conn').title
        : state.conn === 'reconnecting' ? 'Connection to the broker at ' + broker + ' lost; reconnecting. Lines show what was known before.'
          : 'Cannot reach the broker at ' + broker + ' (retrying every 2 s). Is Mosquitto running with a WebSockets listener on that port? See Broker connection below.');
    } else {
      notice.hidden = true;
    }
    if (visible) { empty.hidden = true; return; }
    empty.hidden = false;
    if (state.conn === 'connected') {
      empty.textContent = 'Connected to ' + broker + '; no device has published under \u201c' +
        state.settings.prefix + '/\u201d yet. Start serd with mqtt.host set, or replay recordings: ' +
        'serd --once --publish tests/data/*.flac';
    } else if (state.conn === 'connecting' || state.conn === 'idle') {
      empty.textContent = state.conn === 'idle' ? 'Not connected: enter the broker below.' : 'Connecting to ' + broker + '\u2026';
    } else {
      empty.textContent = 'No devices: the broker cannot be reached, so nothing is known yet.';
    }
  }

  // ---------------------------------------------------------------- hide, stale

  function isHidden(dev) {
    if (state.showHidden) return false;
    var t = state.hidden.get(dev.name);
    if (t !== undefined && (dev.liveAt || 0) <= t) return true;
    var news = Math.max(dev.liveAt || 0, dev.statusTs || 0) || dev.heard;
    return dev.availability !== 'online' && dev.availability !== 'degraded' &&
      Date.now() - news > state.staleMs && !hasActive(dev);
  }

  function hasActive(dev) {
    var any = false;
    dev.lines.forEach(function (l) { if (l.lastAlert && l.lastAlert.active) any = true; });
    return any;
  }

  function hideDevice(device) {
    state.hidden.set(device, Date.now());
    if (state.hidden.size > LIMITS.devices) {
      state.hidden.delete(state.hidden.keys().next().value);
    }
    saveHidden();
    var dev = state.devices.get(device);
    if (dev) dev.lines.forEach(mark);
  }

  function saveHidden() {
    var o = {};
    state.hidden.forEach(function (t, d) { o[d] = t; });
    saveJson(window.localStorage, HIDDEN_KEY, o);
  }

  function loadHidden() {
    var o = loadJson(window.localStorage, HIDDEN_KEY) || {};
    Object.keys(o).slice(0, LIMITS.devices).forEach(function (d) {
      if (DEVICE_RE.test(d) && typeof o[d] === 'number') state.hidden.set(d, o[d]);
    });
  }

  // ---------------------------------------------------------------- timeline persistence

  function storeKey() { return TIMELINE_KEY + '/' + (state.settings ? state.settings.prefix : ''); }

  function saveTimeline() {
    // sessionStorage keeps this tab's timeline across a refresh, bounded to the timeline span.
    if (!timelineDirty || !state.settings) return;
    timelineDirty = false;
    var t0 = Date.now() - state.settings.minutes * 60000;
    var labels = state.labels.slice();
    function seg(s) { return [s.start, s.end, s.label === null ? -1 : labels.indexOf(s.label), Math.round(s.conf * 100)]; }
    var out = [];
    state.lines.forEach(function (l) {
      if (out.length >= 400 || l.channel === null) return;
      out.push({
        d: l.device, c: l.channel, r: l.role,
        w: l.windows.filter(function (s) { return s.end >= t0; }).slice(-800).map(seg),
        u: l.utterances.filter(function (s) { return s.end >= t0; }).slice(-200).map(seg),
        a: l.alerts.filter(function (a) { return a.active || (a.end || 0) >= t0; }).slice(-20).map(function (a) {
          return [a.rule, a.label, a.start, a.end, a.active ? 1 : 0, a.text];
        }),
        n: Array.from(l.counts.entries()).slice(0, LIMITS.labels + 2),
        cur: l.current ? [l.current.label, l.current.conf, l.current.type, l.current.at, l.current.endDev] : null,
      });
    });
    var doc = { v: 1, savedAt: Date.now(), openedAt: state.openedAt, labels: labels, lines: out };
    if (!saveJson(window.sessionStorage, storeKey(), doc)) {
      // Over the quota: keep utterances and alerts only.
      out.forEach(function (o) { o.w = []; });
      saveJson(window.sessionStorage, storeKey(), doc);
    }
  }

  function restoreTimeline() {
    if (state.restoredFor === storeKey()) return;
    state.restoredFor = storeKey();
    var doc = loadJson(window.sessionStorage, storeKey());
    if (!doc || doc.v !== 1 || !Array.isArray(doc.lines) || !Array.isArray(doc.labels)) return;
    doc.labels.slice(0, LIMITS.labels).forEach(function (l) { addLabel(str(l)); });
    if (typeof doc.openedAt === 'number') state.openedAt = doc.openedAt;
    function num(v) { return typeof v === 'number' && isFinite(v) ? v : null; }
    function seg(a) {
      if (!Array.isArray(a) || num(a[0]) === null || num(a[1]) === null) return null;
      var li = num(a[2]);
      return { start: a[0], end: a[1], label: li !== null && li >= 0 ? str(doc.labels[li]) : null,
        conf: (num(a[3]) || 0) / 100 };
    }
    doc.lines.slice(0, 400).forEach(function (o) {
      if (!o || typeof o !== 'object' || typeof o.d !== 'string' || !DEVICE_RE.test(o.d)) return;
      var channel = str(o.c);
      if (!channel) return;
      var dev = getDevice(o.d);
      if (!dev) return;
      dev.heard = typeof doc.savedAt === 'number' ? doc.savedAt : Date.now();
      var line = getLine(dev, channel);
      if (!line) return;
      line.role = str(o.r) || '';
      (Array.isArray(o.w) ? o.w : []).slice(-800).forEach(function (a) { var s = seg(a); if (s) { line.windows.push(s); line.lastWindowEnd = Math.max(line.lastWindowEnd, s.end); } });
      (Array.isArray(o.u) ? o.u : []).slice(-200).forEach(function (a) { var s = seg(a); if (s) line.utterances.push(s); });
      (Array.isArray(o.a) ? o.a : []).slice(-20).forEach(function (a) {
        if (!Array.isArray(a) || !str(a[0]) || num(a[2]) === null) return;
        line.alerts.push({ rule: a[0], label: str(a[1]) || '?', start: a[2], end: num(a[3]),
          active: a[4] === 1, text: typeof a[5] === 'string' ? a[5].slice(0, 300) : a[0],
          clearedAt: a[4] === 1 ? undefined : Date.now() });
      });
      line.lastAlert = line.alerts.length ? line.alerts[line.alerts.length - 1] : null;
      (Array.isArray(o.n) ? o.n : []).slice(0, LIMITS.labels + 2).forEach(function (kv) {
        if (Array.isArray(kv) && str(kv[0]) && num(kv[1]) !== null) line.counts.set(kv[0], kv[1]);
      });
      if (Array.isArray(o.cur) && num(o.cur[1]) !== null && num(o.cur[3]) !== null) {
        setCurrent(line, { label: str(o.cur[0]), conf: unit(o.cur[1]) || 0,
          type: o.cur[2] === 'utterance' ? 'utterance' : 'window', best: null, at: o.cur[3],
          endDev: num(o.cur[4]) || 0 });
      }
      mark(line);
    });
    state.restored = doc.lines.length;
  }

  // ---------------------------------------------------------------- sorting

  function rankOf(line) {
    var dev = state.devices.get(line.device);
    var act = activeAlert(line);
    if (act) return [0, act.start, line.device, line.channel || ''];
    var avail = dev ? dev.availability : 'unknown';
    var tier = avail === 'online' || avail === 'degraded' ? 1 : 2;
    // The score fades when the line goes quiet: a verdict from minutes ago is no news.
    var age = line.scoreAt ? Date.now() - line.scoreAt : Infinity;
    var score = age === Infinity ? 0 : line.score * Math.exp(-Math.max(0, age - 15000) / 60000);
    return [tier, -score, line.device, line.channel || ''];
  }

  function cmp(a, b) {
    for (var i = 0; i < a.length; i++) {
      if (a[i] < b[i]) return -1;
      if (a[i] > b[i]) return 1;
    }
    return 0;
  }

  function sortLines() {
    var t0 = performance.now();
    var all = [];
    state.lines.forEach(function (l) { all.push([rankOf(l), l]); });
    all.sort(function (a, b) { return cmp(a[0], b[0]); });
    for (var i = 0; i < all.length; i++) {
      var l = all[i][1];
      if (l.order !== i && l.el) {
        l.order = i;
        l.el.root.style.order = String(i);
      }
    }
    var dt = performance.now() - t0;
    if (dt > state.perf.sortMax) state.perf.sortMax = dt;
  }

  // ---------------------------------------------------------------- drawing

  function frame() {
    frameQueued = false;
    var t0 = performance.now();
    var n = 0;
    var it = dirty.values();
    var next;
    var draw = [];
    // DOM writes first, then one layout to read sizes, then the canvases: reading a size
    // between writes would lay out the whole board once per line.
    while (n < LINES_PER_FRAME && !(next = it.next()).done) {
      var line = next.value;
      dirty.delete(line);
      if (state.lines.get(lineKey(line.device, line.channel)) !== line) continue;
      renderLine(line);
      if (line.visible) draw.push(line);
      n++;
    }
    drawAll(draw);
    if (dirtySummary) {
      dirtySummary = false;
      renderSummary();
    }
    if (dirty.size) queueFrame();
    var dt = performance.now() - t0;
    if (dt > state.perf.frameMax) state.perf.frameMax = dt;
  }

  function drawAll(lines) {
    lines = lines.filter(function (line) { return line.el; });
    lines.forEach(function (line) {
      line.width = line.el.canvas.clientWidth;
      line.height = line.el.canvas.clientHeight;
    });
    lines.forEach(drawTimeline);
  }

  function drawTimeline(line) {
    var canvas = line.el.canvas;
    var dpr = window.devicePixelRatio || 1;
    var w = line.width, h = line.height;
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
    var uttH = 4, gap = 1;
    var barTop = 1, barBottom = h - uttH - gap;
    function x(t) { return (t - t0) / span * w; }

    ctx.fillStyle = '#f4f4f4';
    ctx.fillRect(0, 0, w, h);

    // grid: one tick per minute (or 10 s when zoomed in)
    ctx.fillStyle = '#e2e2e2';
    var step = span <= 60000 ? 10000 : span <= 3 * 60000 ? 30000 : span <= 10 * 60000 ? 60000 : 300000;
    for (var k = 1; k * step < span; k++) ctx.fillRect(Math.round(w - k * step / span * w), 0, 1, h);

    // alerts: shaded spans with a black top edge (black is no emotion's colour)
    line.alerts.forEach(function (a) {
      var end = a.end === null ? now : a.end;
      if (end < t0) return;
      var x0 = Math.max(0, x(a.start)), x1 = Math.min(w, x(end));
      ctx.fillStyle = ALERT_FILL;
      ctx.fillRect(x0, 0, Math.max(2, x1 - x0), h);
      ctx.fillStyle = ALERT_EDGE;
      ctx.fillRect(x0, 0, Math.max(2, x1 - x0), 2);
    });

    // windows: bars, height = confidence
    line.windows.forEach(function (s) {
      if (s.end < t0) return;
      // Whole pixels: adjacent windows meet without anti-aliased seams.
      var x0 = Math.floor(x(s.start)), x1 = Math.ceil(x(s.end));
      var bh = Math.max(2, (barBottom - barTop) * Math.min(1, Math.max(0.05, s.conf)));
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

  function tick() {
    // Once a second: visible timelines scroll, "updated" ages, lines re-sort, stale age out.
    var t0 = performance.now();
    var draw = [];
    state.lines.forEach(function (line) {
      if (!line.visible) return;
      draw.push(line);
      if (line.el && line.lastAlert && !line.lastAlert.active && !line.el.banner.hidden) mark(line);
    });
    // Canvases first (their sizes are read before anything is written), then the order.
    drawAll(draw);
    draw.forEach(renderTime);
    sortLines();
    state.devices.forEach(function (d) {
      var hidden = isHidden(d);
      if (hidden !== d.wasHidden) { d.wasHidden = hidden; d.lines.forEach(mark); }
    });
    dirtySummary = true;
    queueFrame();
    var dt = performance.now() - t0;
    if (dt > state.perf.tickMax) state.perf.tickMax = dt;
  }

  // ---------------------------------------------------------------- start

  function init() {
    renderLegend();
    loadHidden();
    var stale = Number(params.get('stale_minutes'));
    if (stale > 0) state.staleMs = stale * 60000;
    if ('IntersectionObserver' in window) {
      observer = new IntersectionObserver(function (entries) {
        entries.forEach(function (en) {
          var key = en.target.dataset.device + '\u0000' + en.target.dataset.channel;
          var line = state.lines.get(key);
          if (!line) return;
          line.visible = en.isIntersecting;
          if (line.visible) mark(line);
        });
      });
    }
    $('hidden-toggle').addEventListener('click', function () {
      state.showHidden = !state.showHidden;
      state.lines.forEach(mark);
    });
    $('connect-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var s = readForm();
      saveJson(window.localStorage, STORE_KEY, { broker: s.broker, prefix: s.prefix, username: s.username, minutes: s.minutes });
      connect(s);
    });
    window.addEventListener('resize', function () { state.lines.forEach(mark); });
    window.addEventListener('pagehide', function () { timelineDirty = true; saveTimeline(); });
    setInterval(tick, Math.min(REDRAW_MS, SORT_MS));
    setInterval(saveTimeline, SAVE_MS);
    renderSummary();
    loadServerConfig().then(function (server) {
      var saved = loadJson(window.localStorage, STORE_KEY) || {};
      var s = {
        broker: params.get('broker') || str(server.broker, 300) || str(saved.broker, 300) || defaultBroker(),
        prefix: params.get('prefix') || str(server.prefix, 200) || str(saved.prefix, 200) || 'serd',
        username: params.get('username') || str(server.username, 200) || str(saved.username, 200) || '',
        password: params.get('password') || '',
        minutes: Number(params.get('minutes') || server.minutes || saved.minutes || 5) || 5,
      };
      fillForm(s);
      connect(readForm());
    });
  }

  // For tests and the curious: the page's state (read-only use, please), and the handler
  // the MQTT client calls, so a test can time it with synthetic messages.
  window.serdDashboard = state;
  window.serdDashboardHandle = onMessage;
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
}());
