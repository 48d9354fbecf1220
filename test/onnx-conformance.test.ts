/**
 * Every model that ONNX Runtime can run gets served: the ONNX backend test
 * cases (Debian's libonnx-testdata) run first on bare onnxruntime-node, then,
 * of those that pass there, through a real agent serving them all from one
 * model repository and answering v2 JSON over HTTP. Half of the models carry a
 * warmup.json made of their test inputs, so both warm-up paths meet hundreds
 * of real models; the other half warm up on a generated input, which many of
 * them cannot run (integer division, Reshape or Resize arguments in the data).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrt, type Ort } from '../agent/runtime/ort.js';
import { writeModelTree } from '../models/onnx/zoo.js';
import { startTestAgent, type TestAgent } from './helpers/agent.js';
import {
  elementsOf, elementsOfV2, listBackendCases, mismatch, ONNX_BACKEND_DATA, readBackendCase, toV2Input,
  type BackendCase, type UnreadableCase,
} from './helpers/onnx-backend.js';

const MIN_SERVED = 0.98;

const ids = await listBackendCases();
if (ids.length === 0) console.log(`onnx backend conformance: skipped, ${ONNX_BACKEND_DATA} is missing (apt-get install libonnx-testdata)`);

/** Runs a case on bare onnxruntime-node; undefined when every output matches. */
async function runBare(ort: Ort, c: BackendCase): Promise<string | undefined> {
  let session;
  try {
    session = await ort.InferenceSession.create(c.model, { executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1, logSeverityLevel: 4 });
  } catch (err) {
    return `load: ${(err as Error).message.split('\n', 1)[0] ?? ''}`;
  }
  try {
    const feeds = Object.fromEntries(c.inputs.map((t) => [t.name, new ort.Tensor(t.type, t.data as never, t.dims)]));
    const results = await session.run(feeds);
    for (const want of c.outputs) {
      const got = results[want.name];
      if (!got) return `no output "${want.name}"`;
      const bad = mismatch({ dims: [...got.dims], values: elementsOf(want.type, got.data) }, want);
      if (bad) return `output "${want.name}": ${bad}`;
    }
    return undefined;
  } catch (err) {
    return `run: ${(err as Error).message.split('\n', 1)[0] ?? ''}`;
  } finally {
    await session.release();
  }
}

/** A valid, unique model name for each case id (`node/test_Abs` → `node-test_abs`). */
function modelNames(cases: readonly BackendCase[]): Map<BackendCase, string> {
  const out = new Map<BackendCase, string>();
  const taken = new Set<string>();
  for (const [k, c] of cases.entries()) {
    let name = c.id.toLowerCase().replace(/[^a-z0-9_-]/g, '-').slice(0, 63);
    if (taken.has(name)) name = `${name.slice(0, 56)}-${k}`;
    taken.add(name);
    out.set(c, name);
  }
  return out;
}

interface V2Answer {
  status: number;
  json: { error?: string; outputs?: { name: string; datatype: string; shape: number[]; data: unknown[] }[] };
}

/** Whether the agent answers the case correctly through v2 JSON; undefined when it does. */
async function runServed(url: string, name: string, c: BackendCase): Promise<string | undefined> {
  const res = await fetch(`${url}/v2/models/${name}/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: c.inputs.map(toV2Input) }),
  });
  const answer: V2Answer = { status: res.status, json: (await res.json()) as V2Answer['json'] };
  if (answer.status !== 200) return `HTTP ${answer.status}: ${answer.json.error ?? ''}`;
  for (const want of c.outputs) {
    const got = answer.json.outputs?.find((o) => o.name === want.name);
    if (!got) return `no output "${want.name}"`;
    const bad = mismatch({ dims: got.shape, values: elementsOfV2(got.datatype, got.data) }, want);
    if (bad) return `output "${want.name}": ${bad}`;
  }
  return undefined;
}

/** Runs `fn` over `items` with at most `limit` at a time. */
async function pool<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  return out;
}

function tally(reasons: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const r of reasons) counts.set(r, (counts.get(r) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r} (${n})`).join(', ');
}

describe.skipIf(ids.length === 0)('ONNX backend test models', () => {
  let t: TestAgent | undefined;
  const bare: BackendCase[] = [];
  const unreadable: UnreadableCase[] = [];
  const bareFailures: string[] = [];
  let names = new Map<BackendCase, string>();
  const withWarmupFile = new Set<BackendCase>();

  beforeAll(async () => {
    const ort = await loadOrt();
    for (const id of ids) {
      const c = await readBackendCase(id);
      if (!('model' in c)) {
        unreadable.push(c);
        continue;
      }
      const failure = await runBare(ort, c);
      if (failure === undefined) bare.push(c);
      else bareFailures.push(`${id}: ${failure}`);
    }
    names = modelNames(bare);
    t = await startTestAgent({}, async (dir) => {
      for (const [k, c] of bare.entries()) {
        const name = names.get(c) as string;
        await writeModelTree(dir, name, 1, c.model);
        if (k % 2 === 1) {
          withWarmupFile.add(c);
          await writeFile(join(dir, name, '1', 'warmup.json'), JSON.stringify({ inputs: c.inputs.map(toV2Input) }));
        }
      }
    });
  }, 170_000);
  afterAll(async () => {
    await t?.close();
  });

  it(`serves at least ${MIN_SERVED * 100}% of the models bare onnxruntime-node passes, answering them correctly over v2 JSON`, async () => {
    const agent = t as TestAgent;
    const results = await pool(bare, 4, async (c) => {
      const name = names.get(c) as string;
      const status = agent.agent.registry.statuses(name)[0];
      if (status?.state !== 'AVAILABLE') return `${c.id}: not served (${status?.state ?? 'unknown'}: ${status?.error ?? ''})`;
      const failure = await runServed(agent.url, name, c);
      return failure === undefined ? undefined : `${c.id}: ${failure}`;
    });
    const failures = results.filter((r): r is string => r !== undefined);
    const served = bare.length - failures.length;
    const notCounted = tally(unreadable.map((u) => u.reason.replace(/^"[^"]*" is /, '')));
    console.log(
      `onnx backend conformance: bare ORT passes ${bare.length}, agent serves ${served} (${((served / bare.length) * 100).toFixed(1)}%); ` +
        `${ids.length} cases, ${bareFailures.length} fail on bare ORT, ${unreadable.length} not counted since onnxruntime-node's JS API cannot feed or return them: ${notCounted}`,
    );
    console.log(`onnx backend conformance: ${withWarmupFile.size} models warmed up on warmup.json, ${bare.length - withWarmupFile.size} on a generated input`);
    if (failures.length > 0) console.log(`onnx backend conformance: not served or wrong:\n  ${failures.join('\n  ')}`);
    // Every model with a warmup.json of valid inputs serves: nothing there may fail.
    expect(failures.filter((f) => [...withWarmupFile].some((c) => f.startsWith(`${c.id}:`)))).toEqual([]);
    expect(served / bare.length).toBeGreaterThanOrEqual(MIN_SERVED);
  }, 120_000);
});

