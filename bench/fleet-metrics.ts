/**
 * What a Prometheus scrape of the collector's /metrics costs at fleet size:
 * the page rendered from synthetic fleet rows (two models, one GPU, one
 * group per device, as the simulator's devices), its size and series; and a
 * whole scrape (the SQLite store's fleet table read, then rendered) with the
 * devices stored through the store's own writes.
 *   FLEET_METRICS_SIZES=1000,10000   fleet sizes
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fleetMetricsSource, renderFleetMetrics } from '../fleet/collector/fleet-metrics.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { FleetRow } from '../fleet/collector/store.js';
import type { TelemetryPoint } from '../protocol/index.js';
import { formatTime } from '../protocol/index.js';
import { printTable, type Cell } from './table.js';

const RUNS = 7;

function syntheticRow(i: number, now: number): FleetRow {
  const ts = formatTime(now - 5_000);
  const device = `pi-${String(i).padStart(5, '0')}`;
  return {
    device, online: i % 50 !== 0, groups: [`group-${i % 4}`], desired: { source: 'group', group: `group-${i % 4}`, serial: 12, status: 'applied', error: null },
    models: [], agent: { version: '0.1.0', arch: 'arm64' }, trust: null,
    inference: ['mnist', 'kws'].map((model) => ({ model, version: 1 + (i % 3), ts, intervalS: 10, count: 200 + (i % 1000), errors: i % 7, p50: 0.8, p99: 3.1 })),
    health: { ts, cpuPct: 30, load1: 0.5, tempC: 55, memUsedBytes: 2e9, memTotalBytes: 8e9, gpus: [{ name: 'Orin', utilPct: 40, memUsedBytes: 1e9, memTotalBytes: 8e9, tempC: 50 }] },
    lastSeen: ts, dropped: { count: i % 10 === 0 ? 1200 : 0, lastAt: i % 10 === 0 ? ts : null }, outbox: { rows: 3, bytes: 1000 },
    quarantined: 0, overQuota: 0, clockSkewed: 0,
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

async function timed(fn: () => unknown): Promise<number> {
  const times: number[] = [];
  for (let k = 0; k < RUNS; k++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  return median(times);
}

/** Stores `n` devices (status, state, one batch of two inference points and a health point) through the store's writes. */
async function fill(store: SqliteStore, n: number, now: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const row = syntheticRow(i, now);
    await store.upsertStatus(row.device, { online: row.online ?? false }, now);
    await store.upsertState({
      schema: 1, device: row.device, groups: row.groups, ts: formatTime(now), desired: row.desired, models: [],
      agent: { version: '0.1.0', arch: 'arm64', startedAt: formatTime(now - 3_600_000), executionProviders: { available: ['cpu'], unavailable: {} } },
    }, now);
    const points = [
      ...row.inference.map((m, k) => ({ seq: k + 1, ts: m.ts, kind: 'inference', model: m.model, version: m.version, intervalS: 10, count: m.count, errors: m.errors,
        latencyMs: { p50: 0.8, p90: 1.2, p99: 3.1, max: 4, mean: 0.9 } })),
      { seq: 3, ts: row.lastSeen, kind: 'health', cpuPct: 30, load1: 0.5, memUsedBytes: 2e9, memTotalBytes: 8e9, tempC: 55, diskFreeBytes: 1e10, rssBytes: 1e8, uptimeS: 3600,
        gpus: row.health?.gpus ?? [], outboxRows: 3, outboxBytes: 1000 },
    ] as TelemetryPoint[];
    await store.insertPoints(row.device, points, now);
  }
}

export async function runFleetMetricsBench(): Promise<void> {
  const sizes = (process.env.FLEET_METRICS_SIZES ?? '1000,10000').split(',').map(Number);
  const now = Date.now();
  const rows: Cell[][] = [];
  for (const n of sizes) {
    const fleet = Array.from({ length: n }, (_, i) => syntheticRow(i, now));
    let page = '';
    const renderMs = await timed(() => (page = renderFleetMetrics({ rows: fleet, rollouts: [], now })));
    const series = page.split('\n').filter((l) => l !== '' && !l.startsWith('#')).length;
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-bench-metrics-'));
    const store = new SqliteStore(join(dir, 'fleet.db'));
    try {
      await store.init();
      await fill(store, n, now);
      const scrape = fleetMetricsSource(store);
      const scrapeMs = await timed(scrape);
      rows.push([n, series, (Buffer.byteLength(page) / 2 ** 20).toFixed(1), renderMs.toFixed(0), scrapeMs.toFixed(0)]);
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  }
  printTable(`collector /metrics at fleet size (median of ${RUNS})`, ['devices', 'series', 'page MiB', 'render ms', 'SQLite read + render ms'], rows);
}
