/**
 * Key files as `edgefleet keys generate` writes them: `NAME.key` (PKCS8 PEM,
 * 0600) and `NAME.pub` (the 32 raw public key bytes in base64). Errors name
 * the file and what is wrong with it, never its content.
 */
import type { KeyObject } from 'node:crypto';
import { stat } from 'node:fs/promises';
import type { SigningKey } from '../protocol/index.js';
import { keyIdOf, privateKeyFromPem, publicKeyFromBase64 } from '../protocol/index.js';
import { listOf, renamedOption } from './args.js';
import { FailureError, UsageError } from './errors.js';
import { readInput } from './files.js';
import type { Profile } from './profile.js';

/** parseArgs options of the commands that sign: --signing-key, and --key, its old name. */
export const SIGNING_KEY_OPTIONS = {
  'signing-key': { type: 'string', multiple: true },
  key: { type: 'string', multiple: true },
} as const;

/**
 * The private key files of `role` a command signs with: --signing-key (or the
 * deprecated --key), else the profile's `signingKeys.<role>`.
 */
export function signingKeyPaths(
  values: { 'signing-key'?: string[] | undefined; key?: string[] | undefined }, role: 'models' | 'rollout', profile: Profile, warn: (line: string) => void,
): string[] {
  const flagged = listOf(renamedOption<string[]>(values, 'signing-key', 'key', warn));
  if (flagged.length > 0) return flagged;
  const fromProfile = profile.settings.signingKeys?.[role];
  if (fromProfile !== undefined) return fromProfile;
  const KEY = role.toUpperCase();
  throw new UsageError(`missing --signing-key ${KEY}.key (the ${role} role's private key), or "signingKeys.${role}" in a profile`);
}

const looksLikePem = (text: string): boolean => text.includes('-----BEGIN');

/** Signing keys from private key files, one per distinct key. */
export async function readSigningKeys(paths: readonly string[], warn: (line: string) => void): Promise<SigningKey[]> {
  const keys = new Map<string, SigningKey>();
  for (const path of paths) {
    const pem = await readInput(path, 'private key file');
    let privateKey: KeyObject;
    try {
      privateKey = privateKeyFromPem(pem);
    } catch {
      const hint = looksLikePem(pem.toString('latin1')) ? '' : " (a .pub file? signing needs the .key file)";
      throw new FailureError(`${path} is not an Ed25519 private key in PKCS8 PEM form${hint}`);
    } finally {
      pem.fill(0); // do not leave the PEM text lying in the heap longer than needed
    }
    await warnIfShared(path, warn);
    const keyid = keyIdOf(privateKey);
    keys.set(keyid, { keyid, privateKey });
  }
  return [...keys.values()];
}

async function warnIfShared(path: string, warn: (line: string) => void): Promise<void> {
  const { mode } = await stat(path);
  if ((mode & 0o077) !== 0) {
    warn(`warning: private key ${path} is accessible to other users (mode ${(mode & 0o777).toString(8)}); run chmod 600 on it`);
  }
}

/** Public keys from `.pub` files, one per distinct key, in the order given. */
export async function readPublicKeys(paths: readonly string[]): Promise<KeyObject[]> {
  const keys = new Map<string, KeyObject>();
  for (const path of paths) {
    const text = (await readInput(path, 'public key file')).toString('latin1').trim();
    if (looksLikePem(text)) {
      throw new FailureError(`${path} holds a PEM key, not a public key; pass the .pub file written by 'edgefleet keys generate'`);
    }
    let key: KeyObject;
    try {
      key = publicKeyFromBase64(text);
    } catch {
      throw new FailureError(`${path} is not an Ed25519 public key (expected the 32 raw bytes in base64, as in NAME.pub)`);
    }
    keys.set(keyIdOf(key), key);
  }
  return [...keys.values()];
}
