/**
 * The dashboard's browser script (plain ES2020, no template literals, no
 * dependencies): polls /api every few seconds, renders one page of the fleet
 * table (the server filters, sorts and slices, so 10,000 devices cost what
 * one page does) and, per device on the page, SVG line charts of latency
 * (p50/p99 per model), CPU and memory use, and temperature, with the rollout
 * state and recent events.
 */
export const DASHBOARD_SCRIPT = String.raw`
(function () {
  'use strict';
  var REFRESH_MS = 5000;
  var MAX_CARDS = 24;
  var COLORS = ['#58a6ff', '#f0883e', '#3fb950', '#d2a8ff', '#ff7b72', '#e3b341', '#79c0ff', '#56d364'];
  var SVG_NS = 'http://www.w3.org/2000/svg';

  function byId(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fixed(v, digits) { return v === null || v === undefined ? '-' : Number(v).toFixed(digits); }

  function ago(ts) {
    if (!ts) return '-';
    var s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
    if (s < 90) return s + ' s ago';
    if (s < 5400) return Math.round(s / 60) + ' min ago';
    if (s < 172800) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }

  function clock(ms) {
    var d = new Date(ms);
    return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0');
  }

  function getJson(path, signal) {
    return fetch(path, { cache: 'no-store', signal: signal }).then(function (res) {
      if (!res.ok) return res.json().then(function (b) { throw new Error(path + ': ' + (b.error || res.status)); });
      return res.json();
    });
  }

  function memPct(h) { return h && h.memTotalBytes > 0 ? (100 * h.memUsedBytes) / h.memTotalBytes : null; }

  function perModel(row, key, digits) {
    return row.inference.map(function (i) { return fixed(i[key], digits); }).join(', ') || '-';
  }

  function statusTag(text, state) { return el('span', { class: 'tag s-' + state }, [text]); }

  function desiredCell(d) {
    if (!d) return '-';
    var tag = statusTag(d.serial + ' ' + d.status, d.status);
    if (d.error) tag.setAttribute('title', d.error);
    return tag;
  }

  function modelTags(models) {
    return models.map(function (m) {
      var t = statusTag(m.name + ':' + m.version + ' ' + m.state, m.state);
      if (m.error) t.setAttribute('title', m.error);
      return t;
    });
  }

  function bytes(n) {
    var units = ['B', 'KiB', 'MiB', 'GiB'];
    var u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return (u === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[u];
  }

  // A count that is not zero is something the operator should look at.
  function countCell(n, title) {
    var td = el('td', { class: 'num' + (n > 0 ? ' warn' : '') }, [String(n)]);
    if (title) td.setAttribute('title', title);
    return td;
  }

  function fleetRow(r) {
    var online = r.online === null ? '?' : r.online ? 'yes' : 'no';
    var dot = el('span', { class: 'dot ' + (r.online === null ? '' : r.online ? 'on' : 'off') });
    var errors = r.inference.reduce(function (n, i) { return n + i.errors; }, 0);
    var h = r.health;
    var num = function (text) { return el('td', { class: 'num' }, [text]); };
    var dropped = r.dropped || { count: 0, lastAt: null };
    var outbox = r.outbox ? r.outbox.rows + ' / ' + bytes(r.outbox.bytes) : '-';
    return el('tr', { 'data-device': r.device }, [
      el('td', {}, [r.device]), el('td', {}, [dot, online]), el('td', {}, [r.groups.join(', ') || '-']),
      el('td', {}, [desiredCell(r.desired)]), el('td', {}, modelTags(r.models).concat(r.models.length ? [] : ['-'])),
      num(perModel(r, 'p50', 2)), num(perModel(r, 'p99', 2)), num(r.inference.length ? String(errors) : '-'),
      num(fixed(h && h.cpuPct, 1)), num(fixed(h && h.tempC, 1)), num(fixed(memPct(h), 0)),
      countCell(dropped.count, dropped.lastAt ? 'last dropped ' + dropped.lastAt : ''), num(outbox),
      countCell(r.quarantined || 0), countCell(r.overQuota || 0), countCell(r.clockSkewed || 0),
      el('td', { title: r.lastSeen || '' }, [ago(r.lastSeen)]),
    ]);
  }

  var view = { offset: 0, limit: 100, sort: 'device', desc: false };

  function renderTable(page) {
    var body = byId('fleet').querySelector('tbody');
    body.replaceChildren.apply(body, page.rows.map(fleetRow));
    byId('empty').hidden = page.total > 0;
    byId('summary').textContent = page.total + ' devices, ' + page.online + ' online';
    var first = page.rows.length ? page.offset + 1 : 0;
    byId('range').textContent = first + '-' + (page.offset + page.rows.length) + ' of ' + page.total;
    byId('prev').disabled = page.offset === 0;
    byId('next').disabled = page.offset + page.rows.length >= page.total;
    Array.prototype.forEach.call(byId('fleet').querySelectorAll('th[data-sort]'), function (th) {
      var on = th.getAttribute('data-sort') === page.sort;
      th.setAttribute('aria-sort', on ? (page.desc ? 'descending' : 'ascending') : 'none');
    });
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  // lines: [{ name, color, dashed, points: [[epochMs, value], ...] }]
  function chart(title, unit, lines, from, to) {
    var W = 440, H = 120, L = 40, R = 8, T = 6, B = 16;
    var values = [];
    lines.forEach(function (l) { l.points.forEach(function (p) { values.push(p[1]); }); });
    var lo = Math.min(0, Math.min.apply(null, values.concat([0])));
    var hi = niceMax(Math.max.apply(null, values.concat([0])));
    var x = function (t) { return L + ((t - from) / Math.max(1, to - from)) * (W - L - R); };
    var y = function (v) { return T + (1 - (v - lo) / (hi - lo)) * (H - T - B); };
    var root = svg('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, 'data-title': title });
    [lo, (lo + hi) / 2, hi].forEach(function (v) {
      root.appendChild(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      root.appendChild(svg('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end' }, fixed(v, hi < 10 ? 1 : 0)));
    });
    root.appendChild(svg('text', { x: L, y: H - 3 }, clock(from)));
    root.appendChild(svg('text', { x: W - R, y: H - 3, 'text-anchor': 'end' }, clock(to)));
    lines.forEach(function (l) {
      if (l.points.length === 0) return;
      var pts = l.points.map(function (p) { return x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1); }).join(' ');
      var attrs = { points: pts, stroke: l.color, 'data-series': l.name, 'data-count': l.points.length };
      if (l.dashed) attrs['stroke-dasharray'] = '4 3';
      root.appendChild(svg('polyline', attrs));
      var last = l.points[l.points.length - 1];
      root.appendChild(svg('circle', { cx: x(last[0]), cy: y(last[1]), r: 2.5, fill: l.color }));
    });
    if (values.length === 0) root.appendChild(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data in this window'));
    var legend = el('div', { class: 'legend' }, lines.filter(function (l) { return l.points.length; }).map(function (l) {
      var last = l.points[l.points.length - 1][1];
      var look = l.dashed ? 'border-top: 2px dashed ' + l.color : 'background: ' + l.color;
      var swatch = el('span', { class: 'swatch', style: look });
      return el('span', {}, [swatch, l.name + ' ' + fixed(last, last < 10 ? 2 : 1) + ' ' + unit]);
    }));
    return el('div', { class: 'chart-box' }, [el('div', { class: 'chart-title' }, [title]), root, legend]);
  }

  function latencyLines(series) {
    var models = [];
    series.inference.forEach(function (s) { if (models.indexOf(s.model) < 0) models.push(s.model); });
    var lines = [];
    models.forEach(function (m, i) {
      var mine = series.inference.filter(function (s) { return s.model === m && s.p50 !== null; });
      var color = COLORS[i % COLORS.length];
      lines.push({ name: m + ' p50', color: color, points: mine.map(function (s) { return [Date.parse(s.ts), s.p50]; }) });
      lines.push({ name: m + ' p99', color: color, dashed: true, points: mine.map(function (s) { return [Date.parse(s.ts), s.p99]; }) });
    });
    return lines;
  }

  function healthLines(series) {
    var at = function (s) { return Date.parse(s.ts); };
    var mem = series.health.filter(function (s) { return s.memTotalBytes > 0; });
    var temp = series.health.filter(function (s) { return s.tempC !== null; });
    return {
      use: [
        { name: 'CPU', color: COLORS[0], points: series.health.map(function (s) { return [at(s), s.cpuPct]; }) },
        { name: 'memory', color: COLORS[1], points: mem.map(function (s) { return [at(s), memPct(s)]; }) },
      ],
      temp: [{ name: 'temperature', color: COLORS[4], points: temp.map(function (s) { return [at(s), s.tempC]; }) }],
    };
  }

  function card(row, series, events, from, to) {
    var health = healthLines(series);
    var agent = row.agent ? 'agent ' + row.agent.version + ' ' + row.agent.arch : '';
    var head = el('div', { class: 'card-head' }, [
      el('b', {}, [row.device]),
      el('span', { class: 'muted' }, [(row.online ? 'online' : row.online === false ? 'offline' : 'status unknown') + (agent ? ', ' + agent : '')]),
    ]);
    var rollout = el('div', { class: 'rollout' }, [el('span', { class: 'muted' }, ['desired ']), desiredCell(row.desired), ' ']
      .concat(modelTags(row.models)));
    var recent = el('ul', { class: 'events' }, events.slice(-5).reverse().map(function (e) {
      var what = e.type + (e.model ? ' ' + e.model + (e.version ? ':' + e.version : '') : '') + (e.detail ? ': ' + e.detail : '');
      return el('li', { title: e.ts }, [ago(e.ts) + '  ' + what]);
    }));
    return el('div', { class: 'card', 'data-device': row.device }, [
      head, rollout,
      chart('Inference latency (ms), p50 solid, p99 dashed', 'ms', latencyLines(series), from, to),
      chart('CPU and memory use (%)', '%', health.use, from, to),
      chart('Temperature (°C)', '°C', health.temp, from, to),
      events.length ? recent : null,
    ]);
  }

  var FILTERS = ['group', 'model', 'search', 'online', 'errors', 'minP99'];

  function query() {
    var params = ['offset=' + view.offset, 'limit=' + view.limit, 'sort=' + view.sort, 'desc=' + view.desc];
    FILTERS.forEach(function (k) {
      var v = byId(k).value.trim();
      if (v) params.push(k + '=' + encodeURIComponent(v));
    });
    return '?' + params.join('&');
  }

  // The refresh in flight. A new one (a page turned, a filter changed) cancels it: its chart
  // requests would otherwise queue ahead of the new table's in the browser's few connections.
  var inflight = null;

  function refresh() {
    var to = Date.now();
    var from = to - Number(byId('window').value);
    if (inflight) inflight.abort();
    var mine = new AbortController();
    inflight = mine;
    var signal = mine.signal;
    return getJson('/api/devices' + query(), signal).then(function (page) {
      // The fleet shrank under this page (a filter, devices gone): show the last page there is.
      if (page.offset > 0 && page.rows.length === 0 && page.total > 0) {
        view.offset = Math.floor((page.total - 1) / view.limit) * view.limit;
        return getJson('/api/devices' + query(), signal);
      }
      return page;
    }).then(function (page) {
      renderTable(page);
      var rows = page.rows;
      return Promise.all(rows.slice(0, MAX_CARDS).map(function (r) {
        var base = '/api/devices/' + encodeURIComponent(r.device);
        var range = '?from=' + from + '&to=' + to;
        return Promise.all([getJson(base + '/series' + range, signal), getJson(base + '/events' + range, signal)]).then(function (got) {
          return card(r, got[0], got[1], from, to);
        });
      }));
    }).then(function (cards) {
      var box = byId('cards');
      box.replaceChildren.apply(box, cards);
      byId('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      byId('error').textContent = '';
    }).catch(function (err) {
      if (signal.aborted) return;
      byId('error').textContent = String(err.message || err);
    }).then(function () {
      if (inflight === mine) inflight = null;
      return !signal.aborted;
    });
  }

  var timer;
  function loop() {
    clearTimeout(timer);
    // Only the refresh that was not cancelled schedules the next one.
    refresh().then(function (finished) { if (finished) timer = setTimeout(loop, REFRESH_MS); });
  }
  function fromStart() { view.offset = 0; loop(); }
  FILTERS.forEach(function (id) { byId(id).addEventListener('change', fromStart); });
  byId('window').addEventListener('change', loop);
  byId('pagesize').addEventListener('change', function () { view.limit = Number(byId('pagesize').value); fromStart(); });
  byId('prev').addEventListener('click', function () { view.offset = Math.max(0, view.offset - view.limit); loop(); });
  byId('next').addEventListener('click', function () { view.offset += view.limit; loop(); });
  Array.prototype.forEach.call(byId('fleet').querySelectorAll('th[data-sort]'), function (th) {
    th.addEventListener('click', function () {
      var key = th.getAttribute('data-sort');
      // The same column again turns the order round; a new column starts with what matters most first.
      view.desc = key === view.sort ? !view.desc : key !== 'device' && key !== 'online';
      view.sort = key;
      fromStart();
    });
  });
  view.limit = Number(byId('pagesize').value);
  loop();
})();
`;
