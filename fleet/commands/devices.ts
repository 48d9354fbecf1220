/** `edgefleet devices`: what every device last reported (its retained state and status). */
import { parseArgs } from 'node:util';
import type { ReportedState, Status } from '../../protocol/index.js';
import { applyReportedState, byDevice, emptySummary, type DeviceSummary } from '../device-summary.js';
import { GROUP_RE, parseReportedState, parseStatus, parseTopic, parseTime, topics } from '../../protocol/index.js';
import { formatAge } from '../age.js';
import { intOption, parseOrUsage } from '../args.js';
import type { Command } from '../command.js';
import { UsageError, errorMessage } from '../errors.js';
import { BROKER_HELP, BROKER_OPTIONS, brokerSettings, withBroker } from '../mqtt.js';
import { formatTextTable, terminalSafe } from '../terminal-text.js';

const OPTIONS = {
  json: { type: 'boolean' },
  group: { type: 'string' },
  'wait-ms': { type: 'string' },
  ...BROKER_OPTIONS,
} as const;

/** A device as its retained messages tell it; `online` is null when no status is retained. */
export interface DeviceRow extends DeviceSummary {
  /** Time of the reported state, and of the status. */
  ts: string | null;
  statusTs: string | null;
}

export const devices: Command = {
  name: 'devices',
  summary: 'list devices with their online status, desired state and models',
  help: `usage: edgefleet devices --broker URL [--json] [--group G] [--wait-ms MS]

Reads the retained {root}/devices/+/state and {root}/devices/+/status messages
(PROTOCOL.md section 7) and prints one row per device: online, groups, the
desired state's serial and status, whether the device follows its own document
("own") or a group's ("group:NAME"), the trust version in force (with "expired"
or "error" when so), each model's version, state and execution provider, and
how long ago it last reported. --json gives the times as RFC 3339 and the
source as desired.source and desired.group. Problems devices report follow the table, trust
problems first: a device that cannot update its trust refuses new rollouts.

Options:
  --json        print the rows as a JSON array instead
  --group G     only devices that report being in group G
  --wait-ms MS  how long to collect retained messages (default 1000)

${BROKER_HELP}`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const waitMs = intOption(values['wait-ms'], 'wait-ms', 0, 600_000) ?? 1000;
    const group = values.group;
    if (group !== undefined && !GROUP_RE.test(group)) throw new UsageError(`--group "${group}" is not a group name`);
    const broker = await brokerSettings(values, { warn: io.note });
    const root = broker.topicRoot;
    const filters = [topics.allDevices(root, 'state'), topics.allDevices(root, 'status')];
    const retained = await withBroker(broker, (b) => b.collectRetained(filters, { quietMs: waitMs, maxMs: waitMs }));
    const rows = toRows(root, retained, io.note).filter((r) => group === undefined || r.groups.includes(group));
    if (values.json) {
      io.out(JSON.stringify(rows, null, 2));
      return;
    }
    if (rows.length === 0) {
      io.note(`no devices have reported on ${root}/devices/+/state or status${group === undefined ? '' : ` in group ${group}`}`);
      return;
    }
    io.out(formatTable(rows));
    for (const line of problems(rows)) io.out(line);
  },
};

export function toRows(root: string, retained: ReadonlyMap<string, Buffer>, warn: (line: string) => void): DeviceRow[] {
  const rows = new Map<string, DeviceRow>();
  const rowOf = (device: string): DeviceRow => {
    let row = rows.get(device);
    if (row === undefined) {
      row = { ...emptySummary(device), ts: null, statusTs: null };
      rows.set(device, row);
    }
    return row;
  };
  for (const [topic, payload] of retained) {
    const parsed = parseTopic(root, topic);
    if (parsed?.kind !== 'state' && parsed?.kind !== 'status') continue;
    try {
      // Parsed before the row is made, so a device that sent only garbage gets a warning, not an empty row.
      if (parsed.kind === 'status') {
        const status = parseStatus(payload);
        applyStatus(rowOf(parsed.deviceId), status);
      } else {
        const state = parseReportedState(payload);
        if (state.device !== parsed.deviceId) throw new Error(`it names device "${state.device}"`);
        applyState(rowOf(parsed.deviceId), state);
      }
    } catch (err) {
      warn(terminalSafe(`warning: ignoring the ${parsed.kind} of ${parsed.deviceId}: ${errorMessage(err)}`));
    }
  }
  return [...rows.values()].sort(byDevice);
}

function applyStatus(row: DeviceRow, status: Status): void {
  row.online = status.online;
  row.statusTs = status.ts ?? null;
}

function applyState(row: DeviceRow, state: ReportedState): void {
  applyReportedState(row, state);
  row.ts = state.ts;
}

function lastSeen(row: DeviceRow): string | null {
  const times = [row.ts, row.statusTs].filter((t): t is string => t !== null);
  return times.sort((a, b) => (parseTime(b) ?? 0) - (parseTime(a) ?? 0))[0] ?? null;
}

/** Which document the device's desired status is about: its own, or a group's. */
export function followsCell(desired: DeviceRow['desired']): string {
  if (desired === null) return '-';
  return desired.source === 'device' ? 'own' : `group:${desired.group ?? '?'}`;
}

function trustCell(trust: DeviceRow['trust'], now: number): string {
  if (trust === null) return '-';
  const notes = [...((parseTime(trust.expiresAt) ?? 0) <= now ? ['expired'] : []), ...(trust.error !== null ? ['error'] : [])];
  return [`v${trust.version}`, ...notes].join(' ');
}

function modelCell(m: ReportedState['models'][number]): string {
  const progress = m.state === 'downloading' ? ` ${Math.round(m.progress * 100)}%` : '';
  return `${m.name}:${m.version} ${m.state}${progress}${m.executionProvider ? ` ${m.executionProvider}` : ''}`;
}

export function formatTable(rows: readonly DeviceRow[], now = Date.now()): string {
  const header = ['DEVICE', 'ONLINE', 'GROUPS', 'DESIRED', 'FOLLOWS', 'TRUST', 'MODELS', 'LAST SEEN'];
  const cells = rows.map((r) => [
    r.device,
    r.online === null ? '?' : r.online ? 'yes' : 'no',
    r.groups.join(',') || '-',
    r.desired ? `${r.desired.serial} ${r.desired.status}` : '-',
    followsCell(r.desired),
    trustCell(r.trust, now),
    r.models.map(modelCell).join(', ') || '-',
    formatAge(lastSeen(r), now),
  ]);
  return formatTextTable(header, cells);
}

/** Errors devices report, in words an operator can act on; each line terminal-safe. */
export function problems(rows: readonly DeviceRow[]): string[] {
  const out: string[] = [];
  for (const r of rows) {
    if (r.trust?.error) out.push(`${r.device}: trust v${r.trust.version}: ${r.trust.error}`);
    if (r.desired?.error) out.push(`${r.device}: desired serial ${r.desired.serial} ${r.desired.status}: ${r.desired.error}`);
    for (const m of r.models) if (m.error) out.push(`${r.device}: ${m.name}:${m.version} ${m.state}: ${m.error}`);
  }
  return out.map(terminalSafe);
}
