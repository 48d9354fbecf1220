import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { scaleModel } from '../models/onnx/zoo.js';
import { parseReportedState, type ReportedState } from '../protocol/reported.js';
import { RolloutState } from '../agent/rollout/rollout-state.js';
import { AgentDatabase, agentDatabasePath, kv, type KvStore } from '../agent/store/database.js';
import { startTestAgent, waitFor } from './helpers/agent.js';
import { buildManifest, connectFleet, makeFleetKeys, publishBlocks, publishDesired, signDesired, signManifest, writeTrust } from './helpers/fleet.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

const SHA = 'c'.repeat(64);

/** The rows as an agent before rollout-state.ts wrote them (kv.setJson of hand-built objects). */
const OLD_ROWS: Record<string, string> = {
  'rollout.active': JSON.stringify({ key: 'group:lab', source: 'group', group: 'lab', serial: 42, acceptedAt: 1764000000000, models: [{ name: 'mnist', version: 3, labels: ['stable'], manifest: { payloadType: 'x', payload: 'e30=', signatures: [] } }] }),
  'rollout.serving': JSON.stringify([{ name: 'mnist', version: 2, isDefault: false }, { name: 'mnist', version: 3, isDefault: true }]),
  'rollout.blocked': JSON.stringify([{ name: 'mnist', version: 4, reason: 'self-test: output "y" element 0 is 1, expected 2', status: 'rejected' }]),
  // `previous: undefined` was dropped by JSON.stringify: a first install.
  'rollout.activation': JSON.stringify({ name: 'mnist', version: 3, previous: undefined, since: '2026-11-21T08:00:00.000Z' }),
  'rollout.previous': JSON.stringify({ mnist: 2, other: 7 }),
  'desired.hash.device': JSON.stringify(SHA),
  'desired.serial.device': JSON.stringify(12),
  'desired.serial.group:lab': JSON.stringify(42),
};

describe('rollout state store', () => {
  let dir: string;
  let database: AgentDatabase;
  let store: KvStore;
  let warnings: { key: string; problem: string }[];
  let state: RolloutState;

  const rawRow = (key: string): string | undefined => database.db.prepare<[string], { value: string }>('SELECT value FROM kv WHERE key = ?').get(key)?.value;
  const putRaw = (key: string, value: string): void => void database.db.prepare('INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)').run(key, value);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-rollout-state-'));
    database = AgentDatabase.open(agentDatabasePath(dir));
    store = kv(database);
    warnings = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line)) });
    state = new RolloutState(store, logger);
  });
  afterEach(async () => {
    database.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('reads every key as an earlier agent wrote it', () => {
    for (const [key, value] of Object.entries(OLD_ROWS)) putRaw(key, value);
    expect(state.active()).toEqual(JSON.parse(OLD_ROWS['rollout.active'] as string));
    expect(state.serving()).toEqual([{ name: 'mnist', version: 2, isDefault: false }, { name: 'mnist', version: 3, isDefault: true }]);
    expect(state.blocked()).toEqual([{ name: 'mnist', version: 4, reason: 'self-test: output "y" element 0 is 1, expected 2', status: 'rejected' }]);
    expect(state.activation()).toEqual({ name: 'mnist', version: 3, since: '2026-11-21T08:00:00.000Z' });
    expect(state.activation()?.previous).toBeUndefined();
    expect(state.previous()).toEqual({ mnist: 2, other: 7 });
    expect(state.desiredHash('device')).toBe(SHA);
    expect(state.desiredSerial('device')).toBe(12);
    expect(state.desiredSerial('group:lab')).toBe(42);
    expect(state.desiredHash('group:lab')).toBeUndefined();
    expect(warnings).toEqual([]);
  });

  it('writes the same keys and JSON shapes, so an older agent could read them back', () => {
    const active = JSON.parse(OLD_ROWS['rollout.active'] as string);
    state.setActive(active);
    state.setServing([{ name: 'mnist', version: 3, isDefault: true }]);
    state.setBlocked([{ name: 'mnist', version: 4, reason: 'r', status: 'failed' }]);
    state.setActivation({ name: 'mnist', version: 3, previous: 2, since: '2026-11-21T08:00:00.000Z' });
    state.setPrevious('mnist', 2);
    state.setPrevious('other', 7);
    state.accept('group:lab', 43, SHA);
    expect(JSON.parse(rawRow('rollout.active') as string)).toEqual(active);
    expect(JSON.parse(rawRow('rollout.serving') as string)).toEqual([{ name: 'mnist', version: 3, isDefault: true }]);
    expect(JSON.parse(rawRow('rollout.blocked') as string)).toEqual([{ name: 'mnist', version: 4, reason: 'r', status: 'failed' }]);
    expect(JSON.parse(rawRow('rollout.activation') as string)).toEqual({ name: 'mnist', version: 3, previous: 2, since: '2026-11-21T08:00:00.000Z' });
    expect(JSON.parse(rawRow('rollout.previous') as string)).toEqual({ mnist: 2, other: 7 });
    expect(JSON.parse(rawRow('desired.serial.group:lab') as string)).toBe(43);
    expect(JSON.parse(rawRow('desired.hash.group:lab') as string)).toBe(SHA);
    state.clearActivation();
    state.clearActive();
    expect(rawRow('rollout.activation')).toBeUndefined();
    expect(rawRow('rollout.active')).toBeUndefined();
  });

  it('treats a value that is not JSON or fails its schema as absent, and logs it once per key', () => {
    putRaw('rollout.active', '{"key": "device", "source": "device", "serial": ');
    putRaw('rollout.serving', JSON.stringify({ name: 'mnist', version: 3 }));
    putRaw('rollout.blocked', JSON.stringify([{ name: 'mnist', version: 4, reason: 'r', status: 'broken' }]));
    putRaw('rollout.activation', JSON.stringify({ name: 'mnist', version: '3', since: 'x' }));
    putRaw('rollout.previous', JSON.stringify({ mnist: 0 }));
    putRaw('desired.serial.device', JSON.stringify('12'));
    putRaw('desired.hash.device', JSON.stringify(12));
    expect(state.active()).toBeUndefined();
    expect(state.serving()).toEqual([]);
    expect(state.blocked()).toEqual([]);
    expect(state.activation()).toBeUndefined();
    expect(state.previous()).toEqual({});
    expect(state.desiredSerial('device')).toBeUndefined();
    expect(state.desiredHash('device')).toBeUndefined();
    expect(state.serving()).toEqual([]); // read again: not logged again
    expect(warnings.map((w) => w.key).sort()).toEqual(['desired.hash.device', 'desired.serial.device', 'rollout.activation', 'rollout.active', 'rollout.blocked', 'rollout.previous', 'rollout.serving']);
    expect(warnings.find((w) => w.key === 'rollout.blocked')?.problem).toMatch(/^0\.status: /);
    expect(warnings.find((w) => w.key === 'rollout.activation')?.problem).toMatch(/^version: /);
    // A good value written over it reads back, and a later bad one is reported again.
    state.setServing([{ name: 'mnist', version: 3, isDefault: true }]);
    expect(state.serving()).toEqual([{ name: 'mnist', version: 3, isDefault: true }]);
    putRaw('rollout.serving', 'null');
    expect(state.serving()).toEqual([]);
    expect(warnings.filter((w) => w.key === 'rollout.serving')).toHaveLength(2);
  });
});

