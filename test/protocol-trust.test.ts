import { describe, expect, it } from 'vitest';
import { signEnvelope } from '../protocol/dsse.js';
import { generateKeyPair } from '../protocol/keys.js';
import type { KeyPair } from '../protocol/keys.js';
import {
  acceptRotation, buildTrustDocument, isExpired, loadTrust, PAYLOAD_TYPES, requireUnexpiredTrust, verifyRoleEnvelope,
} from '../protocol/trust.js';
import type { Role, Trust, TrustDocument } from '../protocol/trust.js';
import { encodeDocument } from '../protocol/validate.js';
import { trustDocumentSchema } from '../protocol/trust.js';
import { expectError } from './helpers/protocol.js';

type RoleKeyPairs = Record<Role, { pairs: KeyPair[]; threshold: number }>;

function trustDoc(version: number, roles: RoleKeyPairs, expiresAt = '2036-01-01T00:00:00Z'): TrustDocument {
  const r = (role: Role) => ({ publicKeys: roles[role].pairs.map((p) => p.publicKey), threshold: roles[role].threshold });
  return buildTrustDocument({ version, expiresAt, roles: { root: r('root'), models: r('models'), rollout: r('rollout') } });
}

function signTrust(doc: TrustDocument, signers: KeyPair[]): unknown {
  return signEnvelope(PAYLOAD_TYPES.trust, encodeDocument(trustDocumentSchema, doc, 'trust document'), signers);
}

const root1 = generateKeyPair();
const root2 = generateKeyPair();
const models = generateKeyPair();
const rollout = generateKeyPair();
const newRoot = generateKeyPair();

const v1Roles: RoleKeyPairs = {
  root: { pairs: [root1, root2], threshold: 2 },
  models: { pairs: [models], threshold: 1 },
  rollout: { pairs: [rollout], threshold: 1 },
};
const v1 = loadTrust(JSON.stringify(trustDoc(1, v1Roles)));
const v2Roles: RoleKeyPairs = { ...v1Roles, root: { pairs: [newRoot], threshold: 1 } };

describe('loadTrust', () => {
  it('loads keys per keyid and round-trips through JSON', () => {
    expect(v1.version).toBe(1);
    expect([...v1.keys.keys()].sort()).toEqual([root1, root2, models, rollout].map((p) => p.keyid).sort());
    const again: Trust = loadTrust(JSON.parse(JSON.stringify(v1.document)));
    expect(again.document).toEqual(v1.document);
  });

  it('reports every problem of a bad trust document at once', () => {
    const doc = structuredClone(v1.document) as Record<string, unknown> & TrustDocument;
    const [firstKeyid, secondKeyid] = Object.keys(doc.keys);
    if (!firstKeyid || !secondKeyid) throw new Error('fixture');
    const first = doc.keys[firstKeyid];
    const second = doc.keys[secondKeyid];
    if (!first || !second) throw new Error('fixture');
    first.publicKey = 'AAAA';
    second.publicKey = v1.document.keys[firstKeyid]?.publicKey ?? '';
    doc.roles.models.threshold = 3;
    doc.roles.rollout.keyids = ['f'.repeat(64)];
    doc.expiresAt = '2036-01-01 00:00';
    const err = expectError(() => loadTrust(doc), 'MALFORMED', /trust document is invalid/);
    expect(err.problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^expiresAt: .*RFC 3339/),
        expect.stringMatching(new RegExp(`^keys\\.${firstKeyid}\\.publicKey: .*32 raw`)),
        expect.stringMatching(new RegExp(`^keys\\.${secondKeyid}: keyid is not the SHA-256`)),
        expect.stringMatching(/^roles\.models\.threshold: threshold 3 exceeds/),
        expect.stringMatching(/^roles\.rollout\.keyids\[0\]: keyid f+ is not in keys/),
      ]),
    );
    expect(err.problems.length).toBeGreaterThanOrEqual(5);
  });

  it('rejects text that is not JSON', () => {
    expectError(() => loadTrust('{"schema": 1,'), 'MALFORMED', /trust document is not UTF-8 JSON/);
  });
});

