import { describe, expect, it } from 'vitest';
import { SHADOW_DEFAULTS, desiredSchema, shadowSchema } from '../protocol/desired.js';
import { parseTelemetryBatch } from '../protocol/reported.js';
import { validate } from '../protocol/validate.js';
import { expectError } from './helpers/protocol.js';

const envelope = { payloadType: 'application/vnd.edgefleet.model+json', payload: 'e30=', signatures: [] };
const doc = (model: Record<string, unknown>): unknown => ({
  schema: 1, target: { device: 'pi-1' }, serial: 1, issuedAt: '2026-01-01T00:00:00Z', expiresAt: '2027-01-01T00:00:00Z',
  models: [{ name: 'mnist', version: 4, manifest: envelope, ...model }],
});

describe('desired document: shadow (section 11)', () => {
  it('a revision-1 entry without shadow keeps working', () => {
    expect(validate(desiredSchema, doc({}), 'desired').models[0]?.shadow).toBeUndefined();
  });

  it('fills every field left out with its documented default', () => {
    expect(validate(desiredSchema, doc({ shadow: {} }), 'desired').models[0]?.shadow).toEqual(SHADOW_DEFAULTS);
    expect(validate(shadowSchema, { minSamples: 50, compare: 'allclose' }, 'shadow')).toEqual({ ...SHADOW_DEFAULTS, minSamples: 50, compare: 'allclose' });
  });

  it('reports every bad field at once, and refuses unknown ones rather than defaulting them', () => {
    const err = expectError(
      () => validate(desiredSchema, doc({ shadow: { sampleRate: 0, minSamples: 1.5, maxDurationS: -1, compare: 'mse', atol: -1, minAgreement: 2, onTimeout: 'wait', minSample: 10 } }), 'desired'),
      'MALFORMED',
      /desired is invalid/,
    );
    const problems = err.problems.join('\n');
    for (const field of ['sampleRate', 'minSamples', 'maxDurationS', 'compare', 'atol', 'minAgreement', 'onTimeout', 'minSample']) {
      expect(problems).toContain(field);
    }
  });
});

describe('telemetry: shadow points', () => {
  const point = {
    seq: 1301, ts: '2026-12-04T10:00:00Z', kind: 'shadow', model: 'mnist', version: 4, baseVersion: 3,
    samples: 180, agreed: 178, agreement: 0.9889, maxAbsDiff: 0.031,
    latencyMs: { p50: 0.5, p99: 1.2 }, baseLatencyMs: { p50: 0.4, p99: 1.0 }, verdict: null,
  };

  it("parses section 11's example, and a verdict", () => {
    const batch = parseTelemetryBatch(JSON.stringify({ schema: 1, device: 'pi-1', points: [point, { ...point, seq: 1302, verdict: 'rejected' }] }));
    expect(batch.points).toEqual([point, { ...point, seq: 1302, verdict: 'rejected' }]);
  });

  it('refuses a bad verdict or an agreement above 1', () => {
    expect(() => parseTelemetryBatch(JSON.stringify({ schema: 1, device: 'pi-1', points: [{ ...point, verdict: 'maybe' }] }))).toThrow(/verdict/);
    expect(() => parseTelemetryBatch(JSON.stringify({ schema: 1, device: 'pi-1', points: [{ ...point, agreement: 1.5 }] }))).toThrow(/agreement/);
  });
});
