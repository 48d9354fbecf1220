/**
 * DSSE v1 envelopes signed with Ed25519 (docs/protocol.md section 2).
 * Verify first, then parse: verification returns the payload bytes that were
 * verified, and callers parse those instead of reading the envelope again.
 */
import { sign, verify } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { z } from 'zod';
import { decodeBase64, encodeBase64 } from './base64.js';
import { ProtocolError } from './errors.js';
import { rawPublicKey } from './keys.js';
import { validate } from './validate.js';

export const envelopeSchema = z.object({
  payloadType: z.string().min(1, 'payloadType must not be empty'),
  payload: z.string(),
  signatures: z.array(
    z.object({
      // DSSE makes keyid an optional hint; a signature without one matches no trusted key.
      keyid: z.string().optional(),
      sig: z.string(),
    }),
  ),
});
export type Envelope = z.infer<typeof envelopeSchema>;

/** Pre-authentication encoding: "DSSEv1" SP len(type) SP type SP len(body) SP body. */
export function pae(payloadType: string, payload: Uint8Array): Buffer {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `, 'ascii'),
    type,
    Buffer.from(` ${payload.length} `, 'ascii'),
    payload,
  ]);
}

export interface SigningKey {
  keyid: string;
  privateKey: KeyObject;
}

export function signEnvelope(payloadType: string, payload: Uint8Array, keys: readonly SigningKey[]): Envelope {
  const message = pae(payloadType, payload);
  return {
    payloadType,
    payload: encodeBase64(payload),
    signatures: keys.map(({ keyid, privateKey }) => ({ keyid, sig: encodeBase64(sign(null, message, privateKey)) })),
  };
}

/** A signature requirement: `threshold` distinct keys among `keyids`, looked up in `trustedKeys`. */
export interface SignatureRequirement {
  trustedKeys: ReadonlyMap<string, KeyObject>;
  keyids: Iterable<string>;
  threshold: number;
  /** Used in messages only, e.g. "models" or "current root". */
  role?: string;
}

/**
 * An envelope whose shape and payload encoding were checked but whose
 * signatures were not: use it only through {@link requireSignatures}.
 */
export interface OpenedEnvelope {
  readonly payloadType: string;
  readonly payload: Buffer;
  readonly signatures: readonly { keyid: string | undefined; sig: Buffer | undefined }[];
}

export function openEnvelope(envelope: unknown, expectedPayloadType: string): OpenedEnvelope {
  const env = validate(envelopeSchema, envelope, 'DSSE envelope');
  if (env.payloadType !== expectedPayloadType) {
    throw new ProtocolError('PAYLOAD_TYPE', `envelope carries "${env.payloadType}", expected "${expectedPayloadType}"`);
  }
  const payload = decodeBase64(env.payload);
  if (!payload) throw new ProtocolError('MALFORMED', 'envelope payload is not valid base64');
  const signatures = env.signatures.map((s) => ({ keyid: s.keyid, sig: decodeBase64(s.sig) }));
  return Object.freeze({ payloadType: env.payloadType, payload, signatures: Object.freeze(signatures) });
}

function short(keyid: string | undefined): string {
  return keyid === undefined || keyid === '' ? '(none)' : `${keyid.slice(0, 12)}…`;
}

/** Throws unless `opened` carries the requirement's threshold of valid signatures. */
export function requireSignatures(opened: OpenedEnvelope, req: SignatureRequirement): void {
  if (!Number.isSafeInteger(req.threshold) || req.threshold < 1) {
    throw new RangeError(`signature threshold must be a positive integer, got ${req.threshold}`);
  }
  const role = req.role ?? 'signing';
  const allowed = new Set(req.keyids);
  const message = pae(opened.payloadType, opened.payload);
  const counted = new Set<string>(); // raw public keys, so one key counts once even under two keyids
  const bad: string[] = [];
  const ignored: string[] = [];
  for (const { keyid, sig } of opened.signatures) {
    const key = keyid === undefined ? undefined : req.trustedKeys.get(keyid);
    if (keyid === undefined || key === undefined || !allowed.has(keyid)) {
      ignored.push(short(keyid));
      continue;
    }
    const raw = rawPublicKey(key).toString('hex');
    if (counted.has(raw)) continue;
    if (sig !== undefined && verifySafely(message, key, sig)) counted.add(raw);
    else bad.push(short(keyid));
  }
  if (counted.size >= req.threshold) return;
  const summary =
    `${counted.size} of ${req.threshold} required valid signature(s) from ${role} keys` +
    (ignored.length ? `; ignored ${ignored.length} from keys not trusted for ${role} (${ignored.join(', ')})` : '');
  if (bad.length) {
    throw new ProtocolError('BAD_SIGNATURE', `signature by ${role} key ${bad.join(', ')} does not verify (payload altered or wrong key); ${summary}`);
  }
  throw new ProtocolError('THRESHOLD', `not enough signatures: ${summary}`);
}

function verifySafely(message: Buffer, key: KeyObject, sig: Buffer): boolean {
  try {
    return verify(null, message, key, sig);
  } catch {
    return false;
  }
}
