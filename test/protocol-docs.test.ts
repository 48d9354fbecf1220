import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { verifyDesired } from '../protocol/desired.js';
import type { DesiredContext } from '../protocol/desired.js';
import { signEnvelope } from '../protocol/dsse.js';
import { generateKeyPair } from '../protocol/keys.js';
import type { KeyPair } from '../protocol/keys.js';
import { manifestSchema, verifyManifest } from '../protocol/manifest.js';
import type { ManifestExpectation } from '../protocol/manifest.js';
import { parseTime, parseTopic, topics } from '../protocol/names.js';
import { parseTelemetryBatch, parseReportedState } from '../protocol/reported.js';
import { compareSemver } from '../protocol/semver.js';
import { buildTrustDocument, loadTrust, PAYLOAD_TYPES } from '../protocol/trust.js';
import { validate } from '../protocol/validate.js';
import { expectError } from './helpers/protocol.js';

const hex = (s: string): string => createHash('sha256').update(s).digest('hex');
const sign = (type: string, doc: unknown, keys: KeyPair[]): unknown =>
  signEnvelope(type, Buffer.from(JSON.stringify(doc)), keys);

const root = generateKeyPair();
const modelsKey = generateKeyPair();
const rolloutKey = generateKeyPair();
const trust = loadTrust(
  buildTrustDocument({
    version: 1,
    expiresAt: '2036-01-01T00:00:00Z',
    roles: {
      root: { publicKeys: [root.publicKey], threshold: 1 },
      models: { publicKeys: [modelsKey.publicKey], threshold: 1 },
      rollout: { publicKeys: [rolloutKey.publicKey], threshold: 1 },
    },
  }),
);
const NOW = new Date('2026-11-22T00:00:00Z');

function manifest(): Record<string, unknown> {
  return {
    schema: 1,
    name: 'mnist',
    version: 3,
    createdAt: '2026-11-21T08:00:00Z',
    expiresAt: '2027-11-21T08:00:00Z',
    artifact: { format: 'onnx', size: 103424, sha256: hex('file'), blockSize: 65536, blockSha256: [hex('0'), hex('1')] },
    quantization: 'int8',
    compatibility: { arch: ['arm64', 'x64'], minAgentVersion: '0.1.0' },
    runtime: { executionProviders: ['tensorrt', 'cuda', 'cpu'], batching: { maxBatchSize: 32, maxQueueDelayMs: 2 } },
    selfTest: {
      inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 4], data: [[0, 0.5, 1, 2]] }],
      outputs: [{ name: 'probs', datatype: 'FP32', shape: [1, 2], data: [0.1, 0.9] }],
    },
  };
}
const expectation: ManifestExpectation = { name: 'mnist', version: 3, now: NOW, arch: 'arm64', agentVersion: '0.1.0' };

