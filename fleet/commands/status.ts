/** `edgefleet status`: the fleet table from the collector's store (what `edgefleet collect` wrote). */
import { parseArgs } from 'node:util';
import { GROUP_RE, MODEL_NAME_RE } from '../../protocol/index.js';
import { formatAge } from '../age.js';
import { intOption, parseOrUsage } from '../args.js';
import { DB_HELP, openStore, resolveDb } from '../collector/open-store.js';
import { FLEET_PAGE_SORTS, MAX_FLEET_PAGE } from '../collector/store.js';
import type { FleetFilters, FleetPageSort, FleetRow } from '../collector/store.js';
import type { Command } from '../command.js';
import { UsageError } from '../errors.js';
import { PROFILE_OPTIONS, loadProfile } from '../profile.js';
import { formatTextTable, terminalSafe } from '../terminal-text.js';

const OPTIONS = {
  db: { type: 'string' },
  group: { type: 'string' },
  model: { type: 'string' },
  json: { type: 'boolean' },
  sort: { type: 'string' },
  desc: { type: 'boolean' },
  limit: { type: 'string' },
  all: { type: 'boolean' },
  ...PROFILE_OPTIONS,
} as const;

/** Rows the table shows unless --limit or --all says otherwise: a screenful or two, read in milliseconds. */
const DEFAULT_STATUS_ROWS = 100;

export const status: Command = {
  name: 'status',
  summary: 'fleet table from the collector: online, models, latency, errors, CPU, temperature',
  help: `usage: edgefleet status [--db URL] [--group G] [--model NAME] [--sort KEY [--desc]] [--limit N | --all] [--json]

Reads what 'edgefleet collect' stored and prints one row per device: online,
groups, desired serial and status, each model's version and state, p50 and
p99 latency (ms) and errors of the last inference interval per model, CPU %,
temperature, points the device reported dropping (protocol section 13), its
outbox (points waiting to be sent / their bytes) and how long ago it was last
heard from ("3 min ago"; --json gives RFC 3339 times). After the table: a
fleet line, and one line per device whose points were dropped, or whose
messages the collector quarantined, refused over quota or stored with the
arrival time for a clock too far off, and the errors devices report for
their desired state and models. Text from devices is
printed with control characters escaped (\\n, \\e, \\u202e).

Options:
${DB_HELP}
  --group G     only devices that report being in group G
  --model NAME  only devices that report model NAME (any version)
  --sort KEY    order by ${FLEET_PAGE_SORTS.join(', ')} (default device); devices
                without the figure come last
  --desc        highest first (with --sort)
  --limit N     only the first N rows (1-${MAX_FLEET_PAGE}; default ${DEFAULT_STATUS_ROWS}), e.g.
                --sort p99 --desc --limit 20 for the 20 slowest devices
  --all         every device (a table of thousands of rows; default with --json)
  --json        print the rows as a JSON array instead
  --profile N   take --db from profile N's "db" (default: $EDGEFLEET_PROFILE, else
                the profile file's "default"; see docs/operator-guide.md)`,

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
    const sort = values.sort;
    if (sort !== undefined && !(FLEET_PAGE_SORTS as readonly string[]).includes(sort)) {
      throw new UsageError(`--sort must be one of ${FLEET_PAGE_SORTS.join(', ')}, got "${sort}"`);
    }
    if (values.desc && sort === undefined) throw new UsageError('--desc needs --sort');
    if (values.all && values.limit !== undefined) throw new UsageError('--all and --limit do not go together');
    // A table is read by a person: one page unless asked for all; --json is for scripts and takes all.
    const limit = intOption(values.limit, 'limit', 1, MAX_FLEET_PAGE) ?? (values.all || values.json ? undefined : DEFAULT_STATUS_ROWS);
    const profile = await loadProfile(values.profile);
    const store = openStore(resolveDb(values.db ?? profile.settings.db), { cwd: io.cwd, mustExist: true });
    let rows: FleetRow[];
    let total: number | undefined;
    let online = 0;
    try {
      await store.init();
      if (sort === undefined && limit === undefined) {
        rows = await store.fleetStatus(filters);
      } else {
        // One indexed query in the store, only the rows shown assembled; pages of MAX_FLEET_PAGE when no limit.
        rows = [];
        for (;;) {
          const want = limit === undefined ? MAX_FLEET_PAGE : limit - rows.length;
          const page = await store.fleetPage({ ...filters, sort: (sort ?? 'device') as FleetPageSort, desc: values.desc ?? false, offset: rows.length, limit: want });
          rows.push(...page.rows);
          total = page.total;
          online = page.online;
          if (page.rows.length < want || rows.length >= (limit ?? Infinity)) break;
        }
      }
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
    io.out('');
    const paged = total !== undefined && total > rows.length;
    if (paged) {
      io.out(`showing ${rows.length} of ${total} devices${sort === undefined ? '' : `, by ${sort}${values.desc ? ', highest first' : ''}`} (--limit N or --all for more)`);
    }
    for (const line of formatStatusNotes(rows, paged ? { total: total ?? rows.length, online } : undefined)) io.out(line);
  },
};

