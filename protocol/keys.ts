/**
 * Ed25519 keys as the protocol carries them: public keys as 32 raw bytes in
 * standard base64, keyid = lowercase hex SHA-256 of those bytes, private keys
 * as PKCS8 PEM files.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { decodeBase64, encodeBase64 } from './base64.js';
import { ProtocolError } from './errors.js';

export const KEYID_RE = /^[0-9a-f]{64}$/;

export interface KeyPair {
  keyid: string;
  publicKey: KeyObject;
  privateKey: KeyObject;
}

export function generateKeyPair(): KeyPair {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  return { keyid: keyIdOf(publicKey), publicKey, privateKey };
}

function requireEd25519(key: KeyObject, type: 'public' | 'private'): void {
  if (key.type !== type || key.asymmetricKeyType !== 'ed25519') {
    throw new ProtocolError('MALFORMED', `expected an Ed25519 ${type} key, got a ${key.asymmetricKeyType ?? key.type} ${key.type} key`);
  }
}

/** The 32 raw public key bytes (from the JWK `x` member). Accepts a private key too. */
export function rawPublicKey(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  requireEd25519(pub, 'public');
  const { x } = pub.export({ format: 'jwk' });
  if (typeof x !== 'string') throw new ProtocolError('MALFORMED', 'Ed25519 key has no public part');
  return Buffer.from(x, 'base64url');
}

/** Lowercase hex SHA-256 of the raw public key bytes. */
export function keyIdOf(key: KeyObject | Uint8Array): string {
  const raw = key instanceof Uint8Array ? key : rawPublicKey(key);
  return createHash('sha256').update(raw).digest('hex');
}

export function publicKeyToBase64(key: KeyObject): string {
  return encodeBase64(rawPublicKey(key));
}

/** Raw 32-byte Ed25519 public key in standard or URL-safe base64 → KeyObject. */
export function publicKeyFromBase64(text: string): KeyObject {
  const raw = decodeBase64(text);
  if (raw?.length !== 32) {
    throw new ProtocolError('MALFORMED', 'public key must be the 32 raw Ed25519 bytes in base64');
  }
  return publicKeyFromRaw(raw);
}

export function publicKeyFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new ProtocolError('MALFORMED', `Ed25519 public key must be 32 bytes, got ${raw.length}`);
  try {
    const x = Buffer.from(raw).toString('base64url');
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x }, format: 'jwk' });
  } catch (err) {
    throw new ProtocolError('MALFORMED', 'bytes are not a usable Ed25519 public key', { cause: err });
  }
}

export function privateKeyToPem(key: KeyObject): string {
  requireEd25519(key, 'private');
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

export function privateKeyFromPem(pem: string | Buffer): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    // The cause may quote the input; keep it out of the message.
    throw new ProtocolError('MALFORMED', 'private key is not a readable PKCS8 PEM file', { cause: err });
  }
  requireEd25519(key, 'private');
  return key;
}