describe('manifest', () => {
  it('verifies a good manifest and applies schema defaults', () => {
    const m = verifyManifest(trust, sign(PAYLOAD_TYPES.model, manifest(), [modelsKey]), expectation);
    expect(m.artifact.blockSha256).toHaveLength(2);
    expect(m.selfTest?.atol).toBe(1e-4);
    const minimal = manifest();
    delete minimal.expiresAt;
    delete minimal.compatibility;
    delete minimal.runtime;
    delete minimal.selfTest;
    expect(verifyManifest(trust, sign(PAYLOAD_TYPES.model, minimal, [modelsKey]), expectation).name).toBe('mnist');
  });

  it('reports every bad field at once', () => {
    const bad = manifest();
    Object.assign(bad, { name: 'MNIST', version: 0, createdAt: 'yesterday', quantization: '' });
    bad.artifact = { format: 'tflite', size: 10, sha256: 'ABC', blockSize: 512, blockSha256: ['xyz'] };
    bad.compatibility = { arch: ['amd64'], minAgentVersion: 'v1' };
    bad.selfTest = { inputs: [{ name: 'x', datatype: 'FP33', shape: [2], data: [1] }], outputs: [{ name: 'y', datatype: 'INT8', shape: [2], data: [1.5] }] };
    const err = expectError(() => verifyManifest(trust, sign(PAYLOAD_TYPES.model, bad, [modelsKey]), expectation), 'MALFORMED', /model manifest is invalid/);
    const fields = err.problems.map((p) => p.slice(0, p.indexOf(':')));
    expect(fields).toEqual(
      expect.arrayContaining([
        'name', 'version', 'createdAt', 'quantization', 'artifact.format', 'artifact.sha256', 'artifact.blockSize',
        'artifact.blockSha256[0]', 'compatibility.arch[0]', 'compatibility.minAgentVersion', 'selfTest.inputs[0].datatype',
        'selfTest.outputs[0].data',
      ]),
    );
    expect(err.message).toMatch(/blockSize must be at least 1024/);
    expect(err.message).toMatch(/must be one of Node's process.arch values/);
  });

  it('rejects a blockSha256 count that does not match ceil(size / blockSize)', () => {
    const bad = manifest();
    bad.artifact = { ...(bad.artifact as object), blockSha256: [hex('0')] };
    const err = expectError(() => verifyManifest(trust, sign(PAYLOAD_TYPES.model, bad, [modelsKey]), expectation), 'MALFORMED', /blockSha256: has 1 entries, expected ceil\(size \/ blockSize\) = 2/);
    expect(err.problems).toHaveLength(1);
    expect(() => validate(manifestSchema, { ...bad, artifact: { ...(bad.artifact as object), blockSize: 131073 } }, 'm')).toThrow(/at most 131072/);
  });

  it('rejects an expired manifest', () => {
    const env = sign(PAYLOAD_TYPES.model, manifest(), [modelsKey]);
    expectError(() => verifyManifest(trust, env, { ...expectation, now: new Date('2028-01-01T00:00:00Z') }), 'EXPIRED', /mnist version 3 expired at 2027-11-21T08:00:00Z/);
  });

  it('rejects a wrong arch and a too old agent', () => {
    const env = sign(PAYLOAD_TYPES.model, manifest(), [modelsKey]);
    expectError(() => verifyManifest(trust, env, { ...expectation, arch: 'riscv64' }), 'INCOMPATIBLE', /supports arch arm64, x64; this device is riscv64/);
    const needsNew = { ...manifest(), compatibility: { minAgentVersion: '0.10.0' } };
    expectError(() => verifyManifest(trust, sign(PAYLOAD_TYPES.model, needsNew, [modelsKey]), { ...expectation, agentVersion: '0.9.9' }), 'INCOMPATIBLE', /needs agent 0.10.0 or later; this agent is 0.9.9/);
  });

  it('rejects a manifest for another name or version, or signed by the wrong role', () => {
    const env = sign(PAYLOAD_TYPES.model, manifest(), [modelsKey]);
    expectError(() => verifyManifest(trust, env, { ...expectation, version: 4 }), 'MISMATCH', /manifest is for mnist version 3 but the desired entry names mnist version 4/);
    const byRollout = sign(PAYLOAD_TYPES.model, manifest(), [rolloutKey]);
    expectError(() => verifyManifest(trust, byRollout, expectation), 'THRESHOLD', /not trusted for models/);
  });
});

function desired(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    schema: 1,
    target: { device: 'pi-001' },
    serial: 42,
    issuedAt: '2026-11-21T08:00:00Z',
    expiresAt: '2026-12-21T08:00:00Z',
    models: [{ name: 'mnist', version: 3, labels: ['stable'], manifest: sign(PAYLOAD_TYPES.model, manifest(), [modelsKey]) }],
    ...overrides,
  };
}
const ctx: DesiredContext = { topicTarget: { device: 'pi-001' }, deviceId: 'pi-001', groups: ['lab', 'eu'], lastSerial: 41, now: NOW };
const signDesired = (doc: unknown): unknown => sign(PAYLOAD_TYPES.desired, doc, [rolloutKey]);

