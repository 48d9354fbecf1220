/**
 * Shadow evaluation before a switch (docs/protocol.md section 11), end to end:
 * a real agent, real ONNX Runtime, desired documents over a real Mosquitto.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseTelemetryBatch, type ShadowPoint } from '../protocol/reported.js';
import { identityModel, scaleModel } from '../models/onnx/zoo.js';
import { startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';
import { buildManifest, publishBlocks, signManifest, type DesiredEntry } from './helpers/fleet.js';
import { startFleetHarness, type FleetHarness } from './helpers/fleet-harness.js';

const ROOT = 'edgefleet';
let h: FleetHarness;
const points: (ShadowPoint & { device: string })[] = [];

const selfTest = (f: number) => ({ inputs: [{ name: 'x', datatype: 'FP32' as const, shape: [1, 2], data: [1, 2] }], outputs: [{ name: 'y', datatype: 'FP32' as const, shape: [1, 2], data: [f, 2 * f] }], atol: 1e-4, rtol: 1e-3 });
const BATCHING = { maxBatchSize: 8, maxQueueDelayMs: 1 };

/** Version `version` of `scale`: y = x * factor, batched. */
async function release(version: number, factor: number): Promise<DesiredEntry> {
  const bytes = scaleModel(factor);
  const manifest = buildManifest('scale', version, bytes, { selfTest: selfTest(factor), runtime: { batching: BATCHING } });
  await publishBlocks(h.fleet, ROOT, manifest, bytes);
  return { name: 'scale', version, manifest: signManifest(manifest, [h.keys.models]) };
}

/** v2 JSON (the version that answered), v2 binary or v1 row format; the values say which factor answered. */
async function infer(url: string, kind: 'v2' | 'v2-binary' | 'v1', row: number[]): Promise<{ status: number; version?: string; values: number[] }> {
  if (kind === 'v1') {
    const res = await fetch(`${url}/v1/models/scale:predict`, { method: 'POST', body: JSON.stringify({ instances: [row, row] }) });
    const json = (await res.json()) as { predictions: number[][] };
    return { status: res.status, values: json.predictions[0] ?? [] };
  }
  // v2 binary: the input as little-endian bytes after the JSON header (the binary tensor extension).
  const bytes = Buffer.from(Float32Array.from(row).buffer);
  const input = { name: 'x', shape: [1, row.length], datatype: 'FP32', ...(kind === 'v2-binary' ? { parameters: { binary_data_size: bytes.length } } : { data: row }) };
  const header = JSON.stringify({ inputs: [input], outputs: [{ name: 'y', parameters: { binary_data: false } }] });
  const res = await fetch(`${url}/v2/models/scale/infer`, {
    method: 'POST',
    headers: kind === 'v2-binary' ? { 'inference-header-content-length': String(Buffer.byteLength(header)) } : {},
    body: kind === 'v2-binary' ? Buffer.concat([Buffer.from(header), bytes]) : header,
  });
  const json = (await res.json()) as { model_version: string; outputs: { data: number[] }[] };
  return { status: res.status, version: json.model_version, values: json.outputs[0]?.data ?? [] };
}

/** Live traffic until `done`: every answer is checked to come from the version that serves (factor `servedFactor`). */
async function traffic(url: string, servedFactor: number, done: () => boolean, limitMs = 20_000): Promise<number> {
  const kinds = ['v2', 'v1', 'v2-binary'] as const;
  let n = 0;
  const until = Date.now() + limitMs;
  while (!done() && Date.now() < until) {
    const row = [1 + (n % 5), 2, 3];
    const answers = await Promise.all(kinds.map((k) => infer(url, k, row)));
    // Until the switch (done), only the served version answers; after it, the new one may.
    const switched = done();
    for (const a of answers) {
      expect(a.status).toBe(200);
      if (switched) continue;
      expect(a.values).toEqual(row.map((x) => x * servedFactor));
      if (a.version !== undefined) expect(a.version).toBe('1');
    }
    n += answers.length;
  }
  return n;
}

function capture(): { logger: pino.Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({ write: (chunk: Buffer, _enc, cb) => (lines.push(chunk.toString()), cb()) });
  return { logger: pino({ level: 'info' }, stream), lines };
}

