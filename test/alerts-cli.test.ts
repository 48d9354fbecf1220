/**
 * `edgefleet alerts` as text (fleet/commands/alerts.ts formatAlerts): the
 * active table, firing first; the resolved table; the outbox lines; and a
 * device's text (here a GPU name with escape sequences and a newline,
 * which reaches the summary) printed escaped, one line per alert.
 */
import { describe, expect, it } from 'vitest';
import { evaluate } from '../fleet/alerts/evaluator.js';
import { parseRules } from '../fleet/alerts/rules.js';
import { alertView } from '../fleet/alerts/view.js';
import { formatAlerts } from '../fleet/commands/alerts.js';
import type { FleetRow } from '../fleet/collector/store.js';
import { formatTime } from '../protocol/index.js';

const NOW = Date.parse('2026-12-04T12:00:00Z');

describe('edgefleet alerts, text', () => {
  it('prints active, resolved and undelivered notifications; device text escaped', () => {
    const gpu = (name: string, utilPct: number) => ({ name, utilPct, memUsedBytes: null, memTotalBytes: null, tempC: null });
    const row: FleetRow = {
      device: 'jet-1', online: true, groups: [], desired: null, models: [], agent: null, trust: null, inference: [], lastSeen: formatTime(NOW),
      health: { ts: formatTime(NOW), cpuPct: 1, load1: 0, tempC: 85, memUsedBytes: 1, memTotalBytes: 2, gpus: [gpu('Orin\u001b[2J\nFAKE', 99)] },
      dropped: { count: 0, lastAt: null }, outbox: null, quarantined: 0, overQuota: 0, clockSkewed: 0,
    };
    const rules = parseRules('rules: [{ alert: EdgefleetGpuBusy, for: 0 }, { alert: EdgefleetTemperatureHigh, for: 10m }]').rules;
    const { changed } = evaluate(rules, { now: NOW - 60_000, rows: [row], rollouts: [] }, new Map());
    const [busy, hot] = changed;
    if (busy === undefined || hot === undefined) throw new Error('expected a firing and a pending alert');
    const resolved = { ...busy, fingerprint: 'f0', state: 'resolved' as const, firedAt: NOW - 3_600_000, resolvedAt: NOW - 120_000 };
    const lines = formatAlerts({
      active: [alertView(busy), alertView(hot)],
      resolved: [alertView(resolved)],
      outbox: [{ receiver: 'ops', waiting: 2, failed: 1, oldestAt: formatTime(NOW - 300_000), lastError: 'HTTP 404 Not Found' }],
    }, NOW).join('\n').split('\n');
    expect(lines).toEqual([
      'STATE    SEVERITY  ALERT                     SUBJECT             SINCE      SUMMARY',
      'firing   warning   EdgefleetGpuBusy          device=jet-1 gpu=0  1 min ago  jet-1 GPU 0 (Orin\\e[2J\\nFAKE): 99 % busy',
      'pending  warning   EdgefleetTemperatureHigh  device=jet-1        1 min ago  jet-1: board at 85 C',
      '',
      'recently resolved:',
      'RESOLVED   SEVERITY  ALERT             SUBJECT             FIRED    SUMMARY',
      '2 min ago  warning   EdgefleetGpuBusy  device=jet-1 gpu=0  1 h ago  jet-1 GPU 0 (Orin\\e[2J\\nFAKE): 99 % busy',
      'receiver ops: 2 notification(s) waiting since 5 min ago, 1 refused for good (last error: HTTP 404 Not Found)',
    ]);
    expect(formatAlerts({ active: [], resolved: [], outbox: [] }, NOW)).toEqual(['no active alerts']);
  });
});
