/**
 * The work behind `edgefleet model publish`: the manifest, the check against
 * a manifest published before, and the upload of the blocks that are not
 * already on the broker. Publishing the same bytes again changes nothing:
 * the manifest keeps its createdAt (Ed25519 signatures are deterministic, so
 * the envelope is byte-identical) and blocks already retained are not resent.
 */
import type { Manifest } from '../protocol/index.js';
import { MIN_BLOCK_SIZE, formatTime, parseTime } from '../protocol/index.js';
import { expiryOption } from './args.js';
import type { Artifact } from './artifact.js';
import { blockMessages, missingBlocks } from './artifact.js';
import type { CommandIo } from './command.js';
import { FailureError } from './errors.js';
import { exists } from './files.js';
import type { ManifestFile } from './manifests.js';
import { readManifestFile } from './manifests.js';
import type { Broker } from './mqtt.js';
import { createProgress } from './progress.js';
import type { SelfTest } from './self-test.js';

export interface ManifestOptions {
  name: string;
  version: number;
  /** Duration or time for expiresAt, or "never". */
  expires: string;
  quantization: string;
  compatibility?: Manifest['compatibility'];
  runtime?: Manifest['runtime'];
}

export function buildManifest(opts: ManifestOptions, artifact: Artifact, selfTest: SelfTest | undefined, createdAt: string): Manifest {
  const created = parseTime(createdAt) ?? Date.now();
  return {
    schema: 1,
    name: opts.name,
    version: opts.version,
    createdAt,
    ...(opts.expires !== 'never' && { expiresAt: expiryOption(opts.expires, 'expires', created) }),
    artifact: {
      format: 'onnx',
      size: artifact.size,
      sha256: artifact.sha256,
      blockSize: artifact.blockSize,
      blockSha256: artifact.blockSha256,
    },
    quantization: opts.quantization,
    ...(opts.compatibility !== undefined && { compatibility: opts.compatibility }),
    ...(opts.runtime !== undefined && { runtime: opts.runtime }),
    ...(selfTest !== undefined && { selfTest }),
  };
}

/**
 * The manifest already at `path` for these same bytes, if any; the createdAt
 * to reuse comes from it. Refuses (without --force) to replace a manifest of
 * the same name and version for other bytes: a device that has that version
 * would never fetch the new bytes.
 */
export async function previousManifest(path: string, opts: ManifestOptions, artifact: Artifact, force: boolean): Promise<ManifestFile | undefined> {
  if (!(await exists(path))) return undefined;
  let prev: ManifestFile;
  try {
    prev = await readManifestFile(path);
  } catch (err) {
    if (force) return undefined;
    throw err;
  }
  const { name, version, artifact: a } = prev.manifest;
  const sameVersion = name === opts.name && version === opts.version;
  if (sameVersion && a.sha256 === artifact.sha256) return prev;
  if (force) return undefined;
  if (sameVersion) {
    throw new FailureError(
      `${path} already holds ${name} version ${version} with different bytes (sha256 ${a.sha256.slice(0, 12)}…); ` +
        'publish them as a new --version (devices never fetch a version they already have again), or pass --force',
    );
  }
  throw new FailureError(`${path} holds the manifest of ${name} version ${version}; choose another --out-manifest or pass --force`);
}

/** createdAt of the previous manifest, unless reusing it would make the new one expire already. */
export function reusableCreatedAt(prev: ManifestFile | undefined, expires: string, now: number): string {
  const created = prev === undefined ? undefined : parseTime(prev.manifest.createdAt);
  if (prev === undefined || created === undefined) return formatTime(now);
  if (expires !== 'never' && (parseTime(expiryOption(expires, 'expires', created)) ?? 0) <= now) return formatTime(now);
  return prev.manifest.createdAt;
}

export interface UploadResult {
  total: number;
  alreadyThere: number;
  uploaded: number;
}

/**
 * Asks the broker which blocks it already retains (intact), then publishes the
 * others retained at QoS 1, `maxInFlight` at a time, with progress on stderr.
 */
export async function uploadArtifact(
  broker: Broker, artifact: Artifact, opts: { maxInFlight: number; waitMs: number }, io: CommandIo,
): Promise<UploadResult> {
  const root = broker.topicRoot;
  const total = artifact.blocks.length;
  checkPacketSize(broker, artifact);
  const onBroker = await broker.collectRetained([`${root}/artifacts/${artifact.sha256}/blocks/+`], {
    quietMs: opts.waitMs,
    maxMs: 10 * 60_000,
    complete: (got) => got.size >= total,
  });
  const missing = missingBlocks(root, artifact, onBroker);
  const alreadyThere = total - missing.length;
  if (missing.length === 0) return { total, alreadyThere, uploaded: 0 };
  if (alreadyThere > 0) io.note(`${alreadyThere} of ${total} blocks already on the broker; uploading the other ${missing.length}`);
  const bytesUpTo = [0]; // bytesUpTo[n]: bytes in the first n missing blocks
  for (const i of missing) bytesUpTo.push((bytesUpTo.at(-1) ?? 0) + (artifact.blocks[i] as Buffer).length);
  const progress = createProgress(io.stderr, 'uploading', missing.length, (done) => bytesUpTo[done] ?? 0);
  progress.update(0);
  try {
    await broker.publishAllRetained(blockMessages(root, artifact, missing), opts.maxInFlight, (n) => progress.update(n));
  } finally {
    progress.finish();
  }
  return { total, alreadyThere, uploaded: missing.length };
}

/** Fails before uploading when the broker announced that a block message would be too large for it. */
function checkPacketSize(broker: Broker, artifact: Artifact): void {
  const max = broker.limits.maximumPacketSize;
  // PUBLISH overhead: fixed header (up to 5), topic (2 + length), packet id (2), empty properties (1).
  const overhead = 10 + Buffer.byteLength(blockMessages(broker.topicRoot, artifact, [0])[0]?.topic ?? '');
  if (max === undefined || artifact.blockSize + overhead <= max) return;
  const fits = Math.floor((max - overhead) / 1024) * 1024;
  const advice = fits >= MIN_BLOCK_SIZE ? `publish with --block-size ${fits} or less` : 'raise its max_packet_size';
  throw new FailureError(`the broker takes messages of at most ${max} bytes, a ${artifact.blockSize}-byte block does not fit; ${advice}`);
}
