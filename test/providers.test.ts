import { describe, expect, it } from 'vitest';
import { loadOrt } from '../agent/runtime/ort.js';
import { probeProviders } from '../agent/runtime/providers.js';
import { createSession } from '../agent/runtime/session.js';
import { mlpModel } from '../models/onnx/zoo.js';

const options = { executionProviders: ['cpu' as const], intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const, warmupRuns: 0, ortLogLevel: 'fatal' as const };

describe('execution provider probe', () => {
  it('finds CPU and reports why the accelerators of the bundled build are unavailable', async () => {
    const ort = await loadOrt();
    const report = await probeProviders(ort, ['tensorrt', 'cuda', 'xnnpack', 'cpu']);
    expect(report.available).toEqual(['cpu']);
    expect(Object.keys(report.unavailable).sort()).toEqual(['cuda', 'tensorrt', 'xnnpack']);
    expect(report.unavailable.xnnpack).toMatch(/not built into/);
    expect(report.unavailable.cuda).toMatch(/could not be loaded|Failed/);
  });

  it('always keeps CPU as the floor even when it is not configured', async () => {
    const report = await probeProviders(await loadOrt(), ['xnnpack']);
    expect(report.available).toEqual(['cpu']);
  });

  it('falls through the chain to the provider that loads the model', async () => {
    const ort = await loadOrt();
    const fallbacks: string[] = [];
    // 'cuda' is listed as available here on purpose to exercise the fall-through.
    const session = await createSession(ort, mlpModel(), ['cuda', 'cpu'], options, (ep) => fallbacks.push(ep));
    expect(session.executionProvider).toBe('cpu');
    expect(fallbacks).toEqual(['cuda']);
    expect(session.inputs).toEqual([{ name: 'x', datatype: 'FP32', shape: [-1, 784] }]);
    await session.release();
  });

  it('refuses bytes that are not a model with a clear error', async () => {
    await expect(createSession(await loadOrt(), new Uint8Array([1, 2, 3]), ['cpu'], options)).rejects.toThrow(/could not load the model/);
  });
});
