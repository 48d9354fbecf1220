import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { inferencePointSchema } from '../protocol/index.js';
import { AgentDatabase } from '../agent/store/database.js';
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import type { AgentInferencePoint } from '../agent/telemetry/points.js';
import { InferenceRecorder } from '../agent/telemetry/recorder.js';

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

let dir: string;
let db: AgentDatabase;
let outbox: TelemetryOutbox;
let recorder: InferenceRecorder;

beforeEach(async () => {
  vi.useFakeTimers({ now: new Date('2026-03-01T12:00:00Z') });
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-recorder-'));
  db = AgentDatabase.open(join(dir, 'agent.db'));
  outbox = new TelemetryOutbox({ database: () => db, maxRows: 10_000, maxBytes: 1 << 26, logger });
  await outbox.start();
  recorder = new InferenceRecorder({ sink: outbox, intervalS: 10, logger });
  await recorder.start();
});
afterEach(async () => {
  vi.useRealTimers();
  await recorder.stop();
  db.close();
  await rm(dir, { recursive: true, force: true });
});

/** Every point in the outbox, parsed, in seq order. */
function points(): AgentInferencePoint[] {
  return (db.db.prepare('SELECT body FROM telemetry_outbox ORDER BY seq').all() as { body: string }[]).map((r) => JSON.parse(r.body));
}

describe('InferenceRecorder', () => {
  it('cuts one point per model version per interval, with counts and latency percentiles', () => {
    for (let i = 1; i <= 100; i++) recorder.record('mnist', 3, 'ok', i / 10); // 0.1 .. 10 ms
    recorder.record('mnist', 3, 'model-fault', 50);
    recorder.record('mnist', 3, 'client-input', 0.05);
    recorder.record('mnist', 4, 'ok', 1);
    recorder.record('ocr', 1, 'overload', 2);
    vi.advanceTimersByTime(9_999);
    expect(points()).toEqual([]);
    vi.advanceTimersByTime(1);

    const cut = points();
    expect(cut).toHaveLength(3);
    for (const p of cut) expect(inferencePointSchema.safeParse(p).success).toBe(true);
    const v3 = cut.find((p) => p.model === 'mnist' && p.version === 3);
    expect(v3).toMatchObject({ seq: 1, ts: '2026-03-01T12:00:10.000Z', kind: 'inference', intervalS: 10, count: 102, errors: 1, clientErrors: 1 });
    expect(v3?.latencyMs?.max).toBe(50);
    // Exact: the 51st, 92nd and 101st of the 102 sorted values; the histogram is within 1 %.
    expect(Math.abs((v3?.latencyMs?.p50 ?? 0) / 5 - 1)).toBeLessThan(0.01);
    expect(Math.abs((v3?.latencyMs?.p90 ?? 0) / 9.1 - 1)).toBeLessThan(0.01);
    expect(Math.abs((v3?.latencyMs?.p99 ?? 0) / 10 - 1)).toBeLessThan(0.01);
    expect(v3?.latencyMs?.mean).toBeCloseTo((5050 / 10 + 50 + 0.05) / 102, 3);
    expect(cut.find((p) => p.version === 4)).toMatchObject({ count: 1, errors: 0, latencyMs: { p50: 1, max: 1 } });
    expect(cut.find((p) => p.model === 'ocr')).toMatchObject({ count: 1, errors: 1, clientErrors: 0 });
  });

  it('counts each failure by its kind: the client\'s input apart, every other kind in errors', () => {
    for (const outcome of ['ok', 'client-input', 'client-input', 'model-fault', 'overload', 'internal'] as const) recorder.record('mnist', 1, outcome, 1);
    vi.advanceTimersByTime(10_000);
    expect(points()).toMatchObject([{ count: 6, errors: 3, clientErrors: 2 }]);
  });

  it('starts each interval afresh and writes nothing for an idle one', () => {
    recorder.record('mnist', 1, 'ok', 1);
    vi.advanceTimersByTime(10_000);
    vi.advanceTimersByTime(10_000); // idle: no point
    recorder.record('mnist', 1, 'ok', 3);
    recorder.record('mnist', 1, 'ok', 3);
    vi.advanceTimersByTime(10_000);
    const all = points();
    expect(all.map((p) => [p.seq, p.count, p.latencyMs?.max, p.ts])).toEqual([
      [1, 1, 1, '2026-03-01T12:00:10.000Z'],
      [2, 2, 3, '2026-03-01T12:00:30.000Z'],
    ]);
  });

  it('cuts a final, shorter point on stop', async () => {
    recorder.record('mnist', 1, 'ok', 1);
    vi.advanceTimersByTime(10_000);
    vi.advanceTimersByTime(2_500);
    recorder.record('mnist', 1, 'ok', 2);
    await recorder.stop();
    const all = points();
    expect(all).toHaveLength(2);
    expect(all[1]).toMatchObject({ intervalS: 2.5, count: 1 });
    vi.advanceTimersByTime(60_000); // no timer left behind
    expect(points()).toHaveLength(2);
  });

  it('keeps serving when the sink fails: the points of that interval are lost and logged', () => {
    const failing = new InferenceRecorder({
      sink: {
        append: () => {
          throw new Error('disk full');
        },
      },
      intervalS: 10,
      logger,
    });
    failing.record('mnist', 1, 'ok', 1);
    expect(() => failing.cut()).not.toThrow();
    failing.record('mnist', 1, 'ok', 1);
  });
});
