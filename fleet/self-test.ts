/**
 * The manifest's self-test (docs/protocol.md sections 4 and 8): the publisher runs
 * the model on a sample input with the agent's own runtime and records the
 * outputs, so a device can check that the file it loaded computes what the
 * publisher saw. The tensors travel in Open Inference Protocol JSON form, and
 * the agent's HTTP codecs convert them, so both sides read them the same way.
 */
import { encodeJsonFlat } from '../agent/codec/json-data.js';
import { parseV2Request } from '../agent/codec/v2.js';
import { loadOrt } from '../agent/runtime/ort.js';
import { createSession } from '../agent/runtime/session.js';
import type { ModelSession } from '../agent/runtime/session.js';
import type { HostTensor } from '../agent/runtime/tensor.js';
import { warmupInputs } from '../agent/runtime/warmup.js';
import type { Manifest, OipTensor } from '../protocol/index.js';
import { oipTensorSchema } from '../protocol/index.js';
import { FailureError, errorMessage } from './errors.js';
import { readJsonInput } from './files.js';

export type SelfTest = NonNullable<Manifest['selfTest']>;

export interface SelfTestOptions {
  /** OIP JSON tensors: `{"inputs": [...]}` or a bare array; generated when absent. */
  inputFile?: string | undefined;
  atol: number;
  rtol: number;
}

const SESSION_OPTIONS = {
  executionProviders: ['cpu'],
  intraOpNumThreads: 0,
  interOpNumThreads: 0,
  graphOptimizationLevel: 'all',
  warmupRuns: 0,
} as const;

export async function buildSelfTest(model: Uint8Array, what: string, opts: SelfTestOptions): Promise<SelfTest> {
  const ort = await loadOrt();
  let session: ModelSession;
  try {
    // CPU only: the reference outputs should not depend on the publisher's GPU.
    session = await createSession(ort, model, ['cpu'], { ...SESSION_OPTIONS, executionProviders: ['cpu'] });
  } catch (err) {
    throw new FailureError(`ONNX Runtime cannot load ${what}: ${errorMessage(err)}`);
  }
  try {
    const inputs = opts.inputFile === undefined ? warmupInputs(session.inputs) : await readInputs(opts.inputFile, session);
    let outputs: HostTensor[];
    try {
      outputs = await session.run(inputs);
    } catch (err) {
      throw new FailureError(`running ${what} on the self-test input failed: ${errorMessage(err)}`);
    }
    return { inputs: inputs.map((t) => toOip(t, 'input')), outputs: outputs.map((t) => toOip(t, 'output')), atol: opts.atol, rtol: opts.rtol };
  } finally {
    await session.release();
  }
}

async function readInputs(path: string, session: ModelSession): Promise<HostTensor[]> {
  const json = await readJsonInput(path, 'self-test input');
  const request = Array.isArray(json) ? { inputs: json } : json;
  try {
    return parseV2Request(request, { inputs: session.inputs, outputs: session.outputs }).inputs;
  } catch (err) {
    throw new FailureError(`self-test input ${path}: ${errorMessage(err)}`);
  }
}

function toOip(t: HostTensor, role: 'input' | 'output'): OipTensor {
  const tensor = { name: t.name, datatype: t.datatype, shape: t.shape, data: encodeJsonFlat(t.datatype, t.data) };
  const parsed = oipTensorSchema.safeParse(tensor);
  if (!parsed.success) {
    // encodeJsonFlat writes NaN/Infinity and INT64 beyond 2^53 as strings, which selfTest cannot carry.
    throw new FailureError(
      `self-test ${role} "${t.name}" cannot be recorded (${parsed.error.issues[0]?.message ?? 'invalid'}); ` +
        'pass --self-test-input with values that give finite outputs, or --no-self-test',
    );
  }
  return parsed.data;
}

