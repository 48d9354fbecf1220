import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { totalmem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { healthPointSchema } from '../protocol/index.js';
import { HealthSampler, type HealthSamplerOptions } from '../agent/telemetry/health.js';
import type { NewPoint } from '../agent/telemetry/points.js';

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

let dir: string;
const samplers: HealthSampler[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-health-'));
});
afterEach(async () => {
  for (const s of samplers.splice(0)) await s.stop();
  await rm(dir, { recursive: true, force: true });
});

function sampler(options: Partial<HealthSamplerOptions> = {}, points: NewPoint[] = []): HealthSampler {
  const s = new HealthSampler({
    sink: { append: (p) => points.push(...p) },
    schedule: '*/30 * * * * *',
    stateDir: dir,
    timeoutMs: 5000,
    logger,
    nvidiaSmi: null,
    ...options,
  });
  samplers.push(s);
  return s;
}

async function script(name: string, body: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, `#!/bin/sh\n${body}\n`);
  await chmod(path, 0o755);
  return path;
}

describe('HealthSampler', () => {
  it('samples this machine: every protocol field present and sane', async () => {
    const s = sampler();
    await s.start();
    const point = await s.sample();
    expect(healthPointSchema.safeParse({ seq: 1, ...point }).success).toBe(true);
    expect(point.timedOut).toBeUndefined();
    expect(point.cpuPct).toBeGreaterThanOrEqual(0);
    expect(point.cpuPct).toBeLessThanOrEqual(100);
    expect(point.load1).toBeGreaterThanOrEqual(0);
    expect(point.memTotalBytes).toBe(totalmem());
    expect(point.memUsedBytes).toBeGreaterThan(0);
    expect(point.memUsedBytes).toBeLessThan(point.memTotalBytes);
    expect(point.tempC === null || (point.tempC > -40 && point.tempC < 130)).toBe(true);
    expect(point.diskFreeBytes).toBeGreaterThan(0);
    expect(point.rssBytes).toBeGreaterThan(10 * 1024 * 1024);
    expect(point.rssBytes).toBe(Math.round(point.rssBytes));
    expect(point.uptimeS).toBeLessThanOrEqual(point.systemUptimeS);
    expect(point.gpus).toEqual([]);
  });

  it('does not wait for a slow systeminformation: fallbacks, and the point says what timed out', async () => {
    const s = sampler({ timeoutMs: 1 });
    await s.start();
    const started = performance.now();
    const point = await s.sample();
    expect(performance.now() - started).toBeLessThan(1000);
    expect(point.timedOut).toEqual(['systeminformation']);
    expect(point.memTotalBytes).toBe(totalmem());
    expect(point.cpuPct).toBeGreaterThanOrEqual(0);
    expect(point.tempC).toBeNull();
  });

  it('reads NVIDIA GPUs from nvidia-smi, and kills one that hangs', async () => {
    const smi = await script('nvidia-smi', 'echo "NVIDIA H100 80GB HBM3, 37, 1024, 81559, 45"\necho "NVIDIA H100 80GB HBM3, [N/A], 0, 81559, [N/A]"');
    const s = sampler({ nvidiaSmi: smi });
    await s.start();
    const point = await s.sample();
    expect(point.gpus).toEqual([
      { name: 'NVIDIA H100 80GB HBM3', utilPct: 37, memUsedBytes: 1024 * 1048576, memTotalBytes: 81559 * 1048576, tempC: 45 },
      { name: 'NVIDIA H100 80GB HBM3', utilPct: null, memUsedBytes: 0, memTotalBytes: 81559 * 1048576, tempC: null },
    ]);

    const hung = await script('nvidia-smi-hung', 'exec sleep 10');
    const hanging = sampler({ nvidiaSmi: hung, timeoutMs: 300 });
    await hanging.start();
    const started = performance.now();
    const slow = await hanging.sample();
    expect(performance.now() - started).toBeLessThan(2000);
    expect(slow.gpus).toEqual([]);
    expect(slow.timedOut).toContain('nvidia-smi');
  });

  it('reads a Jetson GPU from sysfs', async () => {
    const root = join(dir, 'root');
    const put = async (rel: string, text: string): Promise<void> => {
      await mkdir(join(root, rel, '..'), { recursive: true });
      await writeFile(join(root, rel), text);
    };
    await put('sys/devices/gpu.0/load', '437\n');
    await put('sys/class/thermal/thermal_zone0/type', 'CPU-therm\n');
    await put('sys/class/thermal/thermal_zone0/temp', '51000\n');
    await put('sys/class/thermal/thermal_zone1/type', 'GPU-therm\n');
    await put('sys/class/thermal/thermal_zone1/temp', '48500\n');
    await put('proc/device-tree/model', 'NVIDIA Jetson Xavier NX Developer Kit\0');
    const s = sampler({ sysRoot: root });
    await s.start();
    const point = await s.sample();
    expect(point.gpus).toEqual([{ name: 'NVIDIA Jetson Xavier NX Developer Kit', utilPct: 43.7, memUsedBytes: null, memTotalBytes: null, tempC: 48.5 }]);
  });

  it('samples on its cron schedule until stopped', async () => {
    const points: NewPoint[] = [];
    const s = sampler({ schedule: '* * * * * *' }, points);
    await s.start();
    const until = Date.now() + 5000;
    while (points.length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    expect(points.length).toBeGreaterThanOrEqual(2);
    expect(points.every((p) => p.kind === 'health')).toBe(true);
    await s.stop();
    const after = points.length;
    await new Promise((r) => setTimeout(r, 1500));
    expect(points.length).toBe(after);
  });

  it('refuses an invalid cron expression', () => {
    expect(() => sampler({ schedule: 'every 30 seconds' })).toThrow(/not a valid cron expression/);
  });
});
