/**
 * `npm run models`: train the MNIST MLP, export it as fp32 ONNX, quantize it
 * to int8, and score both with onnxruntime-node on the held-out digits.
 *
 * `buildMnistModels` is the reusable part (the demo calls it); running this
 * file also measures latency, prints the comparison table, and exits non-zero
 * when int8 loses more than MAX_ACCURACY_DROP points, so CI catches a bad
 * quantizer.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { loadOrt } from '../../agent/runtime/ort.js';
import { mlpModel } from '../onnx/zoo.js';
import { DEFAULT_TEST_FRACTION, loadMnist } from './data.js';
import { accuracyPercent, createSession, measureLatency } from './evaluate.js';
import { quantizeDynamic } from './quantize.js';
import { accuracyOf, predictClasses, TRAIN_DEFAULTS, trainMlp } from './train.js';

/** Most accuracy (percentage points on the test split) int8 may lose against fp32. */
export const MAX_ACCURACY_DROP = 1;

/** Bump by hand for changes the source hash cannot see (e.g. a dependency's behaviour). */
const CODE_VERSION = 1;
const FILES = { fp32: 'mnist-fp32.onnx', int8: 'mnist-int8.onnx', meta: 'mnist-meta.json' } as const;
const HERE = path.dirname(fileURLToPath(import.meta.url));

