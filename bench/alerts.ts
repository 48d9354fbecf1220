/**
 * The built-in alert evaluator at fleet scale (issue 15): N devices in a
 * SQLite store (status, reported state, a health point and an inference
 * interval each), the eight default rules, and:
 *   - a quiet evaluation (nothing changes: one read of the fleet, no write),
 *   - a storm: 10 % of the boards run hot at once (that many alerts fire in
 *     one transaction, one outbox row each),
 *   - delivering those notifications to a local webhook answering 200
 *     (batches of 100 alerts per message),
 *   - the evaluation after (the alerts firing, nothing new).
 * Reported: milliseconds per step and the alert rows written.
 *
 * Settings (environment):
 *   ALERTS_BENCH_DEVICES=1000,10000   fleet sizes
 * Run alone: npm run bench -- --only alerts
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { loadRules } from '../fleet/alerts/rules.js';
import { AlertService } from '../fleet/alerts/service.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import { formatTime, reportedStateSchema, type TelemetryPoint } from '../protocol/index.js';
import { fmt, printTable } from './table.js';

const log = pino({ level: 'silent' });

function points(seq: number, at: number, tempC: number): TelemetryPoint[] {
  const ts = formatTime(at);
  return [
    { kind: 'inference', seq, ts, model: 'mnist', version: 3, intervalS: 10, count: 500, errors: 0, latencyMs: { p50: 1, p90: 2, p99: 3, max: 4, mean: 1.5 } },
    { kind: 'health', seq: seq + 1, ts, cpuPct: 20, load1: 0.5, memUsedBytes: 1e8, memTotalBytes: 1e9, tempC, diskFreeBytes: 1e9, rssBytes: 1e7, uptimeS: 100, gpus: [] },
  ];
}

/** Writes `devices` boards, in groups of 500 so one commit covers each group. */
async function fill(store: SqliteStore, devices: readonly string[], now: number): Promise<void> {
  for (let i = 0; i < devices.length; i += 500) {
    await Promise.all(devices.slice(i, i + 500).map(async (device) => {
      await store.upsertStatus(device, { online: true }, now);
      await store.upsertState(reportedStateSchema.parse({
        schema: 1, device, groups: ['bench'], ts: formatTime(now), desired: { source: 'group', group: 'bench', serial: 1, status: 'applied', error: null },
        models: [{ name: 'mnist', version: 3, state: 'serving', labels: [], executionProvider: 'cpu', sha256: null, progress: 1, error: null }],
        agent: { version: '0.1.0', arch: 'arm64', startedAt: formatTime(now), executionProviders: { available: ['cpu'], unavailable: {} } },
      }), now);
      await store.insertPoints(device, points(1, now, 50), now);
    }));
  }
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

async function runSize(n: number): Promise<(string | number)[]> {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-alerts-bench-'));
  let taken = 0;
  const receiver = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      taken++;
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const store = new SqliteStore(join(dir, 'bench.db'));
  try {
    await store.init();
    const now = Date.now();
    const devices = Array.from({ length: n }, (_, i) => `d-${String(i).padStart(5, '0')}`);
    await fill(store, devices, now);
    const rules = await loadRules('provisioning/alerts/edgefleet-alerts.yaml');
    rules.receivers = [{ name: 'bench', url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/`, headers: {}, timeoutMs: 10_000 }];
    // Temperature at once, so the storm fires in one evaluation.
    rules.rules = rules.rules.map((r) => (r.alert === 'EdgefleetTemperatureHigh' ? { ...r, forMs: 0 } : r));
    const svc = new AlertService({ store, rules, log, holder: 'bench' });
    await svc.tick(now);
    const quiet = await timed(() => svc.tick(now + 1000));
    const hot = devices.filter((_, i) => i % 10 === 0);
    for (let i = 0; i < hot.length; i += 500) await Promise.all(hot.slice(i, i + 500).map((d) => store.insertPoints(d, points(3, now + 2000, 92), now + 2000)));
    const storm = await timed(() => svc.tick(now + 3000));
    const delivery = await timed(() => svc.deliver(now + 3000));
    const after = await timed(() => svc.tick(now + 4000));
    const firing = (await store.alerts.active()).length;
    await svc.stop();
    return [n, fmt(quiet, 0), fmt(storm, 0), firing, fmt(delivery, 0), taken, fmt(after, 0)];
  } finally {
    await store.close();
    receiver.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export async function runAlertsBench(): Promise<void> {
  const sizes = (process.env.ALERTS_BENCH_DEVICES ?? '1000,10000').split(',').map(Number);
  const rows: (string | number)[][] = [];
  for (const n of sizes) rows.push(await runSize(n));
  printTable(
    'Alert evaluator (SQLite, eight default rules): ms per evaluation; storm = 10 % of boards hot at once',
    ['devices', 'quiet ms', 'storm ms', 'alerts fired', 'deliver ms', 'webhook messages', 'after ms'],
    rows,
  );
}
