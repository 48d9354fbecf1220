/** `edgefleet status`: the fleet table from the collector's store (what `edgefleet collect` wrote). */
import { parseArgs } from 'node:util';
import { GROUP_RE, MODEL_NAME_RE } from '../../protocol/index.js';
import { parseOrUsage } from '../args.js';
import { DB_HELP, openStore, resolveDb } from '../collector/open-store.js';
import type { FleetFilters, FleetRow } from '../collector/store.js';
import type { Command } from '../command.js';
import { UsageError } from '../errors.js';

const OPTIONS = {
  db: { type: 'string' },
  group: { type: 'string' },
  model: { type: 'string' },
  json: { type: 'boolean' },
} as const;

export const status: Command = {
  name: 'status',
  summary: 'fleet table from the collector: online, models, latency, errors, CPU, temperature',
  help: `usage: edgefleet status [--db URL] [--group G] [--model NAME] [--json]

Reads what 'edgefleet collect' stored and prints one row per device: online,
groups, desired serial and status, each model's version and state, p50 and
p99 latency (ms) and errors of the last inference interval per model, CPU %,
temperature and when the device was last heard from.

Options:
${DB_HELP}
  --group G     only devices that report being in group G
  --model NAME  only devices that report model NAME (any version)
  --json        print the rows as a JSON array instead`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const filters: FleetFilters = {};
    if (values.group !== undefined) {
      if (!GROUP_RE.test(values.group)) throw new UsageError(`--group "${values.group}" is not a group name`);
      filters.group = values.group;
    }
    if (values.model !== undefined) {
      if (!MODEL_NAME_RE.test(values.model)) throw new UsageError(`--model "${values.model}" is not a model name`);
      filters.model = values.model;
    }
    const store = openStore(resolveDb(values.db), { cwd: io.cwd, mustExist: true });
    let rows: FleetRow[];
    try {
      await store.init();
      rows = await store.fleetStatus(filters);
    } finally {
      await store.close();
    }
    if (values.json) {
      io.out(JSON.stringify(rows, null, 2));
      return;
    }
    if (rows.length === 0) {
      const which = [filters.group && `in group ${filters.group}`, filters.model && `with model ${filters.model}`].filter(Boolean).join(' ');
      io.note(`no devices ${which || 'have reported to the collector yet'}`.trim());
      return;
    }
    io.out(formatStatusTable(rows));
  },
};

const num = (v: number | null | undefined, digits: number): string => (v === null || v === undefined ? '-' : v.toFixed(digits));

/** One value per model, in the order of `row.inference`. */
const perModel = (row: FleetRow, pick: (i: FleetRow['inference'][number]) => string): string =>
  row.inference.map(pick).join(',') || '-';

export function formatStatusTable(rows: readonly FleetRow[]): string {
  const header = ['DEVICE', 'ONLINE', 'GROUPS', 'DESIRED', 'MODELS', 'P50 MS', 'P99 MS', 'ERRORS', 'CPU %', 'TEMP C', 'LAST SEEN'];
  const cells = rows.map((r) => [
    r.device,
    r.online === null ? '?' : r.online ? 'yes' : 'no',
    r.groups.join(',') || '-',
    r.desired ? `${r.desired.serial} ${r.desired.status}` : '-',
    r.models.map((m) => `${m.name}:${m.version} ${m.state}`).join(', ') || '-',
    perModel(r, (i) => num(i.p50, 2)),
    perModel(r, (i) => num(i.p99, 2)),
    perModel(r, (i) => String(i.errors)),
    num(r.health?.cpuPct, 1),
    num(r.health?.tempC, 1),
    r.lastSeen ?? '-',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)));
  const line = (c: string[]): string => c.map((v, i) => v.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(header), ...cells.map(line)].join('\n');
}
