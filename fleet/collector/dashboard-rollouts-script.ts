/**
 * The dashboard's rollouts section (plain ES2020, no template literals, its
 * own closure beside dashboard-script.ts): polls /api/rollouts and the
 * selected rollout's /api/rollouts/{id} as often as the fleet table, and
 * renders the list (newest first) and, for the selected one (the newest
 * until one is clicked), each wave's gates against their thresholds and
 * its devices' reported states. Operators' and devices' text (reasons,
 * gate details, errors) only ever goes in through text nodes.
 */
export const ROLLOUTS_SCRIPT = String.raw`
(function () {
  'use strict';
  var REFRESH_MS = 5000;
  // Gates whose figures are shares (shown as percentages), and those that must be reached rather than stayed under.
  var SHARE_GATES = { applied: true, 'error-rate': true, p99: true, shadow: true };
  var AT_LEAST = { applied: true, requests: true, shadow: true };

  function byId(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return node;
  }

  function getJson(path, signal) {
    return fetch(path, { cache: 'no-store', signal: signal }).then(function (res) {
      return res.json().then(function (b) {
        if (!res.ok) { var e = new Error(path + ': ' + (b.error || res.status)); e.status = res.status; throw e; }
        return b;
      });
    });
  }

  function percent(x) {
    var p = x * 100;
    return (Number.isInteger(p) ? String(p) : p.toFixed(Math.abs(p) < 1 ? 2 : 1)) + '%';
  }

  function figure(name, v) {
    if (v === null || v === undefined) return '-';
    if (!SHARE_GATES[name]) return String(v);
    return (name === 'p99' && v >= 0 ? '+' : '') + percent(v);
  }

  function refs(models) {
    if (!models) return '?';
    return models.map(function (m) { return m.name + ':' + m.version; }).join(' ') || 'nothing';
  }

  function where(r) {
    var wave = 'wave ' + Math.min(r.wave + 1, r.waveCount) + '/' + r.waveCount;
    return r.status === 'running' ? wave + ', ' + r.phase : wave;
  }

  function time(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : '-'; }

  function tag(text, cls) { return el('span', { class: 'tag ' + cls }, [text]); }

  var STATUS_CLASS = { running: 's-applying', paused: 's-pending', succeeded: 's-serving', failed: 's-failed', aborted: 's-rejected' };

  var selected = null;

  function listRow(r) {
    var open = el('button', { type: 'button', class: 'link' }, [r.id]);
    open.addEventListener('click', function () { selected = r.id; loop(); });
    return el('tr', { 'data-rollout': r.id, class: r.id === selected ? 'selected' : '' }, [
      el('td', {}, [open]), el('td', {}, [r.group]), el('td', {}, [refs(r.previous) + ' -> ' + refs(r.models)]),
      el('td', {}, [tag(r.status, STATUS_CLASS[r.status] || '')]), el('td', {}, [where(r)]),
      el('td', { class: 'reason' }, [r.reason || '-']), el('td', {}, [time(r.createdAt)]),
    ]);
  }

  function gateRow(g) {
    var result = g.ok === null ? 'waiting' : g.ok ? 'ok' : 'FAIL';
    var cls = g.ok === null ? 'wait' : g.ok ? 'ok' : 'bad';
    return el('tr', { 'data-gate': g.name }, [
      el('td', {}, [g.name]), el('td', { class: 'num' }, [figure(g.name, g.value)]),
      el('td', { class: 'num' }, [(AT_LEAST[g.name] ? '>= ' : '<= ') + figure(g.name, g.threshold)]),
      el('td', { class: 'result ' + cls }, [result]), el('td', { class: 'detail' }, [g.detail]),
    ]);
  }

  function yesNo(v, good) { return v === null ? '-' : tag(v ? 'yes' : 'no', v === good ? 's-serving' : 's-pending'); }

  function deviceRow(s) {
    var d = s.desired;
    var desired = [s.reported ? '-' : 'never heard from'];
    if (d) {
      desired = [tag(d.source + ' ' + d.serial + ' ' + d.status, 's-' + d.status)];
      if (d.error) desired[0].setAttribute('title', d.error);
    }
    if (s.reported && !s.inGroup) desired.push(el('span', { class: 'muted' }, [' not in the group']));
    var models = s.models.map(function (m) {
      var t = tag(m.name + ':' + m.version + ' ' + m.state, 's-' + m.state);
      if (m.error) t.setAttribute('title', m.error);
      return t;
    });
    return el('tr', { 'data-device': s.device }, [
      el('td', {}, [s.device]), el('td', {}, [s.online === null ? '?' : s.online ? 'yes' : 'no']), el('td', { class: 'desired' }, desired),
      el('td', {}, [s.documentSerial === null ? 'not yet' : String(s.documentSerial)]),
      el('td', { class: 'applied' }, [yesNo(s.applied, true)]), el('td', { class: 'serves' }, [yesNo(s.servesNew, true)]),
      el('td', {}, models.length ? models : ['-']),
    ]);
  }

  function table(cls, heads, rows) {
    return el('div', { class: 'table-wrap' }, [el('table', { class: cls }, [
      el('thead', {}, [el('tr', {}, heads.map(function (h) { return el('th', {}, [h]); }))]), el('tbody', {}, rows),
    ])]);
  }

  function waveSection(r, w, i) {
    var t = w.tally;
    var head = 'Wave ' + (i + 1) + ' of ' + r.waves.length + ': ' + w.outcome.replace('_', ' ') + ', ' + t.devices + ' device(s), ' +
      t.applied + ' applied, ' + t.servesNew + ' serving the new versions' + (t.failed ? ', ' + t.failed + ' failed' : '') +
      (t.offline ? ', ' + t.offline + ' offline' : '') + (w.startedAt ? ', started ' + time(w.startedAt) : '');
    var parts = [el('h3', {}, [head])];
    parts.push(w.gates.length
      ? table('gates', ['Gate', 'Measured', 'Threshold', 'Result', 'Detail'], w.gates.map(gateRow))
      : el('p', { class: 'muted' }, ['no gate judged yet']));
    parts.push(table('wave-devices', ['Device', 'Online', 'Desired', 'Rollout document', 'Applied', 'Serves new', 'Models'], w.states.map(deviceRow)));
    if (w.states.length < t.devices) parts.push(el('p', { class: 'muted' }, ['showing the first ' + w.states.length + ' of ' + t.devices + ' devices']));
    return el('section', { class: 'wave', 'data-wave': String(i) }, parts);
  }

  function detail(r) {
    var item = { status: r.status, phase: r.phase, wave: r.wave, waveCount: r.waves.length };
    var parts = [
      el('div', { class: 'card-head' }, [el('b', {}, [r.id]), el('span', { class: 'muted' }, [r.status + ', ' + where(item) + ', group ' + r.spec.group])]),
      el('div', {}, [refs(r.previous) + ' -> ' + refs(r.spec.models)]),
    ];
    if (r.reason) parts.push(el('p', { class: 'reason' }, ['reason: ' + r.reason]));
    return el('div', { class: 'card', 'data-rollout': r.id }, parts.concat(r.waves.map(function (w, i) { return waveSection(r, w, i); })));
  }

  var inflight = null;

  function refresh() {
    if (inflight) inflight.abort();
    var mine = new AbortController();
    inflight = mine;
    var signal = mine.signal;
    return getJson('/api/rollouts?limit=20', signal).then(function (list) {
      var rows = list.rollouts;
      if (selected === null && rows.length) selected = rows[0].id;
      var body = byId('rollouts').querySelector('tbody');
      body.replaceChildren.apply(body, rows.map(listRow));
      byId('rollouts-empty').hidden = rows.length > 0;
      if (selected === null) return null;
      return getJson('/api/rollouts/' + encodeURIComponent(selected), signal).catch(function (err) {
        if (err.status === 404) { selected = null; return null; }
        throw err;
      });
    }).then(function (r) {
      var box = byId('rollout-detail');
      box.replaceChildren.apply(box, r ? [detail(r)] : []);
      byId('rollouts-error').textContent = '';
    }).catch(function (err) {
      if (signal.aborted) return;
      byId('rollouts-error').textContent = String(err.message || err);
    }).then(function () {
      if (inflight === mine) inflight = null;
      return !signal.aborted;
    });
  }

  var timer;
  function loop() {
    clearTimeout(timer);
    refresh().then(function (finished) { if (finished) timer = setTimeout(loop, REFRESH_MS); });
  }
  loop();
})();
`;
