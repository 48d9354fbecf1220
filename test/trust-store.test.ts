import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MqttConnection } from '../agent/mqtt/connection.js';
import { TrustStore } from '../agent/rollout/trust-store.js';
import type { RotationResult } from '../agent/rollout/trust-store.js';
import {
  buildTrustDocument, encodeDocument, generateKeyPair, PAYLOAD_TYPES, signEnvelope, topics, trustDocumentSchema,
} from '../protocol/index.js';
import type { KeyPair, Trust, TrustDocument } from '../protocol/index.js';
import { mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
const skip = mosquittoSkipReason();

const roots = [generateKeyPair(), generateKeyPair(), generateKeyPair(), generateKeyPair()] as const;
const models = generateKeyPair();
const rollout = generateKeyPair();

/** Trust version `version` with `roots[version - 1]` as its single root key. */
function trustDoc(version: number): TrustDocument {
  const root = roots[version - 1];
  if (!root) throw new Error('fixture has no root key for that version');
  return buildTrustDocument({
    version,
    expiresAt: '2036-01-01T00:00:00Z',
    roles: {
      root: { publicKeys: [root.publicKey], threshold: 1 },
      models: { publicKeys: [models.publicKey], threshold: 1 },
      rollout: { publicKeys: [rollout.publicKey], threshold: 1 },
    },
  });
}

function rotation(version: number, signers: KeyPair[]): Buffer {
  const payload = encodeDocument(trustDocumentSchema, trustDoc(version), 'trust document');
  return Buffer.from(JSON.stringify(signEnvelope(PAYLOAD_TYPES.trust, payload, signers)));
}
/** The proper rotation to `version`: signed by the previous root key and the new one. */
const properRotation = (version: number): Buffer => rotation(version, [roots[version - 2] as KeyPair, roots[version - 1] as KeyPair]);

describe('TrustStore', () => {
  let dir: string;
  let provisioned: string;
  let stateDir: string;
  let changes: Trust[];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-trust-'));
    provisioned = join(dir, 'provisioned-trust.json');
    stateDir = join(dir, 'state');
    await writeFile(provisioned, JSON.stringify(trustDoc(1)));
    await mkdir(stateDir);
    changes = [];
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const store = (provisionedPath: string | undefined = provisioned): TrustStore =>
    new TrustStore({ provisionedPath, stateDir, logger, onChange: (t) => changes.push(t) });

  it('loads the provisioned trust document', async () => {
    const s = store();
    const trust = await s.load();
    expect(trust.version).toBe(1);
    expect(s.current).toBe(trust);
  });

  it('accepts a rotation signed by the old and the new root, persists it, and loads it after a restart', async () => {
    const s = store();
    await s.load();
    const result = await s.handleRotation(properRotation(2));
    expect(result).toEqual({ accepted: true, version: 2 });
    expect(s.current.version).toBe(2);
    expect(changes.map((t) => t.version)).toEqual([2]);
    const file = join(stateDir, 'trust.json');
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual(trustDoc(2));
    expect((await stat(file)).mode & 0o777).toBe(0o644);

    const again = store();
    expect((await again.load()).version).toBe(2);
    // And rotates on from there.
    expect(await again.handleRotation(properRotation(3))).toEqual({ accepted: true, version: 3 });
  });

  it('rejects a rotation that skips a version', async () => {
    const s = store();
    await s.load();
    const result = await s.handleRotation(rotation(3, [roots[0], roots[2]]));
    expect(result.accepted).toBe(false);
    expect(result.error?.code).toBe('TRUST_VERSION');
    expect(s.current.version).toBe(1);
    expect(changes).toEqual([]);
  });

  it('rejects a rotation signed by the new root only, or by the old root only', async () => {
    const s = store();
    await s.load();
    const newOnly = await s.handleRotation(rotation(2, [roots[1]]));
    expect(newOnly.accepted).toBe(false);
    expect(['THRESHOLD', 'BAD_SIGNATURE']).toContain(newOnly.error?.code);
    expect(newOnly.error?.message).toMatch(/current root/);
    const oldOnly = await s.handleRotation(rotation(2, [roots[0]]));
    expect(oldOnly.error?.code).toBe('THRESHOLD');
    expect(oldOnly.error?.message).toMatch(/new root/);
    expect(s.current.version).toBe(1);
    await expect(stat(join(stateDir, 'trust.json'))).rejects.toThrow(/ENOENT/);
  });

  it('treats the same or an older version, or a cleared message, as a silent no-op', async () => {
    const s = store();
    await s.load();
    await s.handleRotation(properRotation(2));
    const repeats: RotationResult[] = [
      await s.handleRotation(properRotation(2)),
      await s.handleRotation(rotation(1, [roots[0]])),
      await s.handleRotation(Buffer.alloc(0)),
    ];
    for (const r of repeats) {
      expect(r.accepted).toBe(false);
      expect(r.error).toBeUndefined();
    }
    expect(changes).toHaveLength(1);
  });

  it('refuses a link of the chain whose document is not the version its topic names', async () => {
    const s = store();
    await s.load();
    const result = await s.handleRotation(properRotation(2), { topicVersion: 3 });
    expect(result.error?.code).toBe('TRUST_VERSION');
    expect(result.error?.message).toBe('it carries trust version 2, not version 3 as its topic says');
    expect(s.current.version).toBe(1);
    expect(await s.handleRotation(properRotation(2), { topicVersion: 2 })).toEqual({ accepted: true, version: 2 });
  });

  it('reports a malformed message with its code', async () => {
    const s = store();
    await s.load();
    expect((await s.handleRotation(Buffer.from('not json'))).error?.code).toBe('MALFORMED');
    expect((await s.handleRotation(Buffer.from('{"payloadType":"x","payload":"","signatures":[]}'))).error?.code).toBe('PAYLOAD_TYPE');
  });

  it('falls back to the provisioned document when the persisted one is corrupt', async () => {
    await writeFile(join(stateDir, 'trust.json'), '{"schema": 1, "vers');
    expect((await store().load()).version).toBe(1);
  });

  it('uses the provisioned document when it is newer than the persisted one (re-provisioned device)', async () => {
    await writeFile(join(stateDir, 'trust.json'), JSON.stringify(trustDoc(1)));
    await writeFile(provisioned, JSON.stringify(trustDoc(2)));
    expect((await store().load()).version).toBe(2);
  });

  it('fails to start with a clear message when the provisioned document is corrupt or missing and none was persisted', async () => {
    await writeFile(provisioned, '{}');
    await expect(store().load()).rejects.toThrow(new RegExp(`trust: cannot use ${provisioned}: trust document is invalid`));
    await expect(store(join(dir, 'nope.json')).load()).rejects.toThrow(/nope\.json: file not found/);
    const unconfigured = new TrustStore({ provisionedPath: undefined, stateDir, logger });
    await expect(unconfigured.load()).rejects.toThrow(/set "trust" in the configuration/);
  });

  it('uses the persisted document when the provisioned one is unusable', async () => {
    const s = store();
    await s.load();
    await s.handleRotation(properRotation(2));
    await writeFile(provisioned, 'garbage');
    expect((await store().load()).version).toBe(2);
  });

  it.skipIf(skip)('rotates from the retained message on {root}/trust once; the message repeated is a no-op', async () => {
    const broker = await startMosquitto();
    const root = `t${randomBytes(4).toString('hex')}`;
    const conn = new MqttConnection({ config: { url: broker.url, topicRoot: root, keepaliveS: 30 }, deviceId: `dev-${randomBytes(4).toString('hex')}`, logger });
    try {
      const publisher = await connectAsync(broker.url, { protocolVersion: 5 });
      await publisher.publishAsync(topics.trust(root), properRotation(2), { qos: 1, retain: true });
      await publisher.endAsync();
      const s = store();
      await s.load();
      const results: RotationResult[] = [];
      conn.onMessage((topic, payload) => {
        if (topic === topics.trust(root)) void s.handleRotation(payload).then((r) => results.push(r));
      });
      await conn.start();
      await conn.subscribe(topics.trust(root));
      await waitUntil(() => results.length === 1);
      expect(results[0]).toEqual({ accepted: true, version: 2 });
      // Subscribing again (as the agent does on every start) delivers the retained message again.
      await conn.client.unsubscribeAsync(topics.trust(root));
      await conn.subscribe(topics.trust(root));
      await waitUntil(() => results.length === 2);
      expect(results[1]).toEqual({ accepted: false, version: 2 });
      expect(changes).toHaveLength(1);
    } finally {
      await conn.stop();
      await broker.stop();
    }
  });
});

async function waitUntil(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 25));
  }
}
