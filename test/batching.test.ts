import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mlpModel, multiIoModel, writeModelTree } from '../models/onnx/zoo.js';
import { mulberry32 } from '../models/onnx/zoo.js';
import { postJson, startTestAgent, type TestAgent } from './helpers/agent.js';

let t: TestAgent;
beforeAll(async () => {
  t = await startTestAgent(
    {
      models: {
        config: {
          batched: { batching: { maxBatchSize: 16, maxQueueDelayMs: 20 } },
          tiny: { batching: { maxBatchSize: 64, maxQueueDelayMs: 200, maxQueueSize: 2 } },
          multi: { batching: { maxBatchSize: 8, maxQueueDelayMs: 10 } },
        },
      },
    },
    async (dir) => {
      await writeModelTree(dir, 'plain', 1, mlpModel());
      await writeModelTree(dir, 'batched', 1, mlpModel());
      await writeModelTree(dir, 'tiny', 1, mlpModel());
      await writeModelTree(dir, 'multi', 1, multiIoModel());
    },
  );
});
afterAll(async () => t.close());

const rand = mulberry32(7);
const digit = (): number[] => Array.from({ length: 784 }, () => rand());

async function infer(model: string, rows: number[][]): Promise<{ status: number; json: any }> {
  return postJson(`${t.url}/v2/models/${model}/infer`, { inputs: [{ name: 'x', shape: [rows.length, 784], datatype: 'FP32', data: rows.flat() }] });
}

async function batchRowsObserved(model: string): Promise<{ count: number; sum: number }> {
  const text = await (await fetch(`${t.url}/metrics`)).text();
  const num = (suffix: string): number => Number(new RegExp(`edgefleet_batch_rows_${suffix}\\{model="${model}",version="1"\\} (\\S+)`).exec(text)?.[1] ?? 0);
  return { count: num('count'), sum: num('sum') };
}

describe('dynamic batching', () => {
  it('gives the same results as unbatched runs, request by request', async () => {
    const inputs = Array.from({ length: 40 }, (_, i) => Array.from({ length: 1 + (i % 3) }, digit));
    const [plain, batched] = await Promise.all([
      Promise.all(inputs.map((rows) => infer('plain', rows))),
      Promise.all(inputs.map((rows) => infer('batched', rows))),
    ]);
    for (let i = 0; i < inputs.length; i++) {
      expect(batched[i]?.status).toBe(200);
      const a = plain[i]?.json.outputs[0];
      const b = batched[i]?.json.outputs[0];
      expect(b.shape).toEqual(a.shape);
      b.data.forEach((v: number, k: number) => expect(v).toBeCloseTo(a.data[k], 6));
    }
    // Requests really were combined: fewer batches than requests, no batch above the limit.
    const { count, sum } = await batchRowsObserved('batched');
    expect(sum).toBe(inputs.reduce((n, r) => n + r.length, 0));
    expect(count).toBeLessThan(inputs.length);
  });

  it('splits multi-output results back to each request', async () => {
    const reqs = Array.from({ length: 12 }, (_, i) => ({ a: [i, 1, 2, 3], b: [1, 1, 1, i] }));
    const res = await Promise.all(
      reqs.map((r) =>
        postJson(`${t.url}/v2/models/multi/infer`, {
          inputs: [
            { name: 'a', shape: [1, 4], datatype: 'FP32', data: r.a },
            { name: 'b', shape: [1, 4], datatype: 'FP32', data: r.b },
          ],
        }),
      ),
    );
    res.forEach((r, i) => {
      const out = Object.fromEntries(r.json.outputs.map((o: { name: string; data: number[] }) => [o.name, o.data]));
      const req = reqs[i]!;
      expect(out.sum).toEqual(req.a.map((v, k) => v + req.b[k]!));
      expect(out.product).toEqual(req.a.map((v, k) => v * req.b[k]!));
      expect(out.argmax).toHaveLength(1);
    });
  });

  it('answers 503 when the batch queue is full, and serves the rest', async () => {
    const res = await Promise.all(Array.from({ length: 8 }, () => infer('tiny', [digit()])));
    const codes = res.map((r) => r.status);
    expect(codes.filter((c) => c === 200).length).toBeGreaterThan(0);
    const rejected = res.filter((r) => r.status === 503);
    expect(rejected.length).toBeGreaterThan(0);
    expect(rejected[0]?.json.error).toMatch(/batch queue is full/);
    expect(codes.every((c) => c === 200 || c === 503)).toBe(true);
  });

  it('runs a request larger than maxBatchSize on its own', async () => {
    const rows = Array.from({ length: 20 }, digit);
    const [big, ref] = await Promise.all([infer('batched', rows), infer('plain', rows)]);
    expect(big.status).toBe(200);
    expect(big.json.outputs[0].shape).toEqual([20, 10]);
    big.json.outputs[0].data.forEach((v: number, k: number) => expect(v).toBeCloseTo(ref.json.outputs[0].data[k], 6));
  });
});
