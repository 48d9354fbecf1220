/**
 * Text devices report reaches the operator's terminal escaped: a device
 * cannot forge rows (newlines), send escape sequences (ESC, CSI, OSC, C1) or
 * reorder what is read (bidi overrides) through `edgefleet devices` or
 * `edgefleet status`. The status command runs as a real child process on a
 * real SQLite store.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import { formatTable, problems, toRows } from '../fleet/commands/devices.js';
import { formatStatusNotes, formatStatusTable } from '../fleet/commands/status.js';
import { formatTextTable, terminalSafe } from '../fleet/terminal-text.js';
import { reportedStateSchema, telemetryBatchSchema } from '../protocol/index.js';
import { runEdgefleet, type CliRun } from './helpers/child.js';

const ESC = '\u001b';
/** What a hostile device puts in its text: a forged row, colour, a window title, a C1 CSI, a right-to-left override, a bell. */
const HOSTILE = `boom\npi-999  yes  lab  1 applied\r${ESC}[31mRED${ESC}]0;owned\u0007\u009b2J\u202eevil\u2066x\u0000\u007f`;
/** Nothing a terminal acts on: no control character, no bidi control, no line break of any kind. */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/;

function hostileState(device: string): unknown {
  const ts = new Date().toISOString();
  return reportedStateSchema.parse({
    schema: 1, device, groups: ['lab'], ts,
    desired: { source: 'device', serial: 3, status: 'failed', error: HOSTILE },
    trust: { version: 1, expiresAt: '2036-01-01T00:00:00Z', error: HOSTILE },
    models: [{ name: 'mnist', version: 1, state: 'failed', labels: [], executionProvider: HOSTILE, sha256: null, progress: 1, error: HOSTILE }],
    agent: { version: HOSTILE, arch: 'arm64', startedAt: ts, executionProviders: { available: ['cpu'], unavailable: {} } },
  });
}

/** Every printed line is either the header, a row of a known device, or a problem line of one; none carries a control character. */
function expectSafeLines(text: string, devices: string[]): void {
  expect(text).not.toMatch(CONTROL);
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('DEVICE ')) continue;
    expect(devices.some((d) => line.startsWith(d)) || /^\d+ device\(s\)/.test(line), line).toBe(true);
  }
}

describe('terminalSafe', () => {
  it('escapes C0, DEL, C1, line separators, bidi and zero-width controls, and the backslash, visibly', () => {
    expect(terminalSafe('plain text: ok, ü, 温度, 😀')).toBe('plain text: ok, ü, 温度, 😀');
    expect(terminalSafe('a\nb\rc\td')).toBe('a\\nb\\rc\\td');
    expect(terminalSafe(`${ESC}[2J${ESC}]8;;http://x${ESC}\\`)).toBe('\\e[2J\\e]8;;http://x\\e\\\\');
    expect(terminalSafe('\u0000\u0007\u007f\u0085\u009b\u009d')).toBe('\\x00\\x07\\x7f\\x85\\x9b\\x9d');
    expect(terminalSafe('\u202eabc\u202c \u2066\u2069 \u200f\u061c \u2028\u2029 \u200b\ufeff')).toBe(
      '\\u202eabc\\u202c \\u2066\\u2069 \\u200f\\u061c \\u2028\\u2029 \\u200b\\ufeff',
    );
    // An escape the device wrote itself cannot pass for one we made.
    expect(terminalSafe('\\e[31m')).toBe('\\\\e[31m');
    expect(terminalSafe(HOSTILE)).not.toMatch(CONTROL);
  });

  it('formatTextTable pads on what is printed, so escaped cells keep the columns aligned', () => {
    const text = formatTextTable(['A', 'B'], [['x\ny', '1'], ['long-value', '2']]);
    const lines = text.split('\n');
    expect(lines).toEqual(['A           B', 'x\\ny        1', 'long-value  2']);
  });
});

describe('edgefleet devices', () => {
  it('prints a hostile state escaped: one row per device, no escape sequence reaches the terminal', () => {
    const retained = new Map([
      ['edgefleet/devices/pi-001/state', Buffer.from(JSON.stringify(hostileState('pi-001')))],
      ['edgefleet/devices/pi-001/status', Buffer.from(JSON.stringify({ online: true }))],
      ['edgefleet/devices/pi-002/status', Buffer.from(JSON.stringify({ online: false }))],
      // Invalid: the warning quotes the device's own text (zod echoes it), escaped too.
      ['edgefleet/devices/pi-003/state', Buffer.from(JSON.stringify({ schema: 1, device: `x\n${ESC}[2J` }))],
    ]);
    const warnings: string[] = [];
    const rows = toRows('edgefleet', retained, (line) => warnings.push(line));
    const table = formatTable(rows);
    const lines = table.split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[1]).toMatch(/^pi-001\s+yes\s+lab\s+3 failed\s+own\s+v1 error\s+mnist:1 failed boom\\npi-999 {2}yes {2}lab {2}1 applied\\r\\e\[31mRED/);
    expect(lines[2]).toMatch(/^pi-002\s+no\s/);
    expectSafeLines(table, ['pi-001', 'pi-002']);
    const said = problems(rows);
    expect(said).toHaveLength(3);
    for (const line of said) expect(line).toMatch(/^pi-001: .*boom\\npi-999 .*\\e\[31mRED\\e\]0;owned\\x07\\x9b2J\\u202eevil\\u2066x\\x00\\x7f$/);
    expectSafeLines(said.join('\n'), ['pi-001']);
    expect(warnings.join('\n')).not.toMatch(CONTROL);
  });
});

