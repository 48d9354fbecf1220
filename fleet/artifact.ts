/**
 * An ONNX file cut into the blocks devices pull from the broker (docs/protocol.md
 * section 5): the whole-file SHA-256 names the artifact, one SHA-256 per block.
 */
import { createHash } from 'node:crypto';
import { blockCount, topics } from '../protocol/index.js';
import type { OutMessage } from './mqtt.js';

export interface Artifact {
  size: number;
  sha256: string;
  blockSize: number;
  blockSha256: string[];
  /** Views into the file's bytes, no copies. */
  blocks: Buffer[];
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

export function splitArtifact(bytes: Buffer, blockSize: number): Artifact {
  const blocks: Buffer[] = [];
  for (let i = 0; i < blockCount(bytes.length, blockSize); i++) {
    blocks.push(bytes.subarray(i * blockSize, Math.min(bytes.length, (i + 1) * blockSize)));
  }
  return { size: bytes.length, sha256: sha256(bytes), blockSize, blockSha256: blocks.map(sha256), blocks };
}

export function blockTopics(root: string, sha: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => topics.block(root, sha, i));
}

/**
 * Indexes of blocks that are not yet on the broker with the right content,
 * given what it replayed from `{root}/artifacts/{sha256}/blocks/+`.
 */
export function missingBlocks(root: string, artifact: Artifact, onBroker: ReadonlyMap<string, Buffer>): number[] {
  const missing: number[] = [];
  artifact.blockSha256.forEach((hash, i) => {
    const there = onBroker.get(topics.block(root, artifact.sha256, i));
    if (there === undefined || sha256(there) !== hash) missing.push(i);
  });
  return missing;
}

export function blockMessages(root: string, artifact: Artifact, indexes: readonly number[]): OutMessage[] {
  return indexes.map((i) => ({ topic: topics.block(root, artifact.sha256, i), payload: artifact.blocks[i] as Buffer }));
}
