import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { parseV2Request, type ModelIo } from '../codec/v2.js';
import { EdgefleetError, errorMessage } from '../errors.js';
import type { WarmupRequests } from '../runtime/warmup.js';
import { DATATYPES } from '../runtime/tensor.js';

/** The warm-up records beside a model in the repository: `{dir}/{name}/{version}/warmup.json`. */
export const WARMUP_FILE = 'warmup.json';

/**
 * One tensor as a v2 infer request writes it in JSON. The elements are left
 * to the HTTP API's own decoder (codec/v2.ts), so they mean exactly what they
 * would in a request: "NaN" in a float tensor, INT64 as a decimal string.
 */
const tensorSchema = z
  .object({
    name: z.string().min(1, 'name must not be empty'),
    datatype: z.enum(DATATYPES, `datatype must be one of ${DATATYPES.join(', ')}`),
    shape: z.array(z.number().int('dimensions are integers').min(0, 'dimensions must be >= 0'), 'shape must be an array of dimensions'),
    data: z.array(z.unknown(), 'data must be an array (flat or nested, row-major)'),
  })
  .strict();

const requestSchema = z.object({ inputs: z.array(tensorSchema, 'inputs must be an array of tensors').min(1, 'inputs must not be empty') }).strict();

/**
 * warmup.json: one v2 infer request `{"inputs": [...]}`, or an array of them
 * run in order (TensorFlow Serving's warm-up records, Triton's model_warmup).
 */
export const warmupFileSchema = z.preprocess(
  (v) => (Array.isArray(v) ? v : [v]),
  z.array(requestSchema).min(1, 'the list of requests must not be empty'),
);
export type WarmupRequest = z.infer<typeof requestSchema>;

/** A warm-up file the operator got wrong; the version is not loaded until the file changes. */
function invalid(path: string, problems: string): EdgefleetError {
  return new EdgefleetError(
    'CONFIG',
    `${path} is not a valid warm-up file (an operator mistake: fix or remove it; the version loads once the file changes): ${problems}`,
  );
}

/** Reads and checks a warm-up file; undefined when there is none. Every problem is reported at once. */
export async function readWarmupFile(path: string): Promise<WarmupRequest[] | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw invalid(path, `cannot be read: ${errorMessage(err)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw invalid(path, `malformed JSON: ${errorMessage(err)}`);
  }
  const parsed = warmupFileSchema.safeParse(json);
  if (!parsed.success) throw invalid(path, parsed.error.issues.map((i) => `${where(i.path, Array.isArray(json))}${i.message}`).join('; '));
  return parsed.data;
}

/** `request 2: inputs[0].shape: ` for an issue's path (a single request was checked as a list of one). */
function where(path: readonly PropertyKey[], list: boolean): string {
  const [index, ...rest] = path;
  const request = list && typeof index === 'number' ? `request ${index + 1}: ` : '';
  const field = rest.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('');
  return `${request}${field === '' ? '' : `${field}: `}`;
}

/** Where a version's warm-up input comes from (docs/configuration.md, "Warm-up"). */
export type WarmupSource =
  /** The manifest's selfTest inputs, already checked by the manifest's schema. */
  | { from: 'self-test'; requests: readonly WarmupRequest[] }
  /** warmup.json beside the model in the repository; it may be absent. */
  | { from: 'file'; path: string };

/**
 * The warm-up requests of a source, decoded for the model by the v2 decoder
 * the HTTP API uses; undefined when the source has none (no warmup.json).
 * A request that does not fit the model is the giver's mistake and stops
 * the load, as a malformed file does.
 */
export async function resolveWarmup(source: WarmupSource, model: ModelIo): Promise<WarmupRequests | undefined> {
  const requests = source.from === 'file' ? await readWarmupFile(source.path) : source.requests;
  if (requests === undefined) return undefined;
  const name = source.from === 'file' ? source.path : "the manifest's selfTest";
  return {
    source: name,
    requests: requests.map((request, k) => {
      try {
        return parseV2Request(request, model).inputs;
      } catch (err) {
        const problem = `request ${k + 1} of ${requests.length} does not fit the model: ${errorMessage(err)}`;
        throw source.from === 'file' ? invalid(source.path, problem) : new EdgefleetError('MODEL_LOAD', `warm-up ${problem} (${name})`);
      }
    }),
  };
}
