/** `edgefleet alerts`: the built-in evaluator's alerts from the collector's store (what `edgefleet collect --alerts` wrote). */
import { parseArgs } from 'node:util';
import { formatAge } from '../age.js';
import { parseOrUsage } from '../args.js';
import { MAX_RESOLVED, RECENT_RESOLVED, readAlerts, type AlertView, type AlertsReport } from '../alerts/view.js';
import { DB_HELP, openStore, resolveDb } from '../collector/open-store.js';
import type { Command } from '../command.js';
import { PROFILE_OPTIONS, loadProfile } from '../profile.js';
import { formatTextTable, terminalSafe } from '../terminal-text.js';

const OPTIONS = {
  db: { type: 'string' },
  json: { type: 'boolean' },
  all: { type: 'boolean' },
  ...PROFILE_OPTIONS,
} as const;

export const alerts: Command = {
  name: 'alerts',
  summary: 'active and recently resolved alerts of the built-in evaluator (collect --alerts)',
  help: `usage: edgefleet alerts [--db URL] [--all] [--json]

Reads what 'edgefleet collect --alerts FILE' stored (docs/alerts.md) and
prints the active alerts, firing ones first, then pending ones (condition
true, waiting for their 'for'), newest first; then the ${RECENT_RESOLVED} most recently
resolved; then, per webhook receiver, notifications not delivered yet and
those the receiver refused (a 4xx other than 408 and 429), with the last
error. Labels and summaries carry text from devices: control characters are
printed escaped (\\n, \\e, \\u202e).

Options:
${DB_HELP}
  --all         every resolved alert kept (7 days), not only the ${RECENT_RESOLVED} latest
  --json        {active, resolved, outbox} as JSON, with RFC 3339 times
  --profile N   take --db from profile N's "db" (see docs/operator-guide.md)`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const profile = await loadProfile(values.profile);
    const store = openStore(resolveDb(values.db ?? profile.settings.db), { cwd: io.cwd, mustExist: true });
    let report: AlertsReport;
    try {
      await store.init();
      report = await readAlerts(store, values.all ? MAX_RESOLVED : RECENT_RESOLVED);
    } finally {
      await store.close();
    }
    if (values.json) {
      io.out(JSON.stringify(report, null, 2));
      return;
    }
    for (const line of formatAlerts(report)) io.out(line);
  },
};

const subject = (a: AlertView): string => Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(' ') || '-';

/** The report as text: two tables and the outbox lines, every cell terminal-safe. */
export function formatAlerts(report: AlertsReport, now = Date.now()): string[] {
  const lines: string[] = [];
  if (report.active.length === 0) {
    lines.push('no active alerts');
  } else {
    lines.push(formatTextTable(
      ['STATE', 'SEVERITY', 'ALERT', 'SUBJECT', 'SINCE', 'SUMMARY'],
      report.active.map((a) => [a.state, a.severity, a.alertname, subject(a), formatAge(a.firedAt ?? a.activeSince, now), a.summary]),
    ));
  }
  if (report.resolved.length > 0) {
    lines.push('', 'recently resolved:');
    lines.push(formatTextTable(
      ['RESOLVED', 'SEVERITY', 'ALERT', 'SUBJECT', 'FIRED', 'SUMMARY'],
      report.resolved.map((a) => [formatAge(a.resolvedAt, now), a.severity, a.alertname, subject(a), formatAge(a.firedAt, now), a.summary]),
    ));
  }
  for (const o of report.outbox) {
    const parts = [
      ...(o.waiting > 0 ? [`${o.waiting} notification(s) waiting since ${formatAge(o.oldestAt, now)}`] : []),
      ...(o.failed > 0 ? [`${o.failed} refused for good`] : []),
    ];
    lines.push(terminalSafe(`receiver ${o.receiver}: ${parts.join(', ')}${o.lastError === null ? '' : ` (last error: ${o.lastError})`}`));
  }
  return lines;
}