describe('desired state', () => {
  it('accepts a device document and a group document for one of its groups', () => {
    const d = verifyDesired(trust, signDesired(desired()), ctx);
    expect(d.serial).toBe(42);
    const first = d.models[0];
    expect(first && verifyManifest(trust, first.manifest, expectation).version).toBe(3);
    const g = verifyDesired(trust, signDesired(desired({ target: { group: 'eu' } })), { ...ctx, topicTarget: { group: 'eu' }, lastSerial: undefined });
    expect(g.target).toEqual({ group: 'eu' });
  });

  it('rejects a document for another device, and one on another target topic', () => {
    const other = signDesired(desired({ target: { device: 'pi-002' } }));
    const err = expectError(() => verifyDesired(trust, other, { ...ctx, topicTarget: { device: 'pi-002' } }), 'WRONG_TARGET', /targets device "pi-002", not device "pi-001"/);
    expect(err.serial).toBe(42);
    expectError(() => verifyDesired(trust, other, ctx), 'WRONG_TARGET', /targets device "pi-002" but came on the topic of device "pi-001"/);
  });

  it('tells a group target from a device target', () => {
    const group = signDesired(desired({ target: { group: 'lab' } }));
    expectError(() => verifyDesired(trust, group, ctx), 'WRONG_TARGET', /targets group "lab" but came on the topic of device "pi-001"/);
    expectError(() => verifyDesired(trust, group, { ...ctx, topicTarget: { group: 'lab' }, groups: ['eu'] }), 'WRONG_TARGET', /targets group "lab", not device "pi-001" or its groups \[eu\]/);
    // A group named like the device is still a group.
    const sameName = signDesired(desired({ target: { group: 'pi-001' } }));
    expectError(() => verifyDesired(trust, sameName, ctx), 'WRONG_TARGET', /group "pi-001"/);
  });

  it('rejects a replayed serial', () => {
    const env = signDesired(desired());
    expectError(() => verifyDesired(trust, env, { ...ctx, lastSerial: 42 }), 'REPLAY', /serial 42 from device "pi-001" is not above 42/);
  });

  it('rejects an expired document, and any document under expired trust', () => {
    const env = signDesired(desired());
    expectError(() => verifyDesired(trust, env, { ...ctx, now: new Date('2026-12-21T08:00:00Z') }), 'EXPIRED', /serial 42 .*expired at 2026-12-21T08:00:00Z/);
    expectError(() => verifyDesired(trust, env, { ...ctx, now: new Date('2037-01-01T00:00:00Z') }), 'EXPIRED', /trust version 1 expired/);
  });

  it('reports every problem of a bad document at once', () => {
    const bad = desired({ target: { device: 'pi-001', group: 'lab' }, serial: -1, expiresAt: '2026-01-01T00:00:00Z' });
    const models = bad.models as Record<string, unknown>[];
    models.push({ ...models[0], labels: ['stable'] });
    const err = expectError(() => verifyDesired(trust, signDesired(bad), ctx), 'MALFORMED', /desired state is invalid/);
    expect(err.problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^target: target must be/),
        expect.stringMatching(/^serial: serial must be >= 0/),
        expect.stringMatching(/^expiresAt: must be after issuedAt/),
        expect.stringMatching(/^models\[1\]: mnist version 3 is listed twice/),
      ]),
    );
  });

  it('rejects a desired document signed by the models role', () => {
    const env = sign(PAYLOAD_TYPES.desired, desired(), [modelsKey]);
    expectError(() => verifyDesired(trust, env, ctx), 'THRESHOLD', /not trusted for rollout/);
  });
});