const skip = mosquittoSkipReason();

describe.skipIf(skip)('an agent whose stored rollout state is damaged', () => {
  let broker: Mosquitto;
  let fleet: MqttClient;
  beforeAll(async () => {
    broker = await startMosquitto();
    fleet = await connectFleet(broker.url);
  });
  afterAll(async () => {
    await fleet?.endAsync();
    await broker?.stop();
  });

  it('boots, serves nothing it cannot trust, and applies the next desired document', async () => {
    const keys = makeFleetKeys();
    const device = 'pi-damaged';
    const base = await mkdtemp(join(tmpdir(), 'edgefleet-damaged-'));
    const stateDir = join(base, 'state');
    const trust = join(base, 'trust.json');
    await writeTrust(trust, keys);
    const seeded = AgentDatabase.open(agentDatabasePath(stateDir));
    const put = seeded.db.prepare('INSERT INTO kv (key, value) VALUES (?, ?)');
    put.run('rollout.active', '{"truncated":');
    put.run('rollout.serving', JSON.stringify([{ name: 'scale', version: 'one', isDefault: true }]));
    put.run('rollout.activation', JSON.stringify({ name: 'scale' }));
    put.run('rollout.blocked', JSON.stringify('nope'));
    put.run('desired.serial.device', JSON.stringify({ serial: 9 }));
    seeded.close();
    let state: ReportedState | undefined;
    await fleet.subscribeAsync(`edgefleet/devices/${device}/state`, { qos: 1 });
    fleet.on('message', (topic, payload) => {
      if (topic === `edgefleet/devices/${device}/state` && payload.length > 0) state = parseReportedState(payload);
    });
    const t = await startTestAgent({ deviceId: device, stateDir, trust, mqtt: { url: broker.url, topicRoot: 'edgefleet' }, rollout: { healthWindowS: 0, retryBaseMs: 50 } });
    try {
      const booted = await waitFor(() => state, 10_000, 'first reported state');
      expect(booted.desired).toBeNull();
      expect(booted.models).toEqual([]);
      const bytes = scaleModel(1);
      const manifest = buildManifest('scale', 1, bytes);
      await publishBlocks(fleet, 'edgefleet', manifest, bytes);
      const doc = signDesired({ target: { device }, serial: 1, models: [{ name: 'scale', version: 1, manifest: signManifest(manifest, [keys.models]) }] }, [keys.rollout]);
      await publishDesired(fleet, 'edgefleet', { device }, doc);
      const applied = await waitFor(() => state?.desired?.status === 'applied' && state, 20_000, 'serial 1 applied');
      expect(applied.models).toMatchObject([{ name: 'scale', version: 1, state: 'serving' }]);
    } finally {
      await t.close();
      await rm(base, { recursive: true, force: true });
    }
  });
});
