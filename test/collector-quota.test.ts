/**
 * The per-device limits as `edgefleet collect` takes them (issue 13 item 4):
 * flags read and checked (each bad value named), the defaults the same in the
 * code, the help and docs/collector.md, and a collector given limits on the
 * command line applies them against a real Mosquitto.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Collector } from '../fleet/collector/collector.js';
import { DEFAULT_QUOTAS } from '../fleet/collector/ingest-guard.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import { collect, quotaOptions } from '../fleet/commands/collect.js';
import { UsageError } from '../fleet/errors.js';
import { DEFAULT_TOPIC_ROOT, topics } from '../protocol/index.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

const ROOT = DEFAULT_TOPIC_ROOT;
const skip = mosquittoSkipReason();
const iso = (ms = Date.now()): string => new Date(ms).toISOString();

describe('edgefleet collect: per-device limits', () => {
  it('reads each flag, with sizes in bytes, KiB, MiB or GiB and durations in s, m, h, d', () => {
    expect(quotaOptions({})).toEqual({});
    expect(
      quotaOptions({
        'max-models': '8',
        'max-messages-per-minute': '120',
        'max-bytes-per-minute': '2MiB',
        'max-event-bytes': '4096',
        'max-clock-skew': '2m',
      }),
    ).toEqual({ maxModels: 8, messagesPerMinute: 120, bytesPerMinute: 2 * 1024 * 1024, maxEventBytes: 4096, maxSkewMs: 120_000 });
    expect(quotaOptions({ 'max-bytes-per-minute': '1GiB', 'max-event-bytes': '1MiB', 'max-clock-skew': '7d' })).toEqual({
      bytesPerMinute: 1024 ** 3, maxEventBytes: 1024 ** 2, maxSkewMs: 7 * 86_400_000,
    });
  });

  it.each([
    ['max-models', '0', '--max-models must be a whole number from 1 to 10000, got "0"'],
    ['max-models', '64.5', '--max-models must be a whole number from 1 to 10000, got "64.5"'],
    ['max-messages-per-minute', '-5', '--max-messages-per-minute must be a whole number from 10 to 1000000, got "-5"'],
    ['max-messages-per-minute', '1e3', '--max-messages-per-minute must be a whole number from 10 to 1000000, got "1e3"'],
    ['max-bytes-per-minute', '8MB', '--max-bytes-per-minute must be a size from 1MiB to 4GiB (bytes, or with KiB, MiB, GiB), got "8MB"'],
    ['max-bytes-per-minute', '5GiB', '--max-bytes-per-minute must be a size from 1MiB to 4GiB (bytes, or with KiB, MiB, GiB), got "5GiB"'],
    ['max-event-bytes', '100', '--max-event-bytes must be a size from 1KiB to 1MiB (bytes, or with KiB, MiB, GiB), got "100"'],
    ['max-clock-skew', '500ms', '--max-clock-skew must be a duration such as 30d, 12h or 90s, got "500ms"'],
    ['max-clock-skew', '0s', '--max-clock-skew must be a positive duration, got "0s"'],
    ['max-clock-skew', '2w', '--max-clock-skew must be from 1s to 7d, got "2w"'],
  ] as const)('--%s %s is refused: %s', (flag, value, message) => {
    expect(() => quotaOptions({ [flag]: value })).toThrow(new UsageError(message));
  });

  it('refuses a bad limit before connecting to anything', async () => {
    const io = { out: () => undefined, note: () => undefined, stderr: process.stderr, cwd: tmpdir() };
    await expect(collect.run(['--broker', 'mqtt://127.0.0.1:1', '--max-models', 'lots'], io)).rejects.toThrow(
      new UsageError('--max-models must be a whole number from 1 to 10000, got "lots"'),
    );
  });

  it('the help and docs/collector.md give the defaults the code has', () => {
    expect(DEFAULT_QUOTAS).toEqual({ maxModels: 64, messagesPerMinute: 600, bytesPerMinute: 48 * 1024 * 1024, maxEventBytes: 16 * 1024, maxSkewMs: 300_000 });
    const doc = readFileSync(join(import.meta.dirname, '..', 'docs', 'collector.md'), 'utf8');
    const rows: [string, string][] = [
      ['--max-models N', '64'],
      ['--max-messages-per-minute N', '600'],
      ['--max-bytes-per-minute SIZE', '48MiB'],
      ['--max-event-bytes SIZE', '16KiB'],
      ['--max-clock-skew D', '300s'],
    ];
    for (const [flag, value] of rows) {
      expect(doc).toContain(`| \`${flag}\` | ${value} |`);
      expect(collect.help).toContain(flag.split(' ')[0]);
      expect(collect.help).toContain(`default ${value}`);
    }
  });
});

describe.skipIf(skip)('limits given on the command line, against Mosquitto', () => {
  let broker: Mosquitto;
  let dir: string;
  beforeAll(async () => {
    broker = await startMosquitto();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-quota-'));
  }, 30_000);
  afterAll(async () => {
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('--max-models 2 and --max-clock-skew 1m: a third model is counted, not stored; a point 2 minutes off is stored at arrival', async () => {
    const store = new SqliteStore(join(dir, 'quota.db'));
    await store.init();
    const collector = new Collector({
      broker: { url: broker.url, topicRoot: ROOT, tls: {} },
      store,
      clientId: `collector-${Math.random().toString(16).slice(2)}`,
      shareGroup: `g-${Math.random().toString(16).slice(2)}`,
      sessionExpiryS: 0,
      retentionMs: null,
      log: pino({ level: 'silent' }),
      quotas: quotaOptions({ 'max-models': '2', 'max-clock-skew': '1m' }),
    });
    await collector.start();
    const pi = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
    try {
      const off = Date.now() + 120_000;
      const point = (seq: number, model: string, ts = iso()): Record<string, unknown> => ({
        seq, ts, kind: 'inference', model, version: 1, intervalS: 10, count: 1, errors: 0, latencyMs: null,
      });
      const points = [point(1, 'a'), point(2, 'b'), point(3, 'c'), point(4, 'a', iso(off))];
      const before = Date.now();
      await pi.publishAsync(topics.device(ROOT, 'pi-q', 'telemetry'), JSON.stringify({ schema: 1, device: 'pi-q', points }), { qos: 1 });
      for (let i = 0; i < 200 && collector.stats.batches === 0; i++) await new Promise((r) => setTimeout(r, 25));
      expect(collector.stats).toMatchObject({ batches: 1, overQuota: 1, clockSkewed: 1 });
      expect((await store.deviceModels('pi-q')).sort()).toEqual(['a', 'b']);
      const series = await store.series('pi-q', { from: 0, to: off + 60_000 });
      expect(series.inference.map((s) => s.model)).toEqual(['a', 'b', 'a']);
      const skewed = Date.parse(series.inference[2]?.ts ?? '');
      expect(skewed).toBeGreaterThanOrEqual(before - 1000);
      expect(skewed).toBeLessThan(off - 60_000);
    } finally {
      await pi.endAsync();
      await collector.stop();
      await store.close();
    }
  });
});
