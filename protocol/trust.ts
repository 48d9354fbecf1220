/**
 * The trust document (docs/protocol.md section 3): keys, roles and thresholds, and
 * its rotation. The initial document is installed out of band; later ones
 * arrive signed on `{root}/trust`, and each stays retained on `{root}/trust/{version}`.
 */
import type { KeyObject } from 'node:crypto';
import { z } from 'zod';
import { decodeBase64 } from './base64.js';
import { openEnvelope, requireSignatures } from './dsse.js';
import type { OpenedEnvelope, SignatureRequirement } from './dsse.js';
import { ProtocolError } from './errors.js';
import { KEYID_RE, keyIdOf, publicKeyFromRaw, publicKeyToBase64 } from './keys.js';
import { parseTime, timeSchema, toMillis } from './names.js';
import { parsePayload, validate } from './validate.js';

export const PAYLOAD_TYPES = {
  trust: 'application/vnd.edgefleet.trust+json',
  model: 'application/vnd.edgefleet.model+json',
  desired: 'application/vnd.edgefleet.desired+json',
} as const;

export const ROLES = ['root', 'models', 'rollout'] as const;
export type Role = (typeof ROLES)[number];

const keyidSchema = z.string().regex(KEYID_RE, 'keyid must be 64 lowercase hex digits');

const roleSchema = z.object({
  keyids: z.array(keyidSchema).min(1, 'a role needs at least one keyid'),
  threshold: z.number().int('threshold must be an integer').min(1, 'threshold must be at least 1'),
});
export type RoleSpec = z.infer<typeof roleSchema>;

export const trustDocumentSchema = z
  .object({
    schema: z.literal(1, 'schema must be 1'),
    version: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
    expiresAt: timeSchema,
    keys: z.record(keyidSchema, z.object({ publicKey: z.string() })),
    roles: z.object({ root: roleSchema, models: roleSchema, rollout: roleSchema }),
  })
  .superRefine((doc, ctx) => {
    for (const [keyid, { publicKey }] of Object.entries(doc.keys)) {
      const raw = decodeBase64(publicKey);
      if (raw?.length !== 32) {
        ctx.addIssue({ code: 'custom', path: ['keys', keyid, 'publicKey'], message: 'must be the 32 raw Ed25519 bytes in base64' });
      } else if (keyIdOf(raw) !== keyid) {
        ctx.addIssue({ code: 'custom', path: ['keys', keyid], message: 'keyid is not the SHA-256 of publicKey' });
      }
    }
    for (const role of ROLES) {
      const { keyids, threshold } = doc.roles[role];
      keyids.forEach((keyid, i) => {
        if (!Object.hasOwn(doc.keys, keyid)) ctx.addIssue({ code: 'custom', path: ['roles', role, 'keyids', i], message: `keyid ${keyid} is not in keys` });
        if (keyids.indexOf(keyid) !== i) ctx.addIssue({ code: 'custom', path: ['roles', role, 'keyids', i], message: 'duplicate keyid' });
      });
      if (threshold > new Set(keyids).size) {
        ctx.addIssue({ code: 'custom', path: ['roles', role, 'threshold'], message: `threshold ${threshold} exceeds the role's ${keyids.length} key(s)` });
      }
    }
  });
export type TrustDocument = z.infer<typeof trustDocumentSchema>;

export interface Trust {
  /** The validated document; JSON.stringify it to persist. */
  readonly document: TrustDocument;
  readonly version: number;
  readonly expiresAtMs: number;
  readonly keys: ReadonlyMap<string, KeyObject>;
}

/** Trust from JSON text, UTF-8 bytes or an already parsed value. Throws MALFORMED listing every problem. */
export function loadTrust(json: unknown): Trust {
  const document =
    typeof json === 'string' || json instanceof Uint8Array
      ? parsePayload(trustDocumentSchema, json, 'trust document')
      : validate(trustDocumentSchema, json, 'trust document');
  return fromDocument(document);
}

export interface RoleKeys {
  publicKeys: readonly KeyObject[];
  threshold: number;
}