export interface BuildOptions {
  outDir: string;
  /** Training epochs (default TRAIN_DEFAULTS.epochs). */
  epochs?: number;
  seed?: number;
  /** Retrain even when a matching cached build exists. */
  force?: boolean;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export interface BuiltModel {
  path: string;
  /** File size in bytes. */
  bytes: number;
  /** Accuracy on the held-out test split, in percent (0–100), measured with onnxruntime-node. */
  accuracy: number;
}

export interface BuildResult {
  fp32: BuiltModel;
  int8: BuiltModel;
  /** True when the files and scores were reused from a matching earlier build. */
  cached: boolean;
}

interface Meta {
  key: { codeVersion: string; seed: number; epochs: number; testFraction: number };
  fp32: { bytes: number; sha256: string; accuracy: number };
  int8: { bytes: number; sha256: string; accuracy: number };
}

const sha256 = (data: Uint8Array | string): string => createHash('sha256').update(data).digest('hex');

/**
 * CODE_VERSION plus a hash of the sources that decide the models' bytes and
 * scores, so editing the trainer or quantizer invalidates the cache by itself.
 */
async function codeVersion(): Promise<string> {
  const ext = path.extname(fileURLToPath(import.meta.url));
  const sources = ['data', 'train', 'spec', 'quantize', 'evaluate', 'build', '../onnx/builder', '../onnx/zoo'];
  const hash = createHash('sha256').update(String(CODE_VERSION));
  for (const s of sources) {
    // Missing sources (e.g. a bundled build) leave only CODE_VERSION to go by.
    hash.update(await readFile(path.join(HERE, s + ext)).catch(() => new Uint8Array()));
  }
  return `${CODE_VERSION}-${hash.digest('hex').slice(0, 16)}`;
}

/** Write via a temp file and rename, so a reader never sees half a model. */
async function writeAtomic(file: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

function result(outDir: string, meta: Meta, cached: boolean): BuildResult {
  const entry = (k: 'fp32' | 'int8'): BuiltModel => ({
    path: path.join(outDir, FILES[k]), bytes: meta[k].bytes, accuracy: meta[k].accuracy,
  });
  return { fp32: entry('fp32'), int8: entry('int8'), cached };
}

/** The cached build, if its key matches and both model files still hash to what was recorded. */
async function readCache(outDir: string, key: Meta['key']): Promise<Meta | undefined> {
  try {
    const meta = JSON.parse(await readFile(path.join(outDir, FILES.meta), 'utf8')) as Meta;
    if (JSON.stringify(meta.key) !== JSON.stringify(key)) return undefined;
    for (const k of ['fp32', 'int8'] as const) {
      if (sha256(await readFile(path.join(outDir, FILES[k]))) !== meta[k].sha256) return undefined;
    }
    return meta;
  } catch {
    return undefined;
  }
}

/** Train, export, quantize and score; returns the metadata that is then written. */
async function trainAndExport(outDir: string, key: Meta['key'], log: (line: string) => void): Promise<Meta> {
  const { train, test } = loadMnist(key.testFraction);
  log(`mnist: ${train.count} train / ${test.count} held-out test digits; training ${key.epochs} epochs (seed ${key.seed})`);
  const t0 = performance.now();
  const weights = trainMlp(train, {
    epochs: key.epochs,
    seed: key.seed,
    onEpoch: (s) => log(`  epoch ${s.epoch + 1}: loss ${s.loss.toFixed(4)}, train acc ${(100 * s.trainAccuracy).toFixed(2)}%`),
  });
  const tsAcc = 100 * accuracyOf(predictClasses(weights, test), test.labels);
  log(`trained in ${((performance.now() - t0) / 1000).toFixed(1)} s; TypeScript forward pass: ${tsAcc.toFixed(2)}% test`);
  const fp32 = mlpModel({ weights });
  const models = { fp32, int8: quantizeDynamic(fp32) };
  const ort = await loadOrt();
  const score = async (k: 'fp32' | 'int8'): Promise<Meta['fp32']> => {
    const session = await createSession(ort, models[k]);
    try {
      return { bytes: models[k].length, sha256: sha256(models[k]), accuracy: await accuracyPercent(ort, session, test) };
    } finally {
      await session.release();
    }
  };
  const meta: Meta = { key, fp32: await score('fp32'), int8: await score('int8') };
  await writeAtomic(path.join(outDir, FILES.fp32), models.fp32);
  await writeAtomic(path.join(outDir, FILES.int8), models.int8);
  return meta;
}

/**
 * Build (or reuse) `mnist-fp32.onnx` and `mnist-int8.onnx` in `outDir`. Both
 * take `x` FP32 [batch, 784] (pixels in [0, 1]) and give `probs` FP32 [batch, 10].
 * A build is reused when `mnist-meta.json` records the same seed, epochs,
 * split and code version and both files still match their recorded hashes.
 */
export async function buildMnistModels(opts: BuildOptions): Promise<BuildResult> {
  const { outDir, epochs = TRAIN_DEFAULTS.epochs, seed = TRAIN_DEFAULTS.seed, force = false } = opts;
  const log = opts.log ?? ((): void => undefined);
  const key: Meta['key'] = { codeVersion: await codeVersion(), seed, epochs, testFraction: DEFAULT_TEST_FRACTION };
  const cached = force ? undefined : await readCache(outDir, key);
  if (cached) {
    log(`reusing cached models in ${outDir} (seed ${seed}, ${epochs} epochs, code ${key.codeVersion})`);
    return result(outDir, cached, true);
  }
  await mkdir(outDir, { recursive: true });
  // Drop the old metadata first: if this build dies halfway, nothing claims the files match.
  await rm(path.join(outDir, FILES.meta), { force: true });
  const meta = await trainAndExport(outDir, key, log);
  await writeAtomic(path.join(outDir, FILES.meta), `${JSON.stringify(meta, null, 2)}\n`);
  return result(outDir, meta, false);
}

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_c, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n');
}

function intArg(name: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}: ${value}`);
  return n;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: path.join(HERE, 'dist') },
      epochs: { type: 'string' }, seed: { type: 'string' }, runs: { type: 'string', default: '1000' },
      force: { type: 'boolean', default: false },
    },
  });
  const epochs = intArg('epochs', values.epochs, 1);
  const seed = intArg('seed', values.seed, 0);
  const runs = intArg('runs', values.runs, 1) ?? 1000;
  const built = await buildMnistModels({
    outDir: values.out, force: values.force, log: (l) => console.log(l),
    ...(epochs === undefined ? {} : { epochs }), ...(seed === undefined ? {} : { seed }),
  });
  const ort = await loadOrt();
  const { test } = loadMnist();
  const models = [['fp32', built.fp32], ['int8', built.int8]] as const;
  const sessions = await Promise.all(models.map(async ([, m]) => createSession(ort, await readFile(m.path))));
  const latency = await measureLatency(ort, sessions, test, { runs });
  await Promise.all(sessions.map((s) => s.release()));
  const rows = [['model', 'size bytes', 'test accuracy %', 'p50 latency ms']];
  models.forEach(([name, m], i) => {
    rows.push([name, String(m.bytes), m.accuracy.toFixed(2), latency[i]!.p50Ms.toFixed(4)]);
  });
  console.log(`\n${table(rows)}\n(held-out test: ${test.count} digits; latency: batch 1, ${runs} runs, 1 thread)`);
  const drop = built.fp32.accuracy - built.int8.accuracy;
  if (drop > MAX_ACCURACY_DROP) {
    console.error(`int8 loses ${drop.toFixed(2)} points against fp32 (limit ${MAX_ACCURACY_DROP})`);
    return 1;
  }
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().then((code) => { process.exitCode = code; }, (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