describe('names and topics', () => {
  it('builds and parses every topic kind', () => {
    const sha = hex('file');
    const cases = [
      [topics.trust('edgefleet'), { kind: 'trust' }],
      [topics.block('edgefleet', sha, 12), { kind: 'block', sha256: sha, index: 12 }],
      [topics.device('edgefleet', 'pi-001', 'desired'), { kind: 'desired', target: { device: 'pi-001' } }],
      [topics.groupDesired('edgefleet', 'lab'), { kind: 'desired', target: { group: 'lab' } }],
      [topics.device('acme/ef', 'pi-001', 'telemetry'), { kind: 'telemetry', deviceId: 'pi-001' }, 'acme/ef'],
    ] as const;
    for (const [topic, parsed, root = 'edgefleet'] of cases) expect(parseTopic(root, topic)).toEqual(parsed);
    expect(topics.block('edgefleet', sha, 0)).toBe(`edgefleet/artifacts/${sha}/blocks/0`);
    expect(topics.allDevices('edgefleet', 'state')).toBe('edgefleet/devices/+/state');
  });

  it('refuses bad names and topics that are not ours', () => {
    expect(parseTopic('edgefleet', 'edgefleet/devices/pi-001/other')).toBeUndefined();
    expect(parseTopic('edgefleet', 'edgefleet/artifacts/abc/blocks/01')).toBeUndefined();
    expect(parseTopic('edgefleet', 'other/trust')).toBeUndefined();
    expectError(() => topics.device('edgefleet', 'bad/id', 'state'), 'MALFORMED', /device id "bad\/id" is not valid/);
    expectError(() => topics.trust('edge/#'), 'MALFORMED', /topic root/);
  });

  it('parses RFC 3339 UTC times only', () => {
    expect(parseTime('2026-11-21T08:00:00Z')).toBe(Date.UTC(2026, 10, 21, 8));
    expect(parseTime('2026-11-21T08:00:00.25+00:00')).toBe(Date.UTC(2026, 10, 21, 8, 0, 0, 250));
    for (const bad of ['2026-02-30T00:00:00Z', '2026-11-21T08:00:00+01:00', '2026-11-21 08:00:00Z', '2026-11-21T24:00:00Z']) {
      expect(parseTime(bad)).toBeUndefined();
    }
  });

  it('compares semantic versions by precedence', () => {
    expect(compareSemver('0.10.0', '0.9.9')).toBe(1);
    expect(compareSemver('1.0.0-rc.1', '1.0.0')).toBe(-1);
    expect(compareSemver('1.0.0-alpha.2', '1.0.0-alpha.10')).toBe(-1);
    expect(compareSemver('1.0.0+build', '1.0.0')).toBe(0);
  });
});

describe('reported payloads', () => {
  it('parses a telemetry batch, skipping unknown kinds and fields', () => {
    const batch = parseTelemetryBatch(JSON.stringify({
      schema: 1, device: 'pi-001', extra: true,
      points: [
        { seq: 1, ts: '2026-11-21T08:00:00Z', kind: 'inference', model: 'mnist', version: 3, intervalS: 10, count: 5, errors: 0,
          latencyMs: { p50: 0.4, p90: 0.6, p99: 1.1, max: 2.3, mean: 0.45 } },
        { seq: 2, ts: '2026-11-21T08:00:00Z', kind: 'power', watts: 3 },
        { seq: 3, ts: '2026-11-21T08:00:00Z', kind: 'health', cpuPct: 12.5, load1: 0.3, memUsedBytes: 1, memTotalBytes: 2,
          tempC: null, diskFreeBytes: 3, rssBytes: 4, uptimeS: 3600, gpus: [] },
      ],
    }));
    expect(batch.points.map((p) => p.kind)).toEqual(['inference', 'health']);
    expect(batch).not.toHaveProperty('extra');
  });

  it('reports bad telemetry points and reported state with paths', () => {
    const err = expectError(() => parseTelemetryBatch(JSON.stringify({ schema: 1, device: 'pi-001', points: [{ seq: -1, ts: 'x', kind: 'health' }] })), 'MALFORMED', /telemetry batch is invalid/);
    expect(err.problems.some((p) => p.startsWith('points[0].seq:'))).toBe(true);
    expect(err.problems.some((p) => p.startsWith('points[0].ts:'))).toBe(true);
    expectError(() => parseReportedState('{"schema":1}'), 'MALFORMED', /reported state is invalid: device: is required \(string\)/);
  });
});
