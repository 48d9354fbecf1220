import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EdgefleetError } from '../agent/errors.js';
import { ModelRuntime } from '../agent/runtime/model-runtime.js';
import { warmUp } from '../agent/runtime/warmup.js';
import { VersionLoader } from '../agent/serving/loader.js';
import { ModelRegistry } from '../agent/serving/registry.js';
import { readWarmupFile } from '../agent/serving/warmup-file.js';
import { Metrics } from '../agent/telemetry/metrics.js';
import { divideModel, writeModelTree } from '../models/onnx/zoo.js';
import { getJson, postJson, startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';

interface LogLine {
  level: number;
  msg: string;
  model?: string;
  version?: number;
  err?: string;
  warmedUpOn?: string;
}

/** A pino logger whose lines land in `lines`, parsed. */
function capture(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { logger, lines };
}

const WARN = 40;
const GENERATED_FAILED = /^warm-up on a generated input failed; the version serves anyway/;
const divisors = (d: number[]): Record<string, unknown> => ({
  inputs: [
    { name: 'x', datatype: 'INT32', shape: [1, d.length], data: d.map((_, i) => 10 * (i + 1)) },
    { name: 'd', datatype: 'INT32', shape: [1, d.length], data: d },
  ],
});

async function writeWarmup(modelsDir: string, name: string, version: number, content: unknown): Promise<string> {
  const path = join(modelsDir, name, String(version), 'warmup.json');
  // Renamed into place, as an operator's copy should be: the repository never reads half a file.
  await writeFile(`${path}.tmp`, typeof content === 'string' ? content : JSON.stringify(content));
  await rename(`${path}.tmp`, path);
  return path;
}

async function statusOf(t: TestAgent, name: string): Promise<{ state: string; error: string }> {
  const { json } = await getJson(`${t.url}/v1/models/${name}`);
  const s = json.model_version_status?.[0];
  return { state: s?.state ?? 'missing', error: s?.status?.error_message ?? '' };
}

describe('the generated warm-up input', () => {
  it('holds a zero divisor, so an integer Div model fails on it', async () => {
    const runtime = new ModelRuntime({ config: { executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all', warmupRuns: 1, ortLogLevel: 'fatal' }, logger: pino({ level: 'silent' }) });
    await runtime.start();
    const { session } = await runtime.load(divideModel(), pino({ level: 'silent' }));
    try {
      const outcome = await warmUp(session, undefined, 1);
      expect(outcome).toMatchObject({ input: 'generated', failure: expect.stringMatching(/Integer division by zero/) });
    } finally {
      await session.release();
    }
  });
});

describe('a model whose warm-up needs real input', () => {
  const log = capture();
  let t: TestAgent;
  let paths: Record<string, string>;

  beforeAll(async () => {
    t = await startTestAgent(
      {},
      async (dir) => {
        paths = {};
        // No warmup.json: warmed up on a generated input, which fails.
        await writeModelTree(dir, 'generated', 1, divideModel());
        // warmup.json with divisors that are not zero: the warm-up passes only on these.
        await writeModelTree(dir, 'given', 1, divideModel());
        paths.given = await writeWarmup(dir, 'given', 1, divisors([2, 4, 5]));
        // Two requests, the second dividing by zero: each request runs, and a given one that fails refuses the version.
        await writeModelTree(dir, 'given-zero', 1, divideModel());
        paths.givenZero = await writeWarmup(dir, 'given-zero', 1, [divisors([1, 2]), divisors([3, 0])]);
        await writeModelTree(dir, 'bad-json', 1, divideModel());
        paths.badJson = await writeWarmup(dir, 'bad-json', 1, '{"inputs": [');
        await writeModelTree(dir, 'bad-schema', 1, divideModel());
        paths.badSchema = await writeWarmup(dir, 'bad-schema', 1, { inputs: [{ name: 'x', datatype: 'INT33', shape: [1, -2], data: 7, dims: [1] }], id: 'r1' });
        await writeModelTree(dir, 'misfit', 1, divideModel());
        paths.misfit = await writeWarmup(dir, 'misfit', 1, [divisors([1]), { inputs: [{ name: 'divisor', datatype: 'INT32', shape: [1, 1], data: [1] }] }]);
      },
      log.logger,
    );
  });
  afterAll(async () => {
    await t?.close();
  });

  const loadFailure = (name: string): LogLine | undefined => log.lines.find((l) => l.model === name && l.msg.startsWith('model version failed to load'));
  const available = (name: string): LogLine | undefined => log.lines.find((l) => l.model === name && l.msg === 'model version available');

  it('serves without warmup.json, answers a valid request over HTTP, and logs the failed generated warm-up as a warning', async () => {
    expect(await statusOf(t, 'generated')).toEqual({ state: 'AVAILABLE', error: '' });
    const warning = log.lines.find((l) => l.model === 'generated' && l.level === WARN);
    expect(warning?.msg).toMatch(GENERATED_FAILED);
    expect(warning?.msg).toContain('warmup.json');
    expect(warning?.err).toMatch(/Integer division by zero/);
    expect(available('generated')?.warmedUpOn).toBe('a generated input (failed)');

    const request = {
      inputs: [
        { name: 'x', datatype: 'INT32', shape: [1, 3], data: [7, -9, 100] },
        { name: 'd', datatype: 'INT32', shape: [1, 3], data: [2, 4, 7] },
      ],
    };
    const res = await postJson(`${t.url}/v2/models/generated/infer`, request);
    expect(res.status).toBe(200);
    expect(res.json.outputs).toEqual([{ name: 'q', datatype: 'INT32', shape: [1, 3], data: [3, -2, 14] }]);
  });

  it('answers a request that divides by zero with a 500 naming the model, and keeps serving', async () => {
    const res = await postJson(`${t.url}/v2/models/generated/infer`, divisors([1, 0]));
    expect(res.status).toBe(500);
    expect(res.json.error).toMatch(/model "generated" version 1 failed to run: .*division by zero/);
    expect((await getJson(`${t.url}/v2/models/generated/ready`)).status).toBe(200);
  });

  it('warms up on warmup.json when it is there: the version passes on its inputs, with no warning', async () => {
    expect(await statusOf(t, 'given')).toEqual({ state: 'AVAILABLE', error: '' });
    expect(available('given')?.warmedUpOn).toBe(paths.given);
    expect(log.lines.filter((l) => l.model === 'given' && l.level >= WARN)).toEqual([]);
    const res = await postJson(`${t.url}/v2/models/given/infer`, divisors([3, 5]));
    expect(res.json.outputs?.[0]?.data).toEqual([3, 4]);
  });

  it('runs every request of warmup.json, and refuses the version when one fails', async () => {
    const { state, error } = await statusOf(t, 'given-zero');
    expect(state).toBe('END');
    expect(error).toContain(`warm-up request 2 of ${paths.givenZero} failed to run`);
    expect(error).toMatch(/division by zero/);
    expect(loadFailure('given-zero')).toBeDefined();
  });

  it('refuses malformed JSON in warmup.json, naming the file and calling it an operator mistake', async () => {
    const { state, error } = await statusOf(t, 'bad-json');
    expect(state).toBe('END');
    expect(error).toContain(`${paths.badJson} is not a valid warm-up file (an operator mistake: fix or remove it`);
    expect(error).toMatch(/malformed JSON/);
    expect((await postJson(`${t.url}/v2/models/bad-json/infer`, divisors([1]))).status).toBe(503);
  });

  it('refuses a warmup.json that breaks its schema, with every problem at once', async () => {
    const { state, error } = await statusOf(t, 'bad-schema');
    expect(state).toBe('END');
    expect(error).toContain(`${paths.badSchema} is not a valid warm-up file`);
    expect(error).toContain('inputs[0].datatype: datatype must be one of BOOL');
    expect(error).toContain('inputs[0].shape[1]: dimensions must be >= 0');
    expect(error).toContain('inputs[0].data: data must be an array');
    expect(error).toMatch(/inputs\[0\]: Unrecognized key: "dims"/i);
    expect(error).toMatch(/Unrecognized key: "id"/i);
  });

  it('refuses a warmup.json whose request does not fit the model, through the HTTP decoder', async () => {
    const { state, error } = await statusOf(t, 'misfit');
    expect(state).toBe('END');
    expect(error).toContain(`${paths.misfit} is not a valid warm-up file`);
    expect(error).toContain('request 2 of 2 does not fit the model: unknown input "divisor"; the model\'s inputs are "x", "d"');
  });

  it('loads a refused version once its warmup.json is fixed, though the model file did not change', async () => {
    await writeWarmup(t.modelsDir, 'bad-json', 1, divisors([7]));
    await waitFor(async () => (await statusOf(t, 'bad-json')).state === 'AVAILABLE', 10_000, 'bad-json to load after the fix');
    expect(available('bad-json')?.warmedUpOn).toBe(paths.badJson);
  });
});

describe("a fleet model's selfTest inputs", () => {
  it('are what the loader warms up on, before any generated input', async () => {
    const log = capture();
    const runtime = new ModelRuntime({ config: { executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all', warmupRuns: 2, ortLogLevel: 'fatal' }, logger: log.logger });
    await runtime.start();
    const registry = new ModelRegistry();
    const loader = new VersionLoader({ runtime, registry, metrics: new Metrics(), logger: log.logger });
    const selfTest = divisors([2, 5]) as { inputs: { name: string; datatype: 'INT32'; shape: number[]; data: number[] }[] };
    const servable = await loader.load('fleet', 1, divideModel(), { warmup: { from: 'self-test', requests: [selfTest] } });
    expect(registry.isAvailable('fleet', 1)).toBe(true);
    expect(log.lines.find((l) => l.msg === 'model version available')?.warmedUpOn).toBe("the manifest's selfTest");
    expect(log.lines.filter((l) => l.level >= WARN)).toEqual([]);

    // Inputs that cannot run refuse the version: a given warm-up is real input, not a guess.
    const zero = divisors([0]) as typeof selfTest;
    const err = await loader.load('fleet', 2, divideModel(), { warmup: { from: 'self-test', requests: [zero] } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EdgefleetError);
    expect((err as EdgefleetError).code).toBe('MODEL_LOAD');
    expect((err as Error).message).toMatch(/^warm-up request 1 of the manifest's selfTest failed to run: .*division by zero/);
    expect(registry.isAvailable('fleet', 2)).toBe(false);
    await servable.retire();
  });
});

describe('warmup.json', () => {
  const file = (name: string): string => join(process.env.TMPDIR ?? '/tmp', `edgefleet-warmup-${process.pid}-${name}.json`);

  it('holds one request or a list of them; a missing file is no warm-up file', async () => {
    await writeFile(file('one'), JSON.stringify(divisors([1])));
    expect(await readWarmupFile(file('one'))).toEqual([divisors([1])]);
    await writeFile(file('list'), JSON.stringify([divisors([1]), divisors([2, 3])]));
    expect(await readWarmupFile(file('list'))).toEqual([divisors([1]), divisors([2, 3])]);
    expect(await readWarmupFile(file('absent'))).toBeUndefined();
  });

  it('names the request and field of each problem', async () => {
    await writeFile(file('empty'), '[]');
    await expect(readWarmupFile(file('empty'))).rejects.toThrow(/is not a valid warm-up file .*: the list of requests must not be empty$/);
    await writeFile(file('nested'), JSON.stringify([divisors([1]), { inputs: [] }, 'x']));
    const err = (await readWarmupFile(file('nested')).catch((e: unknown) => e)) as EdgefleetError;
    expect(err.code).toBe('CONFIG');
    expect(err.message).toContain('request 2: inputs: inputs must not be empty');
    expect(err.message).toMatch(/request 3: .*expected object/);
  });
});
