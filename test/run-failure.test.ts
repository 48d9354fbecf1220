/**
 * One classification per failed run, made in the runtime: what onnxruntime-node
 * really says for each bad input (produced here by running real sessions), how
 * the runner and batcher hand every failure on as a RunFailure, and that the
 * servable's health counts and the HTTP status read that kind and nothing else.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { statusOf } from '../agent/http/errors.js';
import { failureKind } from '../agent/errors.js';
import { loadOrt } from '../agent/runtime/ort.js';
import { classifyOrtError, RunFailure, runFailure } from '../agent/runtime/run-failure.js';
import { ModelRunner } from '../agent/runtime/runner.js';
import { createSession, type ModelSession } from '../agent/runtime/session.js';
import type { HostTensor } from '../agent/runtime/tensor.js';
import { Servable } from '../agent/serving/servable.js';
import { fragileScaleModel, identityModel, multiIoModel, staticShapeModel } from '../models/onnx/zoo.js';

const OPTIONS = { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' } as const;
const sessions: ModelSession[] = [];

async function open(bytes: Uint8Array): Promise<ModelSession> {
  const session = await createSession(await loadOrt(), bytes, ['cpu'], OPTIONS);
  sessions.push(session);
  return session;
}

const f32 = (name: string, shape: number[], data?: number[]): HostTensor => ({
  name, datatype: 'FP32', shape, data: data ? new Float32Array(data) : new Float32Array(shape.reduce((a, b) => a * b, 1)),
});
const pair = (a: number, b: number): HostTensor[] => [f32('a', [a, 4]), f32('b', [b, 4])];

/** What session.run really rejects with. */
async function ortError(session: ModelSession, inputs: HostTensor[], outputs?: string[]): Promise<Error> {
  const err: unknown = await session.run(inputs, outputs).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof Error)) throw new Error('expected ONNX Runtime to refuse the run');
  return err;
}

let identity: ModelSession;
let staticShape: ModelSession;
let multi: ModelSession;
let fragile: ModelSession;

beforeAll(async () => {
  [identity, staticShape, multi, fragile] = await Promise.all([
    open(identityModel('float32')),
    open(staticShapeModel()),
    open(multiIoModel()),
    open(fragileScaleModel(2)),
  ]);
});
afterAll(async () => {
  await Promise.all(sessions.map((s) => s.release()));
});

