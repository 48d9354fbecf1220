import { afterEach, describe, expect, it } from 'vitest';
import { scaleModel, writeModelTree } from '../models/onnx/zoo.js';
import { getJson, startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';

let t: TestAgent | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

interface Outcome {
  ok: number;
  failed: string[];
  factors: Set<number>;
}

/** Closed-loop clients that each send predicts until told to stop, recording every outcome. */
function runClients(url: string, clients: number): { stop: () => Promise<Outcome> } {
  const outcome: Outcome = { ok: 0, failed: [], factors: new Set() };
  let running = true;
  const loops = Array.from({ length: clients }, async (_, c) => {
    for (let i = 0; running; i++) {
      const x = c + i + 1;
      try {
        const res = await fetch(`${url}/v2/models/scale/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ inputs: [{ name: 'x', shape: [1, 1], datatype: 'FP32', data: [x] }] }),
        });
        const body = (await res.json()) as { outputs?: { data: number[] }[]; error?: string };
        if (res.status !== 200) outcome.failed.push(`${res.status} ${body.error ?? ''}`);
        else {
          outcome.ok++;
          outcome.factors.add((body.outputs?.[0]?.data[0] ?? NaN) / x);
        }
      } catch (err) {
        outcome.failed.push(String(err));
      }
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      return outcome;
    },
  };
}

describe('hot swap', () => {
  it('switches versions under concurrent load without a failed request', async () => {
    t = await startTestAgent({}, async (dir) => {
      await writeModelTree(dir, 'scale', 1, scaleModel(1));
    });
    const url = t.url;
    const clients = runClients(url, 8);
    for (const v of [2, 3, 4]) {
      await new Promise((r) => setTimeout(r, 300));
      await writeModelTree(t.modelsDir, 'scale', v, scaleModel(v));
      await waitFor(async () => {
        const { json } = await getJson(`${url}/v1/models/scale`);
        return json.model_version_status?.length === 1 && json.model_version_status[0].version === String(v);
      }, 10_000, `version ${v} alone serving`);
    }
    await new Promise((r) => setTimeout(r, 300));
    const outcome = await clients.stop();
    expect(outcome.failed).toEqual([]);
    expect(outcome.ok).toBeGreaterThan(100);
    // Every answer came from a real version, and the swaps were seen by the clients.
    expect([...outcome.factors].sort()).toEqual([1, 2, 3, 4]);
    // Old sessions were released once drained: only version 4 holds one.
    expect(t.agent.registry.servables().map((s) => s.version)).toEqual([4]);
  });

  it('finishes a request in flight on the old version while the new one takes over', async () => {
    t = await startTestAgent({}, async (dir) => {
      await writeModelTree(dir, 'scale', 1, scaleModel(1));
    });
    // A request held inside version 1's model run (behind a gate) stays in flight through the swap.
    const old = t.agent.registry.servables()[0];
    if (!old) throw new Error('version 1 is not serving');
    let open: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const run = old.session.run.bind(old.session);
    old.session.run = async (inputs, outputs) => {
      await gate;
      return run(inputs, outputs);
    };
    const body = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 1], datatype: 'FP32', data: [5] }] });
    const slow = fetch(`${t.url}/v2/models/scale/infer`, { method: 'POST', body }).then(async (r) => ({ status: r.status, text: await r.text() }));
    await waitFor(() => old.requestsInFlight > 0, 2000, 'request in flight');
    await writeModelTree(t.modelsDir, 'scale', 2, scaleModel(2));
    await waitFor(async () => (await getJson(`${t!.url}/v2/models/scale`)).json.versions?.join() === '2', 10_000, 'version 2 serving');
    // Version 1 is out of routing but not released: its request is still in flight.
    expect(old.requestsInFlight).toBe(1);
    open();
    const res = await slow;
    expect(res.status).toBe(200);
    const answer = JSON.parse(res.text) as { model_version: string; outputs: { data: number[] }[] };
    expect(answer.model_version).toBe('1');
    expect(answer.outputs[0]?.data).toEqual([5]);
    await waitFor(() => t!.agent.registry.servables().map((s) => s.version).join() === '2', 10_000, 'version 1 released');
  });
});
