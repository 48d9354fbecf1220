import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import mqtt, { type MqttClient } from 'mqtt';
import { desiredSchema, type Shadow } from '../../protocol/desired.js';
import { signEnvelope, type Envelope } from '../../protocol/dsse.js';
import { generateKeyPair, type KeyPair } from '../../protocol/keys.js';
import { manifestSchema, type Manifest } from '../../protocol/manifest.js';
import { topics } from '../../protocol/names.js';
import { PAYLOAD_TYPES, buildTrustDocument, type TrustDocument } from '../../protocol/trust.js';
import { encodeDocument } from '../../protocol/validate.js';

/**
 * A miniature fleet side for end-to-end tests, built on protocol/ directly so
 * tests can also forge what the real CLI would never produce.
 */
export interface FleetKeys {
  root: KeyPair;
  models: KeyPair;
  rollout: KeyPair;
  trust: TrustDocument;
}

export const future = (days = 30): string => new Date(Date.now() + days * 86_400_000).toISOString().replace(/\.\d+Z$/, 'Z');
export const past = (days = 1): string => new Date(Date.now() - days * 86_400_000).toISOString().replace(/\.\d+Z$/, 'Z');

export function makeFleetKeys(): FleetKeys {
  const root = generateKeyPair();
  const models = generateKeyPair();
  const rollout = generateKeyPair();
  const trust = buildTrustDocument({
    version: 1,
    expiresAt: future(3650),
    roles: { root: { publicKeys: [root.publicKey], threshold: 1 }, models: { publicKeys: [models.publicKey], threshold: 1 }, rollout: { publicKeys: [rollout.publicKey], threshold: 1 } },
  });
  return { root, models, rollout, trust };
}

export async function writeTrust(file: string, keys: FleetKeys): Promise<void> {
  await writeFile(file, JSON.stringify(keys.trust, null, 2));
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export function buildManifest(name: string, version: number, bytes: Uint8Array, extra: Partial<Manifest> = {}, blockSize = 4096): Manifest {
  const blockSha256: string[] = [];
  for (let i = 0; i < bytes.length; i += blockSize) blockSha256.push(sha(bytes.subarray(i, i + blockSize)));
  return {
    schema: 1,
    name,
    version,
    createdAt: past(0),
    artifact: { format: 'onnx', size: bytes.length, sha256: sha(bytes), blockSize, blockSha256 },
    quantization: 'fp32',
    ...extra,
  };
}

export function signManifest(manifest: Manifest, signers: readonly KeyPair[]): Envelope {
  return signEnvelope(PAYLOAD_TYPES.model, encodeDocument(manifestSchema, manifest, 'manifest'), signers);
}

/** Publishes every block retained (QoS 1), as `edgefleet model publish` does. */
export async function publishBlocks(client: MqttClient, root: string, manifest: Manifest, bytes: Uint8Array, tamper?: (i: number, block: Buffer) => Buffer): Promise<void> {
  const { blockSize, sha256 } = manifest.artifact;
  const sends: Promise<unknown>[] = [];
  for (let i = 0, off = 0; off < bytes.length; i++, off += blockSize) {
    let block: Buffer = Buffer.from(bytes.subarray(off, off + blockSize));
    if (tamper) block = tamper(i, block);
    sends.push(client.publishAsync(topics.block(root, sha256, i), block, { qos: 1, retain: true }));
  }
  await Promise.all(sends);
}

export interface DesiredEntry {
  name: string;
  version: number;
  labels?: string[];
  manifest: Envelope;
  /** Section 11; fields left out take their defaults. */
  shadow?: Partial<Shadow>;
}

export function signDesired(
  doc: { target: { device: string } | { group: string }; serial: number; models: DesiredEntry[]; expiresAt?: string; issuedAt?: string },
  signers: readonly KeyPair[],
): Envelope {
  const payload = encodeDocument(
    desiredSchema,
    { schema: 1, target: doc.target, serial: doc.serial, issuedAt: doc.issuedAt ?? past(0), expiresAt: doc.expiresAt ?? future(), models: doc.models.map((m) => ({ ...m, labels: m.labels ?? [] })) } as never,
    'desired',
  );
  return signEnvelope(PAYLOAD_TYPES.desired, payload, signers);
}

export async function publishDesired(client: MqttClient, root: string, target: { device: string } | { group: string }, envelope: Envelope | string): Promise<void> {
  const topic = 'device' in target ? topics.device(root, target.device, 'desired') : topics.groupDesired(root, target.group);
  await client.publishAsync(topic, typeof envelope === 'string' ? envelope : JSON.stringify(envelope), { qos: 1, retain: true });
}

export async function connectFleet(url: string): Promise<MqttClient> {
  return mqtt.connectAsync(url, { protocolVersion: 5, clientId: `fleet-test-${Math.random().toString(16).slice(2)}`, reconnectPeriod: 200 });
}