beforeAll(async () => {
  h = await startFleetHarness({ root: ROOT });
  h.fleet.on('message', (topic, payload) => {
    const m = /^edgefleet\/devices\/([^/]+)\/telemetry$/.exec(topic);
    if (!m || payload.length === 0) return;
    for (const p of parseTelemetryBatch(payload).points) if (p.kind === 'shadow') points.push({ ...p, device: m[1] ?? '' });
  });
  await h.fleet.subscribeAsync(`${ROOT}/devices/+/telemetry`, { qos: 1 });
}, 60_000);

afterAll(async () => {
  await h?.stop();
});

let t: TestAgent | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

async function agentWithV1(device: string, logger?: pino.Logger): Promise<TestAgent> {
  const agent = await startTestAgent({ deviceId: device, trust: h.trustFile, mqtt: { url: h.broker.url }, telemetry: { intervalS: 1 }, rollout: { healthWindowS: 0, retryBaseMs: 50 } }, undefined, logger);
  await h.deploy(device, 1, [await release(1, 1)]);
  await waitFor(h.desired(device, 1, 'applied'), 20_000, `${device}: v1 applied`);
  return agent;
}

const shadowing = (device: string, version: number) => () => h.states.get(device)?.models.find((m) => m.version === version)?.state === 'shadowing';
const eventsOf = (device: string, type: string) => h.events.filter((e) => e.device === device && e.type === type);

