/** `edgefleet model publish`: sign a model version's manifest and put its blocks on the broker. */
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Manifest, NodeArch } from '../../protocol/index.js';
import {
  MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, MODEL_NAME_RE, NODE_ARCHES, PAYLOAD_TYPES, encodeDocument, manifestSchema, semverSchema, signEnvelope,
} from '../../protocol/index.js';
import { intOption, listOf, parseOrUsage, required } from '../args.js';
import { splitArtifact } from '../artifact.js';
import type { Command } from '../command.js';
import { UsageError } from '../errors.js';
import { readInput, writeFileAtomic } from '../files.js';
import { SIGNING_KEY_OPTIONS, readSigningKeys, signingKeyPaths } from '../key-files.js';
import { BROKER_HELP, BROKER_OPTIONS, brokerSettings, withBroker } from '../mqtt.js';
import { loadProfile } from '../profile.js';
import type { ManifestOptions } from '../publish.js';
import { buildManifest, previousManifest, reusableCreatedAt, uploadArtifact } from '../publish.js';
import { JSON_OPTION, printResult } from '../result.js';
import { buildSelfTest } from '../self-test.js';
import { checkAgainstTrust } from '../trust-roles.js';

const OPTIONS = {
  name: { type: 'string' },
  version: { type: 'string' },
  ...SIGNING_KEY_OPTIONS,
  'block-size': { type: 'string' },
  expires: { type: 'string' },
  quantization: { type: 'string' },
  arch: { type: 'string', multiple: true },
  'min-agent-version': { type: 'string' },
  batching: { type: 'string' },
  'execution-providers': { type: 'string' },
  'self-test-input': { type: 'string' },
  'no-self-test': { type: 'boolean' },
  atol: { type: 'string' },
  rtol: { type: 'string' },
  'out-manifest': { type: 'string' },
  force: { type: 'boolean' },
  trust: { type: 'string' },
  'max-in-flight': { type: 'string' },
  'wait-ms': { type: 'string' },
  ...JSON_OPTION,
  ...BROKER_OPTIONS,
} as const;

export const modelPublish: Command = {
  name: 'model publish',
  summary: 'sign a model version and publish its blocks to the broker',
  help: `usage: edgefleet model publish FILE.onnx --name N --version V --signing-key MODELS.key --broker URL [options]

Computes the file's SHA-256 and per-block SHA-256 (PROTOCOL.md sections 4-5), runs the
model on a sample input with ONNX Runtime (CPU) to record a self-test, signs the
manifest with the models role's key(s), publishes every block retained (QoS 1) on
{root}/artifacts/{sha256}/blocks/{i}, and writes the signed manifest to a file that
'edgefleet deploy' embeds. Publishing the same bytes again is harmless: blocks the
broker already holds are not resent and the manifest comes out identical.

Options:
  --name N                   model name (a-z, 0-9, '_', '-')
  --version V                model version, an integer >= 1
  --signing-key FILE[,FILE...]  private key(s) of the models role (was --key;
                             default: the profile's signingKeys.models)
  --block-size BYTES         ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE} (default 65536)
  --expires 365d|TIME|never  manifest expiry from its creation (default 365d)
  --quantization Q           e.g. int8, fp16, fp32 (default fp32)
  --arch A[,A...]            compatible process.arch values, e.g. arm64,x64 (default: any)
  --min-agent-version X.Y.Z  oldest agent that may load it
  --batching SIZE:DELAY_MS   server-side batching, e.g. 32:2
  --execution-providers P[,P...]  preferred providers, e.g. tensorrt,cuda,cpu
  --self-test-input FILE     Open Inference Protocol JSON tensors ({"inputs": [...]} or [...]);
                             default: a generated deterministic input
  --no-self-test             publish without a self-test (e.g. the model needs a GPU-only op)
  --atol X, --rtol X         self-test tolerances (default 0.0001 and 0.001)
  --out-manifest FILE        where to write the signed manifest (default N-V.manifest.json)
  --force                    replace a manifest file for other bytes or another model
  --trust FILE               check the signature against this trust document first
  --max-in-flight N          unacknowledged block messages at a time (default 8)
  --wait-ms MS               how long to wait for the broker's retained blocks (default 1000)
  --json                     print the result as JSON instead

${BROKER_HELP}`,

  async run(args, io) {
    const { values, positionals } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: true }));
    if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? 'missing FILE.onnx' : `expected one FILE.onnx, got ${positionals.length}`);
    const file = positionals[0] as string;
    const opts = manifestOptions(values);
    const profile = await loadProfile(values.profile);
    const keyFiles = signingKeyPaths(values, 'models', profile, io.note);
    const blockSize = intOption(values['block-size'], 'block-size', MIN_BLOCK_SIZE, MAX_BLOCK_SIZE) ?? 65536;
    const maxInFlight = intOption(values['max-in-flight'], 'max-in-flight', 1, 1000) ?? 8;
    const waitMs = intOption(values['wait-ms'], 'wait-ms', 0, 600_000) ?? 1000;
    const selfTestOpts = values['no-self-test'] ? undefined : { inputFile: values['self-test-input'], atol: tolerance(values.atol, 'atol', 1e-4), rtol: tolerance(values.rtol, 'rtol', 1e-3) };
    if (selfTestOpts === undefined && values['self-test-input'] !== undefined) throw new UsageError('--self-test-input and --no-self-test exclude each other');
    const broker = await brokerSettings(values, { profile, warn: io.note });
    const outManifest = values['out-manifest'] ?? join(io.cwd, `${opts.name}-${opts.version}.manifest.json`);

    const bytes = await readInput(file, 'model file');
    const keys = await readSigningKeys(keyFiles, io.note);
    const artifact = splitArtifact(bytes, blockSize);
    const prev = await previousManifest(outManifest, opts, artifact, values.force === true);
    const selfTest = selfTestOpts && (await buildSelfTest(bytes, basename(file), selfTestOpts));
    const manifest = buildManifest(opts, artifact, selfTest, reusableCreatedAt(prev, opts.expires, Date.now()));
    const envelope = signEnvelope(PAYLOAD_TYPES.model, encodeDocument(manifestSchema, manifest, 'model manifest'), keys);
    await checkAgainstTrust(values.trust, 'models', envelope, PAYLOAD_TYPES.model);

    const upload = await withBroker(broker, (b) => uploadArtifact(b, artifact, { maxInFlight, waitMs }, io));
    const text = `${JSON.stringify(envelope, null, 2)}\n`;
    const unchanged = prev !== undefined && JSON.stringify(prev.envelope) === JSON.stringify(envelope);
    if (!unchanged) await writeFileAtomic(outManifest, text, { overwrite: true });
    const id = `${opts.name} version ${opts.version}`;
    const result = {
      name: opts.name, version: opts.version, sha256: artifact.sha256, size: artifact.size, manifest: outManifest, manifestUnchanged: unchanged,
      blocks: upload.total, uploaded: upload.uploaded, alreadyThere: upload.alreadyThere,
    };
    if (unchanged && upload.uploaded === 0) {
      const line = `${id} is already published: same bytes (sha256 ${artifact.sha256}), all ${upload.total} blocks on the broker, manifest ${outManifest} unchanged`;
      printResult(io, values.json === true, line, result);
      return;
    }
    const blocks = upload.alreadyThere > 0 ? `${upload.uploaded} of ${upload.total} blocks uploaded, ${upload.alreadyThere} already there` : `${upload.total} blocks uploaded`;
    const line = `published ${id}: sha256 ${artifact.sha256}, ${artifact.size} bytes, ${blocks}; manifest ${outManifest}${unchanged ? ' (unchanged)' : ''}`;
    printResult(io, values.json === true, line, result);
  },
};

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; strict: true; allowPositionals: true }>>['values'];

