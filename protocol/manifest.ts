/**
 * The model manifest (docs/protocol.md section 4), signed by the `models` role. A
 * device checks it before downloading a byte.
 */
import { z } from 'zod';
import { ProtocolError } from './errors.js';
import { modelNameSchema, modelVersionSchema, parseTime, sha256HexSchema, timeSchema, toMillis } from './names.js';
import { oipTensorSchema } from './oip-tensor.js';
import { compareSemver, semverSchema } from './semver.js';
import { PAYLOAD_TYPES, requireUnexpiredTrust, verifyRoleEnvelope } from './trust.js';
import type { Trust } from './trust.js';
import { parsePayload } from './validate.js';

export const MIN_BLOCK_SIZE = 1024;
/** The largest message some managed brokers take. */
export const MAX_BLOCK_SIZE = 128 * 1024;

/** Node's `process.arch` values. */
export const NODE_ARCHES = [
  'arm', 'arm64', 'ia32', 'loong64', 'mips', 'mipsel', 'ppc', 'ppc64', 'riscv64', 's390', 's390x', 'x64',
] as const;
export type NodeArch = (typeof NODE_ARCHES)[number];

const artifactSchema = z
  .object({
    format: z.literal('onnx', 'format must be "onnx"'),
    size: z.number().int('size must be an integer').min(1, 'size must be at least 1 byte').max(Number.MAX_SAFE_INTEGER),
    sha256: sha256HexSchema,
    blockSize: z
      .number()
      .int('blockSize must be an integer')
      .min(MIN_BLOCK_SIZE, `blockSize must be at least ${MIN_BLOCK_SIZE} (1 KiB)`)
      .max(MAX_BLOCK_SIZE, `blockSize must be at most ${MAX_BLOCK_SIZE} (128 KiB)`),
    blockSha256: z.array(sha256HexSchema),
  })
  .superRefine((a, ctx) => {
    // Only meaningful when size and blockSize are themselves valid.
    const sizesOk = Number.isSafeInteger(a.size) && a.size >= 1 && Number.isInteger(a.blockSize) &&
      a.blockSize >= MIN_BLOCK_SIZE && a.blockSize <= MAX_BLOCK_SIZE;
    const expected = blockCount(a.size, a.blockSize);
    if (sizesOk && a.blockSha256.length !== expected) {
      ctx.addIssue({
        code: 'custom',
        path: ['blockSha256'],
        message: `has ${a.blockSha256.length} entries, expected ceil(size / blockSize) = ${expected}`,
      });
    }
  });

export const manifestSchema = z
  .object({
    schema: z.literal(1, 'schema must be 1'),
    name: modelNameSchema,
    version: modelVersionSchema,
    createdAt: timeSchema,
    expiresAt: timeSchema.optional(),
    artifact: artifactSchema,
    quantization: z.string().min(1, 'quantization must not be empty'),
    compatibility: z
      .object({
        arch: z.array(z.enum(NODE_ARCHES, `arch must be one of Node's process.arch values: ${NODE_ARCHES.join(', ')}`))
          .min(1, 'arch must list at least one architecture')
          .optional(),
        minAgentVersion: semverSchema.optional(),
      })
      .optional(),
    runtime: z
      .object({
        executionProviders: z.array(z.string().regex(/^[a-z0-9_-]+$/, 'execution provider names are lowercase, e.g. "cuda"')).optional(),
        batching: z
          .object({
            maxBatchSize: z.number().int().min(1, 'maxBatchSize must be at least 1'),
            maxQueueDelayMs: z.number().min(0, 'maxQueueDelayMs must be >= 0'),
          })
          .optional(),
      })
      .optional(),
    selfTest: z
      .object({
        inputs: z.array(oipTensorSchema).min(1, 'selfTest needs at least one input'),
        outputs: z.array(oipTensorSchema),
        // Defaults match the example in docs/protocol.md: loose enough for int8 models.
        atol: z.number().min(0).default(1e-4),
        rtol: z.number().min(0).default(1e-3),
      })
      .optional(),
  })
  .superRefine((m, ctx) => {
    const created = parseTime(m.createdAt);
    const expires = m.expiresAt === undefined ? undefined : parseTime(m.expiresAt);
    if (created !== undefined && expires !== undefined && expires <= created) {
      ctx.addIssue({ code: 'custom', path: ['expiresAt'], message: 'must be after createdAt' });
    }
  });
export type Manifest = z.infer<typeof manifestSchema>;

export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

export interface ManifestExpectation {
  /** Name and version of the desired entry that refers to this manifest. */
  name: string;
  version: number;
  now: Date | number;
  /** This device's `process.arch`. */
  arch: string;
  /** This agent's version (package.json). */
  agentVersion: string;
}

/** Signature, schema, identity, expiry and compatibility of a manifest envelope. */
export function verifyManifest(trust: Trust, envelope: unknown, expect: ManifestExpectation): Manifest {
  requireUnexpiredTrust(trust, expect.now);
  const bytes = verifyRoleEnvelope(trust, 'models', envelope, PAYLOAD_TYPES.model);
  const manifest = parsePayload(manifestSchema, bytes, 'model manifest');
  const id = `${manifest.name} version ${manifest.version}`;
  if (manifest.name !== expect.name || manifest.version !== expect.version) {
    throw new ProtocolError('MISMATCH', `manifest is for ${id} but the desired entry names ${expect.name} version ${expect.version}`);
  }
  const expires = manifest.expiresAt === undefined ? undefined : parseTime(manifest.expiresAt);
  if (expires !== undefined && toMillis(expect.now) >= expires) {
    throw new ProtocolError('EXPIRED', `manifest of ${id} expired at ${manifest.expiresAt}; publish it again with a later expiresAt`);
  }
  checkCompatibility(manifest, id, expect);
  return manifest;
}

function checkCompatibility(manifest: Manifest, id: string, expect: ManifestExpectation): void {
  const { arch, minAgentVersion } = manifest.compatibility ?? {};
  if (arch !== undefined && !(arch as readonly string[]).includes(expect.arch)) {
    throw new ProtocolError('INCOMPATIBLE', `${id} supports arch ${arch.join(', ')}; this device is ${expect.arch}`);
  }
  if (minAgentVersion !== undefined && agentTooOld(expect.agentVersion, minAgentVersion)) {
    throw new ProtocolError('INCOMPATIBLE', `${id} needs agent ${minAgentVersion} or later; this agent is ${expect.agentVersion}, upgrade it`);
  }
}

function agentTooOld(agentVersion: string, minAgentVersion: string): boolean {
  try {
    return compareSemver(agentVersion, minAgentVersion) < 0;
  } catch {
    throw new ProtocolError('INCOMPATIBLE', `agent version "${agentVersion}" is not a semantic version; cannot check minAgentVersion`);
  }
}