describe('shadow evaluation', () => {
  it('activates a candidate that answers the same after minSamples; until then the served version answers every request', async () => {
    t = await agentWithV1('sh-same');
    // Other bytes, the same answers to float32 precision.
    await h.deploy('sh-same', 2, [{ ...(await release(2, 1.0000001)), shadow: { sampleRate: 1, minSamples: 30, maxDurationS: 60, compare: 'allclose' } }]);
    await waitFor(shadowing('sh-same', 2), 20_000, 'v2 shadowing');
    const url = t.url;
    const sent = await traffic(url, 1, () => t?.agent.registry.defaultOf('scale') === 2);
    expect(sent).toBeGreaterThanOrEqual(30);
    const s = await waitFor(h.desired('sh-same', 2, 'applied'), 20_000, 'v2 applied');
    expect(s.models.find((m) => m.version === 2)).toMatchObject({ state: 'serving' });
    expect((await infer(url, 'v2', [1, 2])).version).toBe('2');
    // Progress was reported as samples / minSamples while it ran.
    const progress = h.reports('sh-same').flatMap((r) => r.models.filter((m) => m.version === 2 && m.state === 'shadowing').map((m) => m.progress));
    expect(progress[0]).toBe(0);
    expect(Math.max(...progress)).toBeLessThanOrEqual(1);
    expect(eventsOf('sh-same', 'shadow.completed')[0]?.detail).toMatch(/^activated against version 1: agreement 1 \(30 of 30 samples, compare allclose\)/);
    expect(eventsOf('sh-same', 'activated').some((e) => e.version === 2)).toBe(true);
    const verdict = await waitFor(() => points.find((p) => p.device === 'sh-same' && p.verdict !== null), 10_000, 'shadow verdict point');
    expect(verdict).toMatchObject({ kind: 'shadow', model: 'scale', version: 2, baseVersion: 1, samples: 30, agreed: 30, agreement: 1, verdict: 'activated' });
    expect(verdict.maxAbsDiff).toBeLessThan(1e-4);
    expect(verdict.latencyMs?.p99).toBeGreaterThan(0);
    expect(verdict.baseLatencyMs?.p50).toBeGreaterThan(0);
  });

  it('rejects a candidate whose answers differ, with the agreement in the error: nothing switched, its session released', async () => {
    const { logger, lines } = capture();
    t = await agentWithV1('sh-differ', logger);
    await h.deploy('sh-differ', 2, [{ ...(await release(2, -1)), shadow: { sampleRate: 1, minSamples: 12, minAgreement: 0.9 } }]);
    await waitFor(shadowing('sh-differ', 2), 20_000, 'v2 shadowing');
    await traffic(t.url, 1, () => h.states.get('sh-differ')?.desired?.status === 'rejected');
    const s = await waitFor(h.desired('sh-differ', 2, 'rejected'), 10_000, 'v2 rejected');
    expect(s.desired?.error).toMatch(/rejected by its shadow evaluation against version 1: agreement 0 \(0 of 12 samples, compare argmax\) is below minAgreement 0.9/);
    expect(s.models.find((m) => m.version === 2)).toMatchObject({ state: 'rejected' });
    expect(t.agent.registry.defaultOf('scale')).toBe(1);
    expect(t.agent.registry.servables().map((x) => x.version)).toEqual([1]);
    expect(eventsOf('sh-differ', 'activated').some((e) => e.version === 2)).toBe(false);
    expect(lines.some((l) => l.includes('model version released without serving') && l.includes('"version":2'))).toBe(true);
    expect((await infer(t.url, 'v2', [1, 2])).version).toBe('1');
    const verdict = await waitFor(() => points.find((p) => p.device === 'sh-differ' && p.verdict !== null), 10_000, 'shadow verdict point');
    expect(verdict).toMatchObject({ samples: 12, agreed: 0, agreement: 0, verdict: 'rejected', baseVersion: 1 });
  });

  it('compare allclose rejects a candidate that scales its answers; argmax, in a newer document, activates it', async () => {
    t = await agentWithV1('sh-compare');
    const v2 = await release(2, 2);
    await h.deploy('sh-compare', 2, [{ ...v2, shadow: { sampleRate: 1, minSamples: 6, compare: 'allclose' } }]);
    await waitFor(shadowing('sh-compare', 2), 20_000, 'v2 shadowing (allclose)');
    await traffic(t.url, 1, () => h.states.get('sh-compare')?.desired?.status === 'rejected');
    const rejected = await waitFor(h.desired('sh-compare', 2, 'rejected'), 10_000, 'allclose rejects');
    expect(rejected.desired?.error).toMatch(/agreement 0 \(0 of 6 samples, compare allclose\)/);

    await h.deploy('sh-compare', 3, [{ ...v2, shadow: { sampleRate: 1, minSamples: 6, compare: 'argmax' } }]);
    await waitFor(() => h.states.get('sh-compare')?.desired?.serial === 3 && shadowing('sh-compare', 2)(), 20_000, 'v2 shadowing (argmax)');
    await traffic(t.url, 1, () => t?.agent.registry.defaultOf('scale') === 2);
    await waitFor(h.desired('sh-compare', 3, 'applied'), 10_000, 'argmax activates');
    expect(eventsOf('sh-compare', 'shadow.completed').at(-1)?.detail).toMatch(/^activated against version 1: agreement 1 \(6 of 6 samples, compare argmax\)/);
  });

  it('onTimeout reject: too few samples in maxDurationS rejects, with shadow points every interval meanwhile', async () => {
    t = await agentWithV1('sh-timeout-reject');
    await h.deploy('sh-timeout-reject', 2, [{ ...(await release(2, 1)), shadow: { sampleRate: 1, minSamples: 1000, maxDurationS: 2.5, onTimeout: 'reject' } }]);
    await waitFor(shadowing('sh-timeout-reject', 2), 20_000, 'v2 shadowing');
    await infer(t.url, 'v2', [1, 2, 3]);
    const s = await waitFor(h.desired('sh-timeout-reject', 2, 'rejected'), 10_000, 'timed out and rejected');
    expect(s.desired?.error).toMatch(/1 of 1000 samples in maxDurationS 2.5 s \(agreement 1\); onTimeout reject/);
    expect(t.agent.registry.defaultOf('scale')).toBe(1);
    await waitFor(() => points.some((p) => p.device === 'sh-timeout-reject' && p.verdict === 'rejected'), 10_000, 'verdict point');
    const mine = points.filter((p) => p.device === 'sh-timeout-reject');
    expect(mine.filter((p) => p.verdict === null).length).toBeGreaterThanOrEqual(1);
    expect(mine.at(-1)).toMatchObject({ samples: 1, agreed: 1, verdict: 'rejected' });
  });

  it('onTimeout activate: switches when maxDurationS passes first', async () => {
    t = await agentWithV1('sh-timeout-activate');
    await h.deploy('sh-timeout-activate', 2, [{ ...(await release(2, 2)), shadow: { sampleRate: 1, minSamples: 1000, maxDurationS: 1.5, onTimeout: 'activate' } }]);
    await waitFor(shadowing('sh-timeout-activate', 2), 20_000, 'v2 shadowing');
    await waitFor(h.desired('sh-timeout-activate', 2, 'applied'), 10_000, 'timed out and activated');
    expect(t.agent.registry.defaultOf('scale')).toBe(2);
    expect(eventsOf('sh-timeout-activate', 'shadow.completed')[0]?.detail).toMatch(/0 of 1000 samples in maxDurationS 1.5 s \(agreement none\); onTimeout activate/);
  });

  it('a newer document that no longer lists the candidate ends the evaluation and releases it', async () => {
    const { logger, lines } = capture();
    t = await agentWithV1('sh-superseded', logger);
    const v1 = await release(1, 1);
    await h.deploy('sh-superseded', 2, [v1, { ...(await release(2, 1)), shadow: { sampleRate: 1, minSamples: 1000, maxDurationS: 600 } }]);
    await waitFor(shadowing('sh-superseded', 2), 20_000, 'v2 shadowing');
    await h.deploy('sh-superseded', 3, [v1]);
    const s = await waitFor(h.desired('sh-superseded', 3, 'applied'), 10_000, 'serial 3 applied');
    await waitFor(() => lines.some((l) => l.includes('model version released without serving')), 5_000, 'candidate released');
    expect(s.models.map((m) => m.version)).toEqual([1]);
    expect(eventsOf('sh-superseded', 'superseded').some((e) => e.version === 2)).toBe(true);
    expect(t.agent.registry.servables().map((x) => x.version)).toEqual([1]);
  });

  it('shadows a model whose tensors are text (BYTES), comparing element by element', async () => {
    t = await startTestAgent({ deviceId: 'sh-bytes', trust: h.trustFile, mqtt: { url: h.broker.url }, rollout: { healthWindowS: 0 } });
    const text = async (version: number): Promise<DesiredEntry> => {
      const bytes = identityModel('string');
      const manifest = buildManifest('words', version, bytes);
      await publishBlocks(h.fleet, ROOT, manifest, bytes);
      return { name: 'words', version, manifest: signManifest(manifest, [h.keys.models]) };
    };
    await h.deploy('sh-bytes', 1, [await text(1)]);
    await waitFor(h.desired('sh-bytes', 1, 'applied'), 20_000, 'v1 applied');
    await h.deploy('sh-bytes', 2, [{ ...(await text(2)), shadow: { sampleRate: 1, minSamples: 5, compare: 'allclose' } }]);
    await waitFor(shadowing('sh-bytes', 2), 20_000, 'v2 shadowing');
    const body = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 2], datatype: 'BYTES', data: ['héllo', 'wörld'] }] });
    while (t.agent.registry.defaultOf('words') !== 2) {
      const res = await fetch(`${t.url}/v2/models/words/infer`, { method: 'POST', body });
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    await waitFor(h.desired('sh-bytes', 2, 'applied'), 10_000, 'v2 applied');
    expect(eventsOf('sh-bytes', 'shadow.completed')[0]?.detail).toMatch(/^activated against version 1: agreement 1 \(5 of 5 samples, compare allclose\)/);
  });

  it('a first install ignores shadow', async () => {
    t = await startTestAgent({ deviceId: 'sh-first', trust: h.trustFile, mqtt: { url: h.broker.url }, rollout: { healthWindowS: 0 } });
    await h.deploy('sh-first', 1, [{ ...(await release(1, 1)), shadow: { sampleRate: 1, minSamples: 1000, maxDurationS: 600 } }]);
    await waitFor(h.desired('sh-first', 1, 'applied'), 20_000, 'v1 applied');
    expect(h.reports('sh-first').some((r) => r.models.some((m) => m.state === 'shadowing'))).toBe(false);
    expect(eventsOf('sh-first', 'shadow.started')).toEqual([]);
  });
});
