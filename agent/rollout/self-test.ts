import type { Manifest } from '../../protocol/manifest.js';
import { halfArrayToFloat } from '../codec/fp16.js';
import { decodeJson } from '../codec/json-data.js';
import { parseV2Request } from '../codec/v2.js';
import type { HostTensor } from '../runtime/tensor.js';
import type { Servable } from '../serving/servable.js';
import { RolloutError } from './errors.js';

export class SelfTestError extends RolloutError<'SELF_TEST'> {
  constructor(message: string) {
    super('SELF_TEST', message);
    this.name = 'SelfTestError';
  }
}

type SelfTest = NonNullable<Manifest['selfTest']>;

/**
 * Runs the manifest's self-test on a loaded version before it takes traffic:
 * the inputs go through the same decoder as a real v2 request, and every
 * expected output must match within |got - want| <= atol + rtol * |want|.
 */
export async function runSelfTest(servable: Servable, selfTest: SelfTest): Promise<void> {
  let request;
  try {
    request = parseV2Request({ inputs: selfTest.inputs, outputs: selfTest.outputs.map((o) => ({ name: o.name })) }, servable.session);
  } catch (err) {
    throw new SelfTestError(`self-test inputs do not fit the model: ${(err as Error).message}`);
  }
  let outputs: HostTensor[];
  try {
    outputs = (await servable.infer(request.inputs, request.outputs?.map((o) => o.name))).value;
  } catch (err) {
    throw new SelfTestError(`self-test run failed: ${(err as Error).message}`);
  }
  for (const want of selfTest.outputs) {
    const got = outputs.find((o) => o.name === want.name);
    if (!got) throw new SelfTestError(`self-test: the model produced no output "${want.name}"`);
    compare(got, want, selfTest.atol, selfTest.rtol);
  }
}

function compare(got: HostTensor, want: SelfTest['outputs'][number], atol: number, rtol: number): void {
  if (got.datatype !== want.datatype) throw new SelfTestError(`self-test: output "${want.name}" is ${got.datatype}, expected ${want.datatype}`);
  if (got.shape.join('x') !== want.shape.join('x')) throw new SelfTestError(`self-test: output "${want.name}" has shape [${got.shape.join(', ')}], expected [${want.shape.join(', ')}]`);
  const decoded = decodeJson(want.data, want.datatype, { input: want.name, expectedShape: want.shape }).data;
  // FP16 travels as half bits; compare the values they stand for.
  const half = got.datatype === 'FP16';
  const expected = half ? halfArrayToFloat(decoded as Uint16Array) : decoded;
  const a = half ? halfArrayToFloat(got.data as Uint16Array) : got.data;
  for (let i = 0; i < expected.length; i++) {
    const g = toNumber(a[i]);
    const w = toNumber(expected[i]);
    const ok = Number.isNaN(w) ? Number.isNaN(g) : typeof a[i] === 'string' ? a[i] === expected[i] : Math.abs(g - w) <= atol + rtol * Math.abs(w);
    if (!ok) throw new SelfTestError(`self-test: output "${want.name}" element ${i} is ${String(a[i])}, expected ${String(expected[i])} (atol ${atol}, rtol ${rtol})`);
  }
}

const toNumber = (v: unknown): number => (typeof v === 'bigint' ? Number(v) : typeof v === 'number' ? v : NaN);