describe('edgefleet status', () => {
  let dir: string;
  let db: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-status-'));
    db = join(dir, 'fleet.db');
    const store = new SqliteStore(db);
    await store.init();
    const now = Date.now();
    await store.upsertState(hostileState('pi-001') as never, now);
    await store.upsertStatus('pi-001', { online: true }, now);
    await store.upsertStatus('pi-002', { online: false }, now);
    const ts = new Date(now).toISOString();
    const batch = telemetryBatchSchema.parse({
      schema: 1, device: 'pi-001',
      points: [
        { seq: 1, ts, kind: 'dropped', count: 120, oldestSeq: 2, newestSeq: 121, reason: HOSTILE },
        { seq: 122, ts, kind: 'health', cpuPct: 10, load1: 0.1, memUsedBytes: 1, memTotalBytes: 2, tempC: null, diskFreeBytes: 1,
          rssBytes: 1, uptimeS: 1, gpus: [], outboxRows: 40, outboxBytes: 4096 },
      ],
    });
    await store.insertPoints('pi-001', batch.points, now);
    await store.addCounts(new Map([['pi-002', { quarantined: 2, overQuota: 5, clockSkewed: 1 }]]));
    await store.close();
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('formats the new per-device figures in columns and notes', async () => {
    const store = new SqliteStore(db);
    await store.init();
    const rows = await store.fleetStatus();
    await store.close();
    const table = formatStatusTable(rows);
    expect(table.split('\n')[0]).toMatch(/^DEVICE\s+ONLINE\s+GROUPS\s+DESIRED\s+MODELS\s+P50 MS\s+P99 MS\s+ERRORS\s+CPU %\s+TEMP C\s+DROPPED\s+OUTBOX\s+LAST SEEN$/);
    expect(table.split('\n')[1]).toMatch(/\s120\s+40\/4\.0K\s/);
    const notes = formatStatusNotes(rows);
    expect(notes[0]).toBe('2 device(s), 1 online; 120 points dropped by the device on 1 device(s), 40 points waiting in device outboxes on 1 device(s), '
      + '2 messages quarantined on 1 device(s), 5 messages or points over quota on 1 device(s), 1 times clock-skewed on 1 device(s)');
    expect(notes[1]).toMatch(/^pi-001: 120 points dropped on the device \(last \S+\)$/);
    expect(notes[2]).toMatch(/^pi-001: desired serial 3 failed: boom\\npi-999/);
    expect(notes[3]).toMatch(/^pi-001: mnist:1 failed: boom\\npi-999/);
    expect(notes[4]).toBe('pi-002: 2 messages quarantined, 5 over quota, 1 clock-skewed');
  });

  const status = (...args: string[]): Promise<CliRun> => runEdgefleet(['status', '--db', `sqlite:${db}`, ...args]);

  it('prints a hostile state escaped, as a real child process', async () => {
    const run = await status();
    expect(run.code, run.stderr).toBe(0);
    expectSafeLines(run.stdout, ['pi-001', 'pi-002']);
    const lines = run.stdout.trim().split('\n');
    expect(lines[1]).toContain('mnist:1 failed');
    expect(lines[1]).toMatch(/^pi-001\s+yes\s+lab\s+3 failed\s/);
    expect(lines[2]).toMatch(/^pi-002\s+no\s/);
    expect(lines).toContain('pi-002: 2 messages quarantined, 5 over quota, 1 clock-skewed');
    const said = lines.filter((l) => l.startsWith('pi-001: desired') || l.startsWith('pi-001: mnist'));
    expect(said).toHaveLength(2);
    for (const line of said) expect(line).toMatch(/boom\\npi-999 .*\\e\[31mRED\\e\]0;owned\\x07\\x9b2J\\u202eevil\\u2066x\\x00\\x7f$/);
  });

  it('--sort, --desc and --limit show the worst devices of a large fleet from the store\'s page query', async () => {
    const run = await status('--sort', 'dropped', '--desc', '--limit', '1');
    expect(run.code, run.stderr).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines[1]).toMatch(/^pi-001\s/);
    expect(lines[2]).toBe('');
    expect(lines[3]).toBe('showing 1 of 2 devices, by dropped, highest first (--limit N or --all for more)');
    // The fleet line counts the whole fleet; the figures after it are the page's.
    expect(lines[4]).toMatch(/^2 device\(s\), \d online; of the 1 shown: /);
    expect(lines.some((l) => l.startsWith('pi-002'))).toBe(false);
    const all = await status('--sort', 'online');
    expect(all.stdout.split('\n').filter((l) => /^pi-00\d\s/.test(l)).map((l) => l.slice(0, 6))).toEqual(['pi-002', 'pi-001']);
    const bad = await status('--sort', 'cpu');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--sort must be one of device, lastSeen, online, errors, p99, dropped, got "cpu"');
    expect((await status('--desc')).stderr).toContain('--desc needs --sort');
    expect((await status('--all', '--limit', '5')).stderr).toContain('--all and --limit do not go together');
    const every = await status('--all');
    expect(every.stdout.split('\n').filter((l) => /^pi-00\d\s/.test(l))).toHaveLength(2);
  });
});