function manifestOptions(values: Values): ManifestOptions {
  const name = required(values.name, 'name', 'N');
  if (!MODEL_NAME_RE.test(name)) throw new UsageError(`--name "${name}" must be 1-63 characters from a-z, 0-9, '_', '-', starting with a-z or 0-9`);
  const version = intOption(required(values.version, 'version', 'V'), 'version', 1) as number;
  const compatibility = compatibilityOf(values);
  const runtime = runtimeOf(values);
  return {
    name,
    version,
    expires: values.expires ?? '365d',
    quantization: values.quantization ?? 'fp32',
    ...(compatibility !== undefined && { compatibility }),
    ...(runtime !== undefined && { runtime }),
  };
}

function compatibilityOf(values: Values): Manifest['compatibility'] {
  const arch = listOf(values.arch);
  const unknown = arch.filter((a) => !(NODE_ARCHES as readonly string[]).includes(a));
  if (unknown.length > 0) throw new UsageError(`--arch ${unknown.join(', ')} is not a Node process.arch value (${NODE_ARCHES.join(', ')})`);
  const min = values['min-agent-version'];
  if (min !== undefined && !semverSchema.safeParse(min).success) throw new UsageError(`--min-agent-version must be a semantic version such as 0.1.0, got "${min}"`);
  if (arch.length === 0 && min === undefined) return undefined;
  return { ...(arch.length > 0 && { arch: arch as NodeArch[] }), ...(min !== undefined && { minAgentVersion: min }) };
}

function runtimeOf(values: Values): Manifest['runtime'] {
  const providers = listOf(values['execution-providers']);
  const bad = providers.find((p) => !/^[a-z0-9_-]+$/.test(p));
  if (bad !== undefined) throw new UsageError(`--execution-providers: "${bad}" is not a provider name such as cuda or cpu`);
  let batching: { maxBatchSize: number; maxQueueDelayMs: number } | undefined;
  if (values.batching !== undefined) {
    const m = /^(\d+):(\d+(?:\.\d+)?)$/.exec(values.batching);
    if (!m || Number(m[1]) < 1) throw new UsageError(`--batching must be MAX_BATCH_SIZE:DELAY_MS such as 32:2, got "${values.batching}"`);
    batching = { maxBatchSize: Number(m[1]), maxQueueDelayMs: Number(m[2]) };
  }
  if (providers.length === 0 && batching === undefined) return undefined;
  return { ...(providers.length > 0 && { executionProviders: providers }), ...(batching !== undefined && { batching }) };
}

function tolerance(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const x = Number(value);
  if (value.trim() === '' || !Number.isFinite(x) || x < 0) throw new UsageError(`--${flag} must be a number >= 0, got "${value}"`);
  return x;
}