const num = (v: number | null | undefined, digits: number): string => (v === null || v === undefined ? '-' : v.toFixed(digits));

/** One value per model, in the order of `row.inference`. */
const perModel = (row: FleetRow, pick: (i: FleetRow['inference'][number]) => string): string =>
  row.inference.map(pick).join(',') || '-';

export function formatStatusTable(rows: readonly FleetRow[], now = Date.now()): string {
  const header = ['DEVICE', 'ONLINE', 'GROUPS', 'DESIRED', 'MODELS', 'P50 MS', 'P99 MS', 'ERRORS', 'CPU %', 'TEMP C', 'DROPPED', 'OUTBOX', 'LAST SEEN'];
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
    String(r.dropped.count),
    r.outbox === null ? '-' : `${r.outbox.rows}/${bytes(r.outbox.bytes)}`,
    formatAge(r.lastSeen, now),
  ]);
  return formatTextTable(header, cells);
}

/** 1536 -> "1.5K": outbox sizes at a glance. */
function bytes(n: number): string {
  const units = ['', 'K', 'M', 'G', 'T'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n}B` : `${v.toFixed(v < 10 ? 1 : 0)}${units[u]}`;
}

/**
 * What the collector could not store as sent, after the table: a fleet line,
 * then one line per device with something to say (points it dropped, its
 * messages quarantined, over its quota, or with its clock off; the errors it
 * reports for its desired state and models). Terminal-safe.
 */
/** `fleet`: the whole fleet's figures when `rows` is one page of it. */
export function formatStatusNotes(rows: readonly FleetRow[], fleet?: { total: number; online: number }): string[] {
  const online = rows.filter((r) => r.online === true).length;
  const sum = (pick: (r: FleetRow) => number): { total: number; devices: number } => ({
    total: rows.reduce((n, r) => n + pick(r), 0),
    devices: rows.filter((r) => pick(r) > 0).length,
  });
  const dropped = sum((r) => r.dropped.count);
  const quarantined = sum((r) => r.quarantined);
  const overQuota = sum((r) => r.overQuota);
  const skewed = sum((r) => r.clockSkewed);
  const waiting = sum((r) => r.outbox?.rows ?? 0);
  const part = (s: { total: number; devices: number }, what: string): string[] => (s.total > 0 ? [`${s.total} ${what} on ${s.devices} device(s)`] : []);
  const parts = [
    ...part(dropped, 'points dropped by the device'),
    ...part(waiting, 'points waiting in device outboxes'),
    ...part(quarantined, 'messages quarantined'),
    ...part(overQuota, 'messages or points over quota'),
    ...part(skewed, 'times clock-skewed'),
  ];
  const lines =
    fleet === undefined
      ? [`${rows.length} device(s), ${online} online${parts.length > 0 ? `; ${parts.join(', ')}` : ''}`]
      : [`${fleet.total} device(s), ${fleet.online} online${parts.length > 0 ? `; of the ${rows.length} shown: ${parts.join(', ')}` : ''}`];
  for (const r of rows) {
    const says = [
      ...(r.dropped.count > 0 ? [`${r.dropped.count} points dropped on the device (last ${r.dropped.lastAt ?? 'unknown'})`] : []),
      ...(r.quarantined > 0 ? [`${r.quarantined} messages quarantined`] : []),
      ...(r.overQuota > 0 ? [`${r.overQuota} over quota`] : []),
      ...(r.clockSkewed > 0 ? [`${r.clockSkewed} clock-skewed`] : []),
    ];
    if (says.length > 0) lines.push(`${r.device}: ${says.join(', ')}`);
    if (r.desired?.error) lines.push(`${r.device}: desired serial ${r.desired.serial} ${r.desired.status}: ${r.desired.error}`);
    for (const m of r.models) if (m.error) lines.push(`${r.device}: ${m.name}:${m.version} ${m.state}: ${m.error}`);
  }
  return lines.map(terminalSafe);
}
