/** Shared pieces of the telemetry benchmark (bench/telemetry.ts). */
import { spawnSync } from 'node:child_process';
import { statfs } from 'node:fs/promises';
import { pino } from 'pino';
import { configSchema } from '../agent/config/schema.js';
import type { NewPoint } from '../agent/telemetry/points.js';
import { mulberry32 } from '../models/onnx/zoo.js';
import { formatTime } from '../protocol/index.js';

export const silent = pino({ level: 'silent' });

/** The agent's telemetry defaults (buffer bounds, batch sizes, timers), from the config schema itself. */
export function telemetryDefaults(): ReturnType<typeof configSchema.parse>['telemetry'] {
  return configSchema.parse({ deviceId: 'bench' }).telemetry;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function medianOf(values: readonly number[]): number {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Median over rounds of a[r] ÷ b[r]: both ran in the same round, seconds apart. */
export function pairedRatio(a: readonly number[], b: readonly number[]): number {
  return medianOf(a.map((x, r) => x / (b[r] ?? NaN)));
}

/** min..max of the finite values. */
export function range(values: readonly number[], digits = 0): string {
  const finite = values.filter((v) => Number.isFinite(v));
  return finite.length === 0 ? '-' : `${Math.min(...finite).toFixed(digits)}..${Math.max(...finite).toFixed(digits)}`;
}

/** Nearest-rank quartiles of the finite values, as "q1..q3". */
export function iqr(values: readonly number[], digits = 3): string {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return '-';
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
  return `${at(0.25).toFixed(digits)}..${at(0.75).toFixed(digits)}`;
}

export async function fsType(dir: string): Promise<string> {
  const known: Record<number, string> = { 0xef53: 'ext4', 0x01021994: 'tmpfs', 0x58465342: 'xfs', 0x9123683e: 'btrfs', 0x794c7630: 'overlayfs', 0x6969: 'nfs', 0x2fc12fc1: 'zfs' };
  const { type } = await statfs(dir);
  return known[type] ?? `0x${type.toString(16)}`;
}

export function affinity(pid: number): string | undefined {
  const r = spawnSync('taskset', ['-c', '-p', String(pid)], { encoding: 'utf8' });
  return r.status === 0 ? /:\s*(\S+)\s*$/.exec(r.stdout.trim())?.[1] : undefined;
}

export function setAffinity(pid: number, cpus: string): boolean {
  return spawnSync('taskset', ['-a', '-c', '-p', cpus, String(pid)], { stdio: 'ignore' }).status === 0;
}

const round3 = (n: number): number => Math.round(n * 1000) / 1000;
const BASE_TS = Date.UTC(2025, 5, 1, 12, 0, 0);

/** Deterministic, realistic "inference" points (as InferenceRecorder.cut builds them), without seq. */
export function inferencePoints(n: number, seed = 1): NewPoint[] {
  const rand = mulberry32(seed);
  return Array.from({ length: n }, (_, i): NewPoint => {
    const p50 = round3(0.2 + rand() * 2);
    const p90 = round3(p50 * (1.2 + rand()));
    const p99 = round3(p90 * (1.1 + rand()));
    const count = 50 + Math.floor(rand() * 20_000);
    return {
      ts: formatTime(BASE_TS + i * 10_000),
      kind: 'inference',
      model: ['mnist', 'ocr-rec', 'resnet50-int8'][i % 3] as string,
      version: 1 + (i % 4),
      intervalS: 10,
      count,
      errors: Math.floor(rand() * 3),
      clientErrors: Math.floor(rand() * 2),
      latencyMs: { p50, p90, p99, max: round3(p99 * (1 + rand())), mean: round3(p50 * 1.1) },
    };
  });
}

/** Deterministic, realistic "health" points (as HealthSampler.sample builds them, no GPU), without seq. */
export function healthPoints(n: number, seed = 2): NewPoint[] {
  const rand = mulberry32(seed);
  return Array.from({ length: n }, (_, i): NewPoint => ({
    ts: formatTime(BASE_TS + i * 30_000),
    kind: 'health',
    cpuPct: Math.round(rand() * 1000) / 10,
    load1: Math.round(rand() * 400) / 100,
    memUsedBytes: 1_500_000_000 + Math.floor(rand() * 2_000_000_000),
    memTotalBytes: 8_229_117_952,
    tempC: Math.round((40 + rand() * 30) * 10) / 10,
    diskFreeBytes: 20_000_000_000 + Math.floor(rand() * 1e9),
    rssBytes: 180_000_000 + Math.floor(rand() * 50_000_000),
    uptimeS: 3600 + i * 30,
    systemUptimeS: 86_400 + i * 30,
    gpus: [],
  }));
}
