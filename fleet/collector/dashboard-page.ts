/**
 * The dashboard page, served as one response: inline CSS and JS, charts drawn
 * as inline SVG, nothing fetched but the collector's own /api (the machines
 * it runs on often have no internet). Text from devices is only ever set
 * through textContent. The script avoids template literals so it can live
 * in this one.
 */
import { ALERTS_SCRIPT } from './dashboard-alerts-script.js';
import { ROLLOUTS_SCRIPT } from './dashboard-rollouts-script.js';
import { DASHBOARD_SCRIPT } from './dashboard-script.js';

const STYLE = `
:root { --bg:#0f1419; --panel:#161c23; --fg:#d8dee6; --muted:#8793a0; --line:#29313b; --ok:#3fb950; --bad:#f85149; --warn:#d29922; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--fg); }
header { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; padding: 12px 20px; border-bottom: 1px solid var(--line); }
h1 { font-size: 17px; margin: 0; letter-spacing: .02em; }
h2 { font-size: 14px; margin: 18px 20px 8px; color: var(--muted); font-weight: 600; text-transform: uppercase; letter-spacing: .06em; }
label { color: var(--muted); }
input, select { background: var(--panel); color: var(--fg); border: 1px solid var(--line); border-radius: 4px; padding: 3px 6px; font: inherit; }
.muted { color: var(--muted); }
#error { color: var(--bad); }
.table-wrap { margin: 0 20px; overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--muted); font-weight: 600; background: var(--panel); }
tbody tr:last-child td { border-bottom: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.warn { color: var(--warn); font-weight: 600; }
th[data-sort] { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
.pager { display: flex; gap: 10px; align-items: center; margin: 8px 20px; }
button { background: var(--panel); color: var(--fg); border: 1px solid var(--line); border-radius: 4px; padding: 3px 10px; font: inherit; cursor: pointer; }
button:disabled { opacity: .4; cursor: default; }
.dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%; margin-right: 6px; background: var(--muted); }
.dot.on { background: var(--ok); } .dot.off { background: var(--bad); }
.tag { display: inline-block; padding: 0 6px; margin: 1px 4px 1px 0; border-radius: 3px; background: #232b35; }
.s-serving, .s-applied { color: var(--ok); } .s-failed, .s-rejected, .s-rolled_back { color: var(--bad); }
.s-applying, .s-pending, .s-downloading, .s-verifying, .s-loading { color: var(--warn); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 14px; padding: 0 20px 24px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; }
.card-head { display: flex; justify-content: space-between; align-items: baseline; margin-bottom: 6px; }
.card-head b { font-size: 15px; }
.rollout { margin-bottom: 8px; }
.chart-box { margin-top: 8px; }
.chart-title { color: var(--muted); font-size: 12px; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart text { fill: var(--muted); font-size: 10px; }
svg.chart .grid { stroke: var(--line); stroke-width: 1; }
svg.chart polyline { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
.legend { display: flex; gap: 12px; flex-wrap: wrap; font-size: 12px; }
.swatch { display: inline-block; width: 10px; height: 3px; vertical-align: middle; margin-right: 4px; }
ul.events { margin: 8px 0 0; padding-left: 16px; color: var(--muted); font-size: 12px; }
#rollouts tr.selected td { background: #1c2530; }
button.link { background: none; border: 0; padding: 0; color: #58a6ff; text-decoration: underline; }
#rollout-detail { padding: 10px 20px 0; }
#rollout-detail .card { overflow-x: auto; }
#rollout-detail h3 { font-size: 13px; margin: 14px 0 6px; font-weight: 600; }
#rollout-detail .table-wrap { margin: 0 0 8px; }
td.reason, td.detail, p.reason { white-space: normal; overflow-wrap: anywhere; }
#alerts tr.alert-firing td.state { color: var(--bad); font-weight: 600; } #alerts tr.alert-pending td.state { color: var(--warn); }
#fleet tr.alerting td:first-child { box-shadow: inset 3px 0 var(--warn); } #fleet tr.alerting-critical td:first-child { box-shadow: inset 3px 0 var(--bad); }
.alert-badge { display: inline-block; min-width: 16px; margin-right: 6px; padding: 0 4px; border-radius: 8px; background: var(--bad); color: #fff; font-size: 11px; text-align: center; }
td.result.ok { color: var(--ok); } td.result.bad { color: var(--bad); font-weight: 600; } td.result.wait { color: var(--warn); }
`;

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgefleet fleet</title>
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>edgefleet fleet</h1>
  <span id="summary" class="muted"></span>
  <label>device <input id="search" size="12" placeholder="id contains" maxlength="64"></label>
  <label>group <input id="group" size="10" placeholder="any"></label>
  <label>model <input id="model" size="10" placeholder="any"></label>
  <label>online <select id="online"><option value="">any</option><option value="true">online</option><option value="false">not online</option></select></label>
  <label>errors <select id="errors"><option value="">any</option><option value="true">with errors</option><option value="false">none</option></select></label>
  <label>p99 ≥ <input id="minP99" size="5" placeholder="ms" inputmode="decimal"></label>
  <label>window <select id="window">
    <option value="900000">15 min</option><option value="3600000" selected>1 h</option>
    <option value="21600000">6 h</option><option value="86400000">24 h</option>
  </select></label>
  <span id="updated" class="muted"></span>
  <span id="error"></span>
