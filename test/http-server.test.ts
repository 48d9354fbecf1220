/**
 * The HTTP server's inference path around the model, with a scripted session:
 * whatever fails (ONNX Runtime, the telemetry recorder), the client gets an
 * answer, the servable is released (so a hot swap can drain it), and the
 * process keeps serving.
 */
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../agent/config/load.js';
import { HttpServer } from '../agent/http/server.js';
import type { ModelSession } from '../agent/runtime/session.js';
import type { HostTensor } from '../agent/runtime/tensor.js';
import { ModelRegistry } from '../agent/serving/registry.js';
import { Servable } from '../agent/serving/servable.js';
import { Metrics } from '../agent/telemetry/metrics.js';
import type { Outcome } from '../agent/telemetry/recorder.js';

/** A model `y = 2x` over FP32 [-1, 2], whose run() does what the test says. */
function scriptedSession(run: (inputs: readonly HostTensor[]) => Promise<HostTensor[]>): ModelSession {
  return {
    inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 2] }],
    outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 2] }],
    executionProvider: 'cpu',
    sharedDims: [],
    run,
    release: () => Promise.resolve(),
  };
}

const double = (inputs: readonly HostTensor[]): Promise<HostTensor[]> => {
  const x = inputs[0] as HostTensor;
  return Promise.resolve([{ name: 'y', datatype: 'FP32', shape: x.shape, data: (x.data as Float32Array).map((v) => v * 2) }]);
};

let server: HttpServer | undefined;
afterEach(async () => {
  await server?.stop();
  server = undefined;
});

async function serve(session: ModelSession, record: (model: string, version: number, outcome: Outcome) => void = () => undefined): Promise<{ url: string; servable: Servable; logged: string[] }> {
  const registry = new ModelRegistry();
  const servable = new Servable('m', 1, session, undefined);
  registry.activate(servable);
  registry.setDefault('m', 1);
  const logged: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (line: string) => logged.push(line) });
  const config = parseConfig({ deviceId: 'd', stateDir: '/tmp/unused', http: { port: 0, host: '127.0.0.1' } });
  server = new HttpServer({ config: config.http, registry, metrics: new Metrics({ processMetrics: false }), telemetry: { record }, logger, agentVersion: 'test', isReady: () => true });
  const address = await server.start();
  return { url: `http://127.0.0.1:${address.port}`, servable, logged };
}

const body = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 2], datatype: 'FP32', data: [1, 2] }] });
const post = async (url: string, path = '/v2/models/m/infer', text = body): Promise<{ status: number; json: any }> => {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: text });
  return { status: res.status, json: await res.json() };
};

describe('HTTP inference path', () => {
  it('answers and releases the servable on success, v2 and v1', async () => {
    const { url, servable } = await serve(scriptedSession(double));
    const v2 = await post(url);
    expect(v2.status).toBe(200);
    expect(v2.json.outputs[0].data).toEqual([2, 4]);
    const v1 = await post(url, '/v1/models/m:predict', '{"instances":[[3,4]]}');
    expect(v1).toEqual({ status: 200, json: { predictions: [[6, 8]] } });
    expect(servable.requestsInFlight).toBe(0);
  });

  it('turns an input ONNX Runtime refuses into a 400 naming the model, recorded as the client\'s, not counted against the version', async () => {
    const outcomes: string[] = [];
    const { url, servable } = await serve(
      scriptedSession(() => Promise.reject(new Error('Got invalid dimensions for input: x\nmore detail'))),
      (_model, _version, outcome) => void outcomes.push(outcome),
    );
    const r = await post(url);
    expect(r.status).toBe(400);
    expect(r.json.error).toBe('model "m" version 1 rejected the input: Got invalid dimensions for input: x');
    expect(servable.requestsInFlight).toBe(0);
    expect(outcomes).toEqual(['client-input']);
    expect({ runs: servable.runs, modelFaults: servable.modelFaults }).toEqual({ runs: 0, modelFaults: 0 });
  });

  it('turns a node failing inside ONNX Runtime into a 500 naming the model, logged, recorded and counted as a model fault', async () => {
    const outcomes: string[] = [];
    const kernel = "Non-zero status code returned while running Gather node. Name:'Gather_2' Status Message: indices element out of data bounds";
    const { url, servable, logged } = await serve(
      scriptedSession(() => Promise.reject(new Error(kernel))),
      (_model, _version, outcome) => void outcomes.push(outcome),
    );
    const r = await post(url);
    expect(r).toEqual({ status: 500, json: { error: `model "m" version 1 failed to run: ${kernel}` } });
    expect(logged.join('')).toContain('inference request failed');
    expect(outcomes).toEqual(['model-fault']);
    expect({ runs: servable.runs, modelFaults: servable.modelFaults }).toEqual({ runs: 1, modelFaults: 1 });
    expect(servable.requestsInFlight).toBe(0);
  });

  it('logs a failure of its own (a 500) and answers it', async () => {
    const { url, servable, logged } = await serve(scriptedSession(() => Promise.resolve([])));
    const r = await post(url, '/v2/models/m/infer', JSON.stringify({ inputs: [{ name: 'x', shape: [1, 2], datatype: 'FP32', data: [1, 2] }], outputs: [{ name: 'y' }] }));
    expect(r).toEqual({ status: 500, json: { error: 'the model produced no output "y"' } });
    expect(logged.join('')).toContain('the model produced no output');
    expect(servable.requestsInFlight).toBe(0);
  });

  it('answers and keeps serving when the telemetry recorder throws', async () => {
    let calls = 0;
    const { url, servable, logged } = await serve(scriptedSession(double), () => {
      calls++;
      throw new Error('recorder broke');
    });
    for (let i = 0; i < 3; i++) expect((await post(url)).status).toBe(200);
    expect(calls).toBe(3);
    expect(servable.requestsInFlight).toBe(0);
    expect(logged.join('')).toContain('recorder broke');
    // A bad request takes the error path through the same recorder.
    expect((await post(url, '/v2/models/m/infer', '{"inputs":[')).status).toBe(400);
    expect(servable.requestsInFlight).toBe(0);
  });

  it('releases the servable when the body is too large or the client goes away', async () => {
    const { url, servable } = await serve(scriptedSession(double));
    const big = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 2], datatype: 'FP32', data: [1, 2] }], pad: 'x'.repeat(70 << 20) });
    const r = await post(url, '/v2/models/m/infer', big);
    expect(r.status).toBe(413);
    const aborted = new AbortController();
    const pending = fetch(`${url}/v2/models/m/infer`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: aborted.signal, duplex: 'half',
      body: new ReadableStream({ start: (c) => c.enqueue(new TextEncoder().encode('{"inputs":[')) }),
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    aborted.abort();
    await pending.catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(servable.requestsInFlight).toBe(0);
    expect((await post(url)).status).toBe(200);
  });
});