describe('verifyRoleEnvelope', () => {
  it('accepts the role threshold and rejects a key of another role', () => {
    const env = signEnvelope(PAYLOAD_TYPES.model, Buffer.from('{}'), [models]);
    expect(verifyRoleEnvelope(v1, 'models', env, PAYLOAD_TYPES.model).toString()).toBe('{}');
    const byRollout = signEnvelope(PAYLOAD_TYPES.model, Buffer.from('{}'), [rollout]);
    expectError(() => verifyRoleEnvelope(v1, 'models', byRollout, PAYLOAD_TYPES.model), 'THRESHOLD', /0 of 1 .*not trusted for models/);
  });

  it('needs both root keys when the root threshold is 2', () => {
    const env = signEnvelope(PAYLOAD_TYPES.trust, Buffer.from('{}'), [root1]);
    expectError(() => verifyRoleEnvelope(v1, 'root', env, PAYLOAD_TYPES.trust), 'THRESHOLD', /1 of 2 required valid signature\(s\) from root keys/);
  });
});

describe('expiry', () => {
  it('treats trust as expired from expiresAt on', () => {
    const t = loadTrust(trustDoc(1, v1Roles, '2030-01-01T00:00:00Z'));
    expect(isExpired(t, new Date('2029-12-31T23:59:59Z'))).toBe(false);
    expect(isExpired(t, Date.parse('2030-01-01T00:00:00Z'))).toBe(true);
    expectError(() => requireUnexpiredTrust(t, new Date('2031-01-01T00:00:00Z')), 'EXPIRED', /trust version 1 expired at 2030-01-01T00:00:00Z/);
  });
});

describe('acceptRotation', () => {
  it('accepts version+1 signed by the old and the new root thresholds', () => {
    const env = signTrust(trustDoc(2, v2Roles), [root1, root2, newRoot]);
    const v2 = acceptRotation(v1, env);
    expect(v2.version).toBe(2);
    expect(v2.document.roles.root.keyids).toEqual([newRoot.keyid]);
    // The new trust now verifies on its own root.
    const v3 = acceptRotation(v2, signTrust(trustDoc(3, v2Roles), [newRoot]));
    expect(v3.version).toBe(3);
  });

  it('lets an expired trust rotate, since rotation is the way out', () => {
    const old = loadTrust(trustDoc(1, v1Roles, '2020-01-01T00:00:00Z'));
    expect(acceptRotation(old, signTrust(trustDoc(2, v2Roles), [root1, root2, newRoot])).version).toBe(2);
  });

  it('rejects a rotation without the old root threshold', () => {
    const env = signTrust(trustDoc(2, v2Roles), [root1, newRoot]);
    expectError(() => acceptRotation(v1, env), 'THRESHOLD', /1 of 2 .*current root \(trust v1\)/);
  });

  it('rejects a rotation without the new root signature', () => {
    const env = signTrust(trustDoc(2, v2Roles), [root1, root2]);
    expectError(() => acceptRotation(v1, env), 'THRESHOLD', /0 of 1 .*new root \(trust v2\)/);
  });

  it('rejects skipping a version, and a version that is not newer', () => {
    expectError(() => acceptRotation(v1, signTrust(trustDoc(3, v2Roles), [root1, root2, newRoot])), 'TRUST_VERSION', /version 3 skips past the current version 1; only version 2/);
    expectError(() => acceptRotation(v1, signTrust(trustDoc(1, v1Roles), [root1, root2])), 'TRUST_VERSION', /version 1 is not newer than the current version 1/);
  });

  it('rejects a tampered rotation and another payload type', () => {
    const env = signTrust(trustDoc(2, v2Roles), [root1, root2, newRoot]) as { payload: string };
    const forged = { ...env, payload: encodeDocument(trustDocumentSchema, trustDoc(2, v1Roles), 'trust').toString('base64') };
    expectError(() => acceptRotation(v1, forged), 'BAD_SIGNATURE', /does not verify/);
    const wrongType = signEnvelope(PAYLOAD_TYPES.model, Buffer.from('{}'), [root1, root2]);
    expectError(() => acceptRotation(v1, wrongType), 'PAYLOAD_TYPE', /expected "application\/vnd.edgefleet.trust\+json"/);
  });

  it('rejects a signed payload that is not a trust document', () => {
    const env = signEnvelope(PAYLOAD_TYPES.trust, Buffer.from('{"schema":1}'), [root1, root2]);
    expectError(() => acceptRotation(v1, env), 'MALFORMED', /trust document is invalid: version/);
  });
});