/** A trust document for these keys, e.g. for provisioning or a rotation; validated before it is returned. */
export function buildTrustDocument(opts: { version: number; expiresAt: string; roles: Record<Role, RoleKeys> }): TrustDocument {
  const keys: Record<string, { publicKey: string }> = {};
  const roleOf = ({ publicKeys, threshold }: RoleKeys): RoleSpec => {
    const keyids = publicKeys.map((key) => {
      const keyid = keyIdOf(key);
      keys[keyid] = { publicKey: publicKeyToBase64(key) };
      return keyid;
    });
    return { keyids, threshold };
  };
  const roles = { root: roleOf(opts.roles.root), models: roleOf(opts.roles.models), rollout: roleOf(opts.roles.rollout) };
  const doc = { schema: 1, version: opts.version, expiresAt: opts.expiresAt, keys, roles };
  return validate(trustDocumentSchema, doc, 'trust document');
}

function fromDocument(document: TrustDocument): Trust {
  const keys = new Map<string, KeyObject>();
  for (const [keyid, { publicKey }] of Object.entries(document.keys)) {
    keys.set(keyid, publicKeyFromRaw(decodeBase64(publicKey) ?? new Uint8Array()));
  }
  const expiresAtMs = parseTime(document.expiresAt) ?? 0;
  return Object.freeze({ document, version: document.version, expiresAtMs, keys });
}

function requirement(trust: Trust, role: Role, label: string = role): SignatureRequirement {
  const { keyids, threshold } = trust.document.roles[role];
  return { trustedKeys: trust.keys, keyids, threshold, role: label };
}

/** Verifies an envelope against one role of `trust`; returns the verified payload bytes. */
export function verifyRoleEnvelope(trust: Trust, role: Role, envelope: unknown, payloadType: string): Buffer {
  const opened = openEnvelope(envelope, payloadType);
  requireSignatures(opened, requirement(trust, role));
  return Buffer.from(opened.payload);
}

export function isExpired(trust: Trust, now: Date | number): boolean {
  return toMillis(now) >= trust.expiresAtMs;
}

/** Expired trust still lets the device serve, but not accept new rollouts. */
export function requireUnexpiredTrust(trust: Trust, now: Date | number): void {
  if (isExpired(trust, now)) {
    throw new ProtocolError(
      'EXPIRED',
      `trust version ${trust.version} expired at ${trust.document.expiresAt}; publish a rotated trust document on {root}/trust`,
    );
  }
}

/**
 * Accepts a rotated trust document: version exactly current+1, signed by the
 * threshold of the current root keys and of the new root keys. An expired
 * current trust may still rotate: rotation is how an operator recovers from it.
 * Returns the new trust; the caller persists it atomically before using it.
 */
export function acceptRotation(current: Trust, envelope: unknown): Trust {
  const opened: OpenedEnvelope = openEnvelope(envelope, PAYLOAD_TYPES.trust);
  requireSignatures(opened, requirement(current, 'root', `current root (trust v${current.version})`));
  const next = loadTrust(opened.payload);
  if (next.version !== current.version + 1) {
    const why = next.version <= current.version ? 'is not newer than' : 'skips past';
    throw new ProtocolError(
      'TRUST_VERSION',
      `trust version ${next.version} ${why} the current version ${current.version}; only version ${current.version + 1} is accepted`,
    );
  }
  // The same opened envelope, so the signatures checked are over the bytes just parsed.
  requireSignatures(opened, requirement(next, 'root', `new root (trust v${next.version})`));
  return next;
}

/**
 * The version an envelope's payload claims, before any signature is checked;
 * undefined when it cannot be read. Only for deciding what to do with a
 * message (a repeat, a gap to walk), never for accepting one.
 */
export function claimedTrustVersion(envelope: unknown): number | undefined {
  try {
    const opened = openEnvelope(envelope, PAYLOAD_TYPES.trust);
    const doc = JSON.parse(opened.payload.toString('utf8')) as { version?: unknown };
    return typeof doc.version === 'number' ? doc.version : undefined;
  } catch {
    return undefined;
  }
}
