import type { KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decodeBase64 } from '../protocol/base64.js';
import { openEnvelope, pae, requireSignatures, signEnvelope } from '../protocol/dsse.js';
import type { Envelope } from '../protocol/dsse.js';
import {
  generateKeyPair, keyIdOf, privateKeyFromPem, privateKeyToPem, publicKeyFromBase64, publicKeyToBase64, rawPublicKey,
} from '../protocol/keys.js';
import type { KeyPair } from '../protocol/keys.js';
import { expectError } from './helpers/protocol.js';

const TYPE = 'application/vnd.edgefleet.model+json';
const PAYLOAD = Buffer.from('{"hello":"world"}');

function trusted(...pairs: KeyPair[]): Map<string, KeyObject> {
  return new Map(pairs.map((p) => [p.keyid, p.publicKey]));
}

/** What verifyRoleEnvelope does with a trust's role: open, require the signatures, return the payload. */
function verifyEnvelope(envelope: unknown, type: string, trustedKeys: ReadonlyMap<string, KeyObject>, keyids: string[], threshold: number, role?: string): Buffer {
  const opened = openEnvelope(envelope, type);
  requireSignatures(opened, { trustedKeys, keyids, threshold, ...(role !== undefined && { role }) });
  return opened.payload;
}

function toUrlSafe(text: string): string {
  return text.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

describe('PAE', () => {
  it('matches the DSSE test vector', () => {
    expect(pae('http://example.com/HelloWorld', Buffer.from('hello world')).toString()).toBe(
      'DSSEv1 29 http://example.com/HelloWorld 11 hello world',
    );
  });

  it('counts bytes, not characters', () => {
    expect(pae('t', Buffer.from('é')).toString()).toBe('DSSEv1 1 t 2 é');
  });
});

describe('keys', () => {
  it('round-trips public keys as base64 of 32 raw bytes and keyid as SHA-256 hex', () => {
    const pair = generateKeyPair();
    const b64 = publicKeyToBase64(pair.publicKey);
    expect(decodeBase64(b64)).toHaveLength(32);
    expect(pair.keyid).toMatch(/^[0-9a-f]{64}$/);
    expect(keyIdOf(publicKeyFromBase64(b64))).toBe(pair.keyid);
    expect(keyIdOf(rawPublicKey(pair.privateKey))).toBe(pair.keyid);
  });

  it('round-trips private keys as PKCS8 PEM', () => {
    const pair = generateKeyPair();
    const pem = privateKeyToPem(pair.privateKey);
    expect(pem).toContain('BEGIN PRIVATE KEY');
    expect(keyIdOf(privateKeyFromPem(pem))).toBe(pair.keyid);
  });

  it('rejects a public key that is not 32 bytes, without echoing it', () => {
    const err = expectError(() => publicKeyFromBase64('AAAA'), 'MALFORMED', /32 raw Ed25519 bytes/);
    expect(err.message).not.toContain('AAAA');
  });

  it('rejects an unreadable PEM without quoting it', () => {
    const err = expectError(() => privateKeyFromPem('not a key secret123'), 'MALFORMED', /PKCS8 PEM/);
    expect(err.message).not.toContain('secret123');
  });
});

describe('base64', () => {
  it('accepts standard and URL-safe, padded or not, and rejects garbage', () => {
    const bytes = Buffer.from([0xfb, 0xff, 0xfe, 0x01]);
    expect(decodeBase64('+//+AQ==')).toEqual(bytes);
    expect(decodeBase64('-__-AQ')).toEqual(bytes);
    expect(decodeBase64('+//+AQ')).toEqual(bytes);
    expect(decodeBase64('+/_-AQ==')).toBeUndefined(); // mixed alphabets
    expect(decodeBase64('+//+A')).toBeUndefined();
    expect(decodeBase64('ab!c')).toBeUndefined();
    expect(decodeBase64('AR==')).toBeUndefined(); // non-canonical trailing bits
  });
});

describe('signEnvelope / openEnvelope and requireSignatures', () => {
  const a = generateKeyPair();
  const b = generateKeyPair();
  const c = generateKeyPair();

  it('round-trips and returns the verified payload bytes', () => {
    const env = signEnvelope(TYPE, PAYLOAD, [a]);
    expect(env.payloadType).toBe(TYPE);
    expect(env.signatures).toHaveLength(1);
    const bytes = verifyEnvelope(JSON.parse(JSON.stringify(env)), TYPE, trusted(a), [a.keyid], 1);
    expect(bytes.equals(PAYLOAD)).toBe(true);
  });

  it('accepts standard and URL-safe base64 for payload and signatures', () => {
    // Pick a payload whose base64 uses '+' or '/', so the alphabets really differ.
    const payload = Buffer.from([0xfb, 0xff, 0xbf, 0x7b, 0x7d]);
    const env = signEnvelope(TYPE, payload, [a, b]);
    expect(env.payload).toMatch(/[+/]/);
    const urlSafe: Envelope = {
      ...env,
      payload: toUrlSafe(env.payload),
      signatures: env.signatures.map((s) => ({ ...s, sig: toUrlSafe(s.sig) })),
    };
    expect(verifyEnvelope(env, TYPE, trusted(a, b), [a.keyid, b.keyid], 2).equals(payload)).toBe(true);
    expect(verifyEnvelope(urlSafe, TYPE, trusted(a, b), [a.keyid, b.keyid], 2).equals(payload)).toBe(true);
  });

  it('counts duplicate signatures by one key once', () => {
    const env = signEnvelope(TYPE, PAYLOAD, [a]);
    const sig = env.signatures[0];
    if (!sig) throw new Error('no signature');
    const duplicated = { ...env, signatures: [sig, sig, sig] };
    expectError(() => verifyEnvelope(duplicated, TYPE, trusted(a, b), [a.keyid, b.keyid], 2), 'THRESHOLD', /1 of 2 required/);
  });

  it('counts one key once even when listed under two keyids', () => {
    const env = signEnvelope(TYPE, PAYLOAD, [a, { keyid: 'alias', privateKey: a.privateKey }]);
    const keys = new Map([[a.keyid, a.publicKey], ['alias', a.publicKey]]);
    expectError(() => verifyEnvelope(env, TYPE, keys, [a.keyid, 'alias'], 2), 'THRESHOLD', /1 of 2 required/);
  });

  it('rejects below threshold', () => {
    const env = signEnvelope(TYPE, PAYLOAD, [a]);
    expectError(() => verifyEnvelope(env, TYPE, trusted(a, b), [a.keyid, b.keyid], 2, 'models'), 'THRESHOLD', /1 of 2 required valid signature\(s\) from models keys/);
  });

  it('ignores unknown keys and says so', () => {
    const env = signEnvelope(TYPE, PAYLOAD, [c]);
    const err = expectError(() => verifyEnvelope(env, TYPE, trusted(a), [a.keyid], 1), 'THRESHOLD', /0 of 1 required.*ignored 1 from keys not trusted/);
    expect(err.message).toContain(c.keyid.slice(0, 12));
    // An unknown key next to a valid one changes nothing.
    const both = signEnvelope(TYPE, PAYLOAD, [c, a]);
    expect(verifyEnvelope(both, TYPE, trusted(a), [a.keyid], 1).equals(PAYLOAD)).toBe(true);
  });

  it('ignores a trusted key that is not allowed for the role', () => {
    const env = signEnvelope(TYPE, PAYLOAD, [b]);
    expectError(() => verifyEnvelope(env, TYPE, trusted(a, b), [a.keyid], 1, 'models'), 'THRESHOLD', /not trusted for models/);
  });

  it('rejects a tampered payload', () => {
    const env = signEnvelope(TYPE, PAYLOAD, [a]);
    const tampered = { ...env, payload: Buffer.from('{"hello":"WORLD"}').toString('base64') };
    expectError(() => verifyEnvelope(tampered, TYPE, trusted(a), [a.keyid], 1), 'BAD_SIGNATURE', /does not verify/);
  });

  it('rejects a signature over another payloadType (type is signed too)', () => {
    const env = signEnvelope('application/other', PAYLOAD, [a]);
    const relabelled = { ...env, payloadType: TYPE };
    expectError(() => verifyEnvelope(relabelled, TYPE, trusted(a), [a.keyid], 1), 'BAD_SIGNATURE', /does not verify/);
  });

  it('rejects the wrong payloadType', () => {
    const env = signEnvelope('application/vnd.edgefleet.desired+json', PAYLOAD, [a]);
    expectError(() => verifyEnvelope(env, TYPE, trusted(a), [a.keyid], 1), 'PAYLOAD_TYPE', /carries "application\/vnd.edgefleet.desired\+json", expected/);
  });

  it('rejects malformed envelopes, naming every problem', () => {
    const err = expectError(() => verifyEnvelope({ payload: 5, signatures: 'x' }, TYPE, trusted(a), [a.keyid], 1), 'MALFORMED', /DSSE envelope is invalid/);
    expect(err.problems.map((p) => p.split(':')[0])).toEqual(['payloadType', 'payload', 'signatures']);
    expectError(() => verifyEnvelope('{}', TYPE, trusted(a), [a.keyid], 1), 'MALFORMED', /envelope/);
    const env = signEnvelope(TYPE, PAYLOAD, [a]);
    expectError(() => verifyEnvelope({ ...env, payload: 'not base64!' }, TYPE, trusted(a), [a.keyid], 1), 'MALFORMED', /payload is not valid base64/);
  });

  it('refuses a threshold below 1 instead of accepting unsigned documents', () => {
    const env = { payloadType: TYPE, payload: PAYLOAD.toString('base64'), signatures: [] };
    expect(() => verifyEnvelope(env, TYPE, trusted(a), [a.keyid], 0)).toThrow(RangeError);
  });
});
