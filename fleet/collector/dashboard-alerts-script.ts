/**
 * The dashboard's alerts section (plain ES2020, no template literals, its
 * own closure beside dashboard-script.ts): polls /api/alerts as often as the
 * fleet table, lists the active alerts (firing first) in the alerts panel,
 * and marks the rows of the fleet table whose device has one (a class on
 * the row and a badge naming the alerts), again whenever the table is
 * redrawn. Alert text carries device text, so it only goes in through
 * text nodes.
 */
export const ALERTS_SCRIPT = String.raw`
(function () {
  'use strict';
  var REFRESH_MS = 5000;
  // Device id -> { names: [alertname...], critical: bool } of its active firing alerts.
  var affected = {};

  function td(text, cls) {
    var c = document.createElement('td');
    c.textContent = text;
    if (cls) c.className = cls;
    return c;
  }

  function subject(labels) {
    return Object.keys(labels).map(function (k) { return k + '=' + labels[k]; }).join(' ') || '-';
  }

  function alertRow(a) {
    var tr = document.createElement('tr');
    tr.className = 'alert-' + a.state + ' sev-' + a.severity;
    if (a.labels.device) tr.setAttribute('data-device', a.labels.device);
    [td(a.state, 'state'), td(a.severity), td(a.alertname), td(subject(a.labels)), td(a.firedAt || a.activeSince, 'since'), td(a.summary, 'reason')]
      .forEach(function (c) { tr.appendChild(c); });
    tr.title = a.description;
    return tr;
  }

  // Marks (or unmarks) each row of the fleet table by its device's firing alerts.
  function markDevices() {
    var rows = document.querySelectorAll('#fleet tbody tr[data-device]');
    Array.prototype.forEach.call(rows, function (tr) {
      var hit = affected[tr.getAttribute('data-device')];
      var badge = tr.querySelector('.alert-badge');
      tr.classList.toggle('alerting', !!hit);
      tr.classList.toggle('alerting-critical', !!(hit && hit.critical));
      if (!hit) { if (badge) badge.remove(); return; }
      if (!badge) {
        badge = document.createElement('span');
        badge.className = 'alert-badge';
        tr.firstElementChild.prepend(badge);
      }
      badge.textContent = String(hit.names.length);
      badge.title = hit.names.join(', ');
    });
  }

  function render(report) {
    var body = document.querySelector('#alerts tbody');
    body.replaceChildren.apply(body, report.active.map(alertRow));
    document.getElementById('alerts-empty').hidden = report.active.length > 0;
    affected = {};
    report.active.forEach(function (a) {
      var device = a.labels.device;
      if (!device || a.state !== 'firing') return;
      var hit = affected[device] || (affected[device] = { names: [], critical: false });
      hit.names.push(a.alertname);
      hit.critical = hit.critical || a.severity === 'critical';
    });
    var undelivered = report.outbox.filter(function (o) { return o.waiting > 0 || o.failed > 0; }).map(function (o) {
      return o.receiver + ': ' + o.waiting + ' waiting, ' + o.failed + ' refused' + (o.lastError ? ' (' + o.lastError + ')' : '');
    });
    document.getElementById('alerts-outbox').textContent = undelivered.length ? 'Webhook notifications not delivered: ' + undelivered.join('; ') : '';
    markDevices();
  }

  function refresh() {
    fetch('/api/alerts', { cache: 'no-store' })
      .then(function (res) { return res.json().then(function (b) { if (!res.ok) throw new Error(b.error || res.status); return b; }); })
      .then(function (report) { document.getElementById('alerts-error').textContent = ''; render(report); })
      .catch(function (err) { document.getElementById('alerts-error').textContent = 'alerts: ' + err.message; })
      .finally(function () { setTimeout(refresh, REFRESH_MS); });
  }

  // The fleet table is redrawn on every poll: mark the new rows as they come.
  new MutationObserver(markDevices).observe(document.querySelector('#fleet tbody'), { childList: true });
  refresh();
})();
`;