</header>
<main>
  <h2>Active alerts</h2>
  <span id="alerts-error" style="color: var(--bad); margin: 0 20px"></span>
  <div class="table-wrap">
    <table id="alerts">
      <thead><tr><th>State</th><th>Severity</th><th>Alert</th><th>Subject</th><th>Since (UTC)</th><th>Summary</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <p id="alerts-empty" class="muted" style="margin: 8px 20px" hidden>No active alerts (edgefleet collect --alerts FILE evaluates them; docs/alerts.md).</p>
  <p id="alerts-outbox" class="muted" style="margin: 8px 20px"></p>
  <h2>Devices</h2>
  <div class="table-wrap">
    <table id="fleet">
      <thead><tr>
        <th data-sort="device">Device</th><th data-sort="online">Online</th><th>Groups</th><th>Desired</th><th>Models</th>
        <th>p50 ms</th><th data-sort="p99">p99 ms</th><th data-sort="errors">Errors</th><th>CPU %</th><th>Temp °C</th><th>Mem %</th>
        <th data-sort="dropped" title="points the device dropped (outbox full)">Dropped</th>
        <th title="points waiting on the device / their bytes">Outbox</th>
        <th title="messages the collector kept aside unstored: not valid, or refused by the database">Quarantined</th>
        <th title="messages or points dropped for the device's quotas">Over quota</th>
        <th title="times too far from arrival, stored with the arrival time">Clock skewed</th>
        <th data-sort="lastSeen">Last seen</th>
      </tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <div class="pager">
    <button id="prev" type="button">&larr; prev</button><span id="range" class="muted"></span><button id="next" type="button">next &rarr;</button>
    <label>rows per page <select id="pagesize"><option>50</option><option selected>100</option><option>250</option><option>500</option></select></label>
  </div>
  <p id="empty" class="muted" style="margin: 8px 20px" hidden>No device has reported yet.</p>
  <h2>Rollouts</h2>
  <span id="rollouts-error" style="color: var(--bad); margin: 0 20px"></span>
  <div class="table-wrap">
    <table id="rollouts">
      <thead><tr><th>Rollout</th><th>Group</th><th>Models (old -&gt; new)</th><th>Status</th><th>Wave</th><th>Reason</th><th>Started (UTC)</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <p id="rollouts-empty" class="muted" style="margin: 8px 20px" hidden>No rollout recorded yet.</p>
  <div id="rollout-detail"></div>
  <h2>Latency, health and rollout</h2>
  <div id="cards" class="cards"></div>
</main>
<script>${DASHBOARD_SCRIPT}</script>
<script>${ROLLOUTS_SCRIPT}</script>
<script>${ALERTS_SCRIPT}</script>
</body>
</html>
`;