describe('classifyOrtError, on what onnxruntime-node really says', () => {
  const refusals: [string, () => Promise<Error>, RegExp][] = [
    ['a fixed dimension differs', () => ortError(staticShape, [f32('x', [3, 2])]), /^Got invalid dimensions for input: x/],
    ['the rank differs', () => ortError(staticShape, [f32('x', [6])]), /^Invalid rank for input: x/],
    ['the element type differs', () => ortError(identity, [{ name: 'x', datatype: 'INT32', shape: [1, 2], data: new Int32Array(2) }]), /^Unexpected input data type/],
    ['an input is missing', () => ortError(multi, [f32('a', [1, 4])]), /^input 'b' is missing in 'feeds'/],
    ['an output does not exist', () => ortError(identity, [f32('x', [1, 2])], ['nope']), /invalid output name: nope/],
    ['data does not fill the shape', () => ortError(identity, [f32('x', [1, 3], [1, 2])]), /^Tensor's size\(3\) does not match data length\(2\)/],
  ];

  it.each(refusals)('the client\'s input when %s', async (_, produce, says) => {
    const err = await produce();
    expect(err.message).toMatch(says);
    expect(classifyOrtError(err)).toBe('client-input');
  });

  it('a model fault when a node fails on input that fits the signature (Gather out of range inside the graph)', async () => {
    const err = await ortError(fragile, [f32('x', [1, 3], [9, 9, 9])]);
    expect(err.message).toMatch(/^Non-zero status code returned while running Gather node/);
    expect(classifyOrtError(err)).toBe('model-fault');
  });

  it('a model fault when a node fails, whatever provoked it: ORT\'s words alone cannot tell (hence the runner\'s shared-dimension check)', async () => {
    const err = await ortError(multi, pair(2, 3));
    expect(err.message).toMatch(/^Non-zero status code returned while running Add node/);
    expect(classifyOrtError(err)).toBe('model-fault');
  });

  it('a model fault for anything else thrown during a run', () => {
    expect(classifyOrtError(new Error('ONNX Runtime returned no output "y"'))).toBe('model-fault');
    expect(classifyOrtError('not even an Error')).toBe('model-fault');
  });
});

describe('runFailure', () => {
  it('names the version and keeps ORT\'s first line; the code follows from the kind', async () => {
    const input = runFailure(await ortError(staticShape, [f32('x', [3, 2])]), 'model "s" version 1');
    expect(input).toBeInstanceOf(RunFailure);
    expect({ kind: input.kind, code: input.code, message: input.message }).toEqual({
      kind: 'client-input', code: 'BAD_REQUEST', message: 'model "s" version 1 rejected the input: Got invalid dimensions for input: x for the following indices',
    });
    const fault = runFailure(await ortError(fragile, [f32('x', [1, 1], [7])]), 'model "f" version 2');
    expect({ kind: fault.kind, code: fault.code }).toEqual({ kind: 'model-fault', code: 'MODEL_FAULT' });
    expect(fault.message).toMatch(/^model "f" version 2 failed to run: Non-zero status code returned while running Gather node/);
  });

  it('passes a RunFailure through unchanged', () => {
    const overload = new RunFailure('overload', 'queue full');
    expect(runFailure(overload, 'model "m" version 1')).toBe(overload);
  });

  it('is what the HTTP status and every other reader take: 400, 500, 503', () => {
    const kinds = ['client-input', 'model-fault', 'overload'] as const;
    expect(kinds.map((k) => statusOf(new RunFailure(k, k)))).toEqual([400, 500, 503]);
    expect(kinds.map((k) => failureKind(new RunFailure(k, k)))).toEqual(kinds);
  });
});

describe('ModelRunner: every failure leaves classified', () => {
  const batching = { maxBatchSize: 8, maxQueueDelayMs: 5, maxQueueSize: 1024 };

  it.each([['unbatched', undefined], ['batched', batching]] as const)('%s: an input ORT refuses, a model fault, and inputs disagreeing on a named dimension', async (_, config) => {
    const caught = (p: Promise<unknown>): Promise<unknown> => p.then(() => undefined, (e: unknown) => e);
    const idRunner = new ModelRunner(identity, 'model "id" version 1', config);
    expect(idRunner.batcher !== undefined).toBe(config !== undefined);
    const refused = await caught(idRunner.run([{ name: 'x', datatype: 'INT32', shape: [1, 2], data: new Int32Array(2) }]));
    expect(refused).toMatchObject({ name: 'RunFailure', kind: 'client-input', message: expect.stringMatching(/^model "id" version 1 rejected the input: Unexpected input data type/) });

    const fault = await caught(new ModelRunner(fragile, 'model "f" version 1', config).run([f32('x', [1, 2], [9, 9])]));
    expect(fault).toMatchObject({ name: 'RunFailure', kind: 'model-fault', message: expect.stringMatching(/^model "f" version 1 failed to run: /) });

    const mismatch = await caught(new ModelRunner(multi, 'model "multi" version 1', config).run(pair(2, 3)));
    expect(mismatch).toMatchObject({ kind: 'client-input', message: 'model "multi" version 1 rejected the input: dimension "batch" is 2 in input "a" (dimension 0) but 3 in input "b" (dimension 0); the model declares them the same' });
  });

  it('one request breaking a named dimension does not fail the batch it would have joined', async () => {
    const runner = new ModelRunner(multi, 'model "multi" version 1', batching);
    expect(runner.batcher).toBeDefined();
    const results = await Promise.allSettled([runner.run(pair(1, 1)), runner.run(pair(1, 2)), runner.run(pair(2, 2))]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(results[1]).toMatchObject({ reason: { kind: 'client-input' } });
  });

  it('a full batch queue and an unload are overload', async () => {
    const runner = new ModelRunner(identity, 'model "id" version 1', { maxBatchSize: 8, maxQueueDelayMs: 1000, maxQueueSize: 1 });
    const first = runner.run([f32('x', [1, 2])]);
    await expect(runner.run([f32('x', [1, 2])])).rejects.toMatchObject({ kind: 'overload', message: expect.stringContaining('batch queue is full') });
    runner.close('unloaded');
    await expect(first).rejects.toMatchObject({ kind: 'overload', message: 'unloaded' });
  });
});

describe('Servable: the health counts read the kind', () => {
  it('counts answers and model faults as runs, faults as faults; rejected inputs and overload not at all', async () => {
    const servable = new Servable('f', 1, fragile, { maxBatchSize: 4, maxQueueDelayMs: 1000, maxQueueSize: 1 });
    const settle = (p: Promise<unknown>): Promise<unknown> => p.then(() => 'ok', (e: unknown) => failureKind(e));
    expect(await settle(servable.infer([f32('x', [1, 2], [1, 2])]))).toBe('ok');
    expect(await settle(servable.infer([f32('x', [1, 3], [9, 9, 9])]))).toBe('model-fault');
    expect(await settle(servable.infer([f32('x', [2])]))).toBe('client-input');
    const queued = servable.infer([f32('x', [1, 1], [1])]);
    expect(await settle(servable.infer([f32('x', [1, 1], [1])]))).toBe('overload');
    servable.runner.close('unloaded');
    expect(await settle(queued)).toBe('overload');
    expect({ runs: servable.runs, modelFaults: servable.modelFaults }).toEqual({ runs: 2, modelFaults: 1 });
  });
});
