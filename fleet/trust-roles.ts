/**
 * The role options `trust init` and `trust rotate` share: public key files
 * per role and a threshold per role.
 */
import type { KeyObject } from 'node:crypto';
import type { Role, RoleKeys, Trust } from '../protocol/index.js';
import { PAYLOAD_TYPES, ProtocolError, ROLES, keyIdOf, loadTrust, openEnvelope, verifyRoleEnvelope } from '../protocol/index.js';
import { intOption, listOf } from './args.js';
import { FailureError, UsageError, errorMessage } from './errors.js';
import { readJsonInput } from './files.js';
import { readPublicKeys } from './key-files.js';

export const THRESHOLD_OPTIONS = {
  'threshold-root': { type: 'string' },
  'threshold-models': { type: 'string' },
  'threshold-rollout': { type: 'string' },
} as const;

export const THRESHOLD_HELP = `  --threshold-root N, --threshold-models N, --threshold-rollout N
                        signatures each role needs`;

type KeyFlags = Record<Role, string | string[] | undefined>;
type ThresholdValues = { [K in keyof typeof THRESHOLD_OPTIONS]?: string | undefined };

/**
 * Keys and threshold of every role. A role without key files keeps
 * `current`'s keys (rotation); without a threshold option it keeps the current
 * threshold, or 1 for a new trust document.
 */
export async function roleKeysFrom(
  keyFlags: KeyFlags,
  flagName: (role: Role) => string,
  thresholds: ThresholdValues,
  current?: Trust,
): Promise<Record<Role, RoleKeys>> {
  const out = {} as Record<Role, RoleKeys>;
  for (const role of ROLES) {
    const files = listOf(keyFlags[role]);
    let publicKeys: KeyObject[];
    if (files.length > 0) publicKeys = await readPublicKeys(files);
    else if (current !== undefined) publicKeys = currentKeys(current, role);
    else throw new UsageError(`missing --${flagName(role)} KEY.pub[,KEY.pub...]`);
    const flag = `threshold-${role}` as const;
    const threshold = intOption(thresholds[flag], flag, 1) ?? current?.document.roles[role].threshold ?? 1;
    if (threshold > publicKeys.length) {
      const why = thresholds[flag] === undefined ? ` (kept from trust version ${current?.version}); pass --${flag}` : '';
      throw new UsageError(`the ${role} threshold ${threshold} exceeds its ${publicKeys.length} key(s)${why}`);
    }
    out[role] = { publicKeys, threshold };
  }
  return out;
}

function currentKeys(trust: Trust, role: Role): KeyObject[] {
  return trust.document.roles[role].keyids.map((id) => trust.keys.get(id) as KeyObject);
}

/** Keys shared between root and an online role defeat the point of an offline root; say so. */
export function warnSharedRootKeys(roles: Record<Role, RoleKeys>, warn: (line: string) => void): void {
  const root = new Set(roles.root.publicKeys.map((k) => keyIdOf(k)));
  for (const role of ['models', 'rollout'] as const) {
    for (const key of roles[role].publicKeys) {
      const id = keyIdOf(key);
      if (root.has(id)) warn(`warning: key ${id.slice(0, 12)}… is both a root and a ${role} key; root keys should be kept offline and separate`);
    }
  }
}

/** A trust document from a plain JSON file or a DSSE envelope file (as `trust rotate` writes). */
export async function readTrustFile(path: string): Promise<Trust> {
  const json = await readJsonInput(path, 'trust file');
  try {
    const isEnvelope = typeof json === 'object' && json !== null && 'payloadType' in json;
    // An envelope's signatures are not checked here: it is the operator's own previous output.
    return loadTrust(isEnvelope ? openEnvelope(json, PAYLOAD_TYPES.trust).payload : json);
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    throw new FailureError(`${path} is not a usable trust document: ${errorMessage(err)}`);
  }
}

/** With --trust: fails unless `envelope` carries enough signatures of `role`, as devices will check. */
export async function checkAgainstTrust(trustFile: string | undefined, role: Role, envelope: unknown, payloadType: string): Promise<void> {
  if (trustFile === undefined) return;
  const trust = await readTrustFile(trustFile);
  try {
    verifyRoleEnvelope(trust, role, envelope, payloadType);
  } catch (err) {
    throw new FailureError(`devices trusting ${trustFile} would reject this: ${errorMessage(err)}`);
  }
}
