/**
 * The collector against a real Mosquitto: shared subscriptions split the
 * load, a killed collector's persistent session loses nothing, duplicates
 * are stored once, nothing is acknowledged before it is stored, and
 * retention deletes old points. Devices are plain mqtt.js clients publishing
 * payloads valid per protocol/reported.ts.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Collector } from '../fleet/collector/collector.js';
import { parseListen } from '../fleet/collector/http-server.js';
import { collect } from '../fleet/commands/collect.js';
import { FailureError, UsageError } from '../fleet/errors.js';
import type { CollectorOptions } from '../fleet/collector/collector.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { FleetStore } from '../fleet/collector/store.js';
import { DEFAULT_TOPIC_ROOT, reportedStateSchema, telemetryBatchSchema, topics } from '../protocol/index.js';
import { REPO } from './helpers/child.js';
import { mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';
import type { Mosquitto } from './helpers/mosquitto.js';

const ROOT = DEFAULT_TOPIC_ROOT;
const skip = mosquittoSkipReason();
const quiet = pino({ level: 'silent' });

// ---- simulated devices ----------------------------------------------------

/** A telemetry batch with one health point per seq, checked against the schema. */
function batch(device: string, seqs: readonly number[], ts = Date.now()): Buffer {
  const points = seqs.map((seq) => ({
    seq, ts: new Date(ts).toISOString(), kind: 'health', cpuPct: seq % 100, load1: 0.1, memUsedBytes: 1e8, memTotalBytes: 1e9,
    tempC: 45, diskFreeBytes: 1e9, rssBytes: 1e7, uptimeS: seq, gpus: [],
  }));
  return Buffer.from(JSON.stringify(telemetryBatchSchema.parse({ schema: 1, device, points })));
}

function stateOf(device: string, groups: string[]): Buffer {
  const now = new Date().toISOString();
  return Buffer.from(JSON.stringify(reportedStateSchema.parse({
    schema: 1, device, groups, ts: now, desired: null, models: [],
    agent: { version: '0.1.0', arch: 'x64', startedAt: now, executionProviders: { available: ['cpu'], unavailable: {} } },
  })));
}

async function connectDevice(url: string, id: string): Promise<MqttClient> {
  return mqtt.connectAsync(url, { protocolVersion: 5, clientId: `device-${id}-${Math.random().toString(16).slice(2)}`, reconnectPeriod: 200 });
}

const publishTelemetry = (client: MqttClient, device: string, seqs: number[], ts?: number): Promise<unknown> =>
  client.publishAsync(topics.device(ROOT, device, 'telemetry'), batch(device, seqs, ts), { qos: 1 });

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Points stored per device, read straight from the SQLite file. */
function countPoints(file: string): number {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM fleet_points').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

// ---- fixtures ---------------------------------------------------------------

let broker: Mosquitto;
let dir: string;
const cleanups: (() => Promise<unknown>)[] = [];
let fileCount = 0;

beforeAll(async () => {
  if (skip) return;
  broker = await startMosquitto();
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-collector-'));
});
afterAll(async () => {
  await broker?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

const dbFile = (): string => join(dir, `fleet-${++fileCount}.db`);

async function sqliteStore(file: string): Promise<SqliteStore> {
  const store = new SqliteStore(file);
  await store.init();
  cleanups.push(() => store.close());
  return store;
}

async function startCollector(store: FleetStore, options: Partial<CollectorOptions> = {}): Promise<Collector> {
  const collector = new Collector({
    broker: { url: broker.url, topicRoot: ROOT, tls: {} },
    store,
    clientId: `collector-${Math.random().toString(16).slice(2)}`,
    // Unique per collector unless a test says otherwise: a stopped collector's session lives on
    // (sessionExpiryS) and the broker keeps queueing its share of the group's messages for it.
    shareGroup: `group-${Math.random().toString(16).slice(2)}`,
    sessionExpiryS: 300,
    retentionMs: null,
    reconnectMs: 100,
    log: quiet,
    ...options,
  });
  await collector.start();
  cleanups.push(() => collector.stop());
  return collector;
}

/** A SQLite store whose first `failures` point inserts throw, as a full disk would. */
async function flakyStore(failures: number): Promise<{ inner: FleetStore; flaky: FleetStore; failuresLeft: () => number }> {
  const inner = await sqliteStore(dbFile());
  const flaky: FleetStore = Object.assign(Object.create(inner) as FleetStore, {
    insertPoints: async (device: string, points: Parameters<FleetStore['insertPoints']>[1]) => {
      if (failures > 0) {
        failures -= 1;
        throw new Error('disk full (simulated)');
      }
      return inner.insertPoints(device, points);
    },
  });
  return { inner, flaky, failuresLeft: () => failures };
}

async function device(id: string): Promise<MqttClient> {
  const client = await connectDevice(broker.url, id);
  cleanups.push(() => client.endAsync());
  return client;
}

// ---- the collector as a child process, for kill -9 ------------------------

interface Child {
  proc: ChildProcess;
  output: () => string;
}

const CHILD_SCRIPT = `
const { collect } = await import('./fleet/commands/collect.ts');
await collect.run(process.argv.slice(1), {
  out: (l) => console.log(l), note: (l) => console.error(l), stderr: process.stderr, cwd: process.cwd(),
});`;

async function spawnCollector(args: string[]): Promise<Child> {
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD_SCRIPT, '--', ...args], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  cleanups.push(async () => proc.exitCode === null && proc.signalCode === null && proc.kill('SIGKILL'));
  await waitFor('the collector to start', () => {
    if (proc.exitCode !== null) throw new Error(`collector exited early (${proc.exitCode}):\n${out}`);
    return out.includes('"msg":"collector started"');
  });
  return { proc, output: () => out };
}

async function kill(child: Child): Promise<void> {
  const exited = new Promise((resolve) => child.proc.once('exit', resolve));
  child.proc.kill('SIGKILL');
  await exited;
}

// ---- tests ----------------------------------------------------------------

describe.skipIf(skip !== false)(`collector on Mosquitto${skip ? ` (skipped: ${skip})` : ''}`, () => {
  it('two collectors in one share group store every point once between them, each some', async () => {
    const file = dbFile();
    const a = await startCollector(await sqliteStore(file), { clientId: 'collector-a', shareGroup: 'split' });
    const b = await startCollector(await sqliteStore(file), { clientId: 'collector-b', shareGroup: 'split' });
    const devices = await Promise.all(['pi-1', 'pi-2', 'pi-3'].map(device));
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < 60; i++) {
      devices.forEach((d, n) => sends.push(publishTelemetry(d, `pi-${n + 1}`, [2 * i + 1, 2 * i + 2])));
    }
    await Promise.all(sends);
    await waitFor('360 points', () => countPoints(file) === 360);
    expect(a.stats.batches).toBeGreaterThan(0);
    expect(b.stats.batches).toBeGreaterThan(0);
    expect(a.stats.batches + b.stats.batches).toBe(180);
    expect(a.stats.points + b.stats.points).toBe(360);
    expect(a.stats.duplicates + b.stats.duplicates).toBe(0);
  });

  it('with connections: 4, three sessions share telemetry and events and the first takes the retained channels; everything stored once', async () => {
    const file = dbFile();
    const store = await sqliteStore(file);
    const collector = await startCollector(store, { clientId: 'collector-lanes', shareGroup: 'lanes', connections: 4 });
    expect(Object.keys(collector.subscriptions()).sort()).toEqual([topics.allDevices(ROOT, 'state'), topics.allDevices(ROOT, 'status')]);
    const devices = await Promise.all(['pi-l1', 'pi-l2', 'pi-l3', 'pi-l4'].map(device));
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < 50; i++) devices.forEach((d, n) => sends.push(publishTelemetry(d, `pi-l${n + 1}`, [2 * i + 1, 2 * i + 2])));
    devices.forEach((d, n) => sends.push(d.publishAsync(topics.device(ROOT, `pi-l${n + 1}`, 'state'), stateOf(`pi-l${n + 1}`, ['lab']), { qos: 1, retain: true })));
    await Promise.all(sends);
    await waitFor('400 points', () => countPoints(file) === 400);
    await waitFor('4 states', () => collector.stats.states >= 4);
    expect(collector.stats).toMatchObject({ batches: 200, points: 400, duplicates: 0 });
    expect((await store.fleetStatus()).filter((r) => r.device.startsWith('pi-l') && r.groups.includes('lab'))).toHaveLength(4);
    // Clear the retained states, so later tests' collectors do not get them.
    for (const d of ['pi-l1', 'pi-l2', 'pi-l3', 'pi-l4']) await devices[0]?.publishAsync(topics.device(ROOT, d, 'state'), '', { qos: 1, retain: true });
  });

  it('every collector gets the retained status and state, not just one of the group', async () => {
    const pi = await device('pi-9');
    await pi.publishAsync(topics.device(ROOT, 'pi-9', 'status'), JSON.stringify({ online: true, ts: new Date().toISOString() }), { qos: 1, retain: true });
    await pi.publishAsync(topics.device(ROOT, 'pi-9', 'state'), stateOf('pi-9', ['lab']), { qos: 1, retain: true });
    const stores = [await sqliteStore(dbFile()), await sqliteStore(dbFile())];
    const collectors = await Promise.all(stores.map((s) => startCollector(s)));
    await waitFor('both to get status and state', () => collectors.every((c) => c.stats.states >= 1 && c.stats.statuses >= 1));
    for (const store of stores) {
      const rows = await store.fleetStatus();
      expect(rows.find((r) => r.device === 'pi-9')).toMatchObject({ online: true, groups: ['lab'] });
    }
    await pi.publishAsync(topics.device(ROOT, 'pi-9', 'status'), '', { qos: 1, retain: true });
    await pi.publishAsync(topics.device(ROOT, 'pi-9', 'state'), '', { qos: 1, retain: true });
  });

  it('stores a point published twice once, and an event redelivered once', async () => {
    const store = await sqliteStore(dbFile());
    const collector = await startCollector(store);
    const pi = await device('pi-dup');
    await publishTelemetry(pi, 'pi-dup', [1, 2, 3, 4, 5]);
    await publishTelemetry(pi, 'pi-dup', [1, 2, 3, 4, 5]);
    await publishTelemetry(pi, 'pi-dup', [4, 5, 6, 7, 8]);
    const event = JSON.stringify({ ts: new Date().toISOString(), type: 'activated', model: 'mnist', version: 3 });
    await pi.publishAsync(topics.device(ROOT, 'pi-dup', 'events'), event, { qos: 1 });
    await pi.publishAsync(topics.device(ROOT, 'pi-dup', 'events'), event, { qos: 1 });
    // The events come after the batches: wait for the first stored, then give the redelivered one time to be dropped.
    await waitFor('three batches and the event', () => collector.stats.batches === 3 && collector.stats.events === 1);
    await new Promise((r) => setTimeout(r, 300));
    expect(collector.stats).toMatchObject({ points: 8, duplicates: 7, events: 1 });
    expect((await store.series('pi-dup', { from: 0, to: Date.now() })).health.map((h) => h.cpuPct)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(await store.events('pi-dup', { from: 0, to: Date.now() })).toHaveLength(1);
  });

  it('acknowledges nothing it could not store: a failed write comes back after a reconnect', async () => {
    const { inner, flaky, failuresLeft } = await flakyStore(2);
    const collector = await startCollector(flaky);
    const pi = await device('pi-flaky');
    for (let i = 0; i < 10; i++) await publishTelemetry(pi, 'pi-flaky', [i + 1]);
    await waitFor('all ten points', async () => (await inner.series('pi-flaky', { from: 0, to: Date.now() })).health.length === 10);
    expect(failuresLeft()).toBe(0);
    expect(collector.stats.points).toBe(10);
  });

  it('over MQTT 3.1.1 (protocol version 4): plain subscriptions, and a failed write still comes back after a reconnect', async () => {
    const { inner, flaky, failuresLeft } = await flakyStore(2);
    const collector = await startCollector(flaky, { broker: { url: broker.url, topicRoot: ROOT, tls: {}, protocolVersion: 4 } });
    expect(Object.keys(collector.subscriptions()).some((f) => f.startsWith('$share/'))).toBe(false);
    const pi = await mqtt.connectAsync(broker.url, { protocolVersion: 4, clientId: `device-v4-${Math.random().toString(16).slice(2)}`, reconnectPeriod: 200 });
    cleanups.push(() => pi.endAsync());
    await pi.publishAsync(topics.device(ROOT, 'pi-v4', 'state'), stateOf('pi-v4', ['lab']), { qos: 1, retain: true });
    for (let i = 0; i < 10; i++) await publishTelemetry(pi, 'pi-v4', [i + 1]);
    await waitFor('all ten points', async () => (await inner.series('pi-v4', { from: 0, to: Date.now() })).health.length === 10);
    await waitFor('the retained state', () => collector.stats.states >= 1);
    expect(failuresLeft()).toBe(0);
    expect(collector.stats.points).toBe(10);
    await pi.publishAsync(topics.device(ROOT, 'pi-v4', 'state'), '', { qos: 1, retain: true });
  });

  it('acknowledges and skips a message that is not valid, and goes on', async () => {
    const store = await sqliteStore(dbFile());
    const collector = await startCollector(store);
    const pi = await device('pi-bad');
    await pi.publishAsync(topics.device(ROOT, 'pi-bad', 'telemetry'), '{"schema":1,"device":"pi-bad","points":[{"seq":-1}]}', { qos: 1 });
    await pi.publishAsync(topics.device(ROOT, 'pi-bad', 'telemetry'), batch('someone-else', [1]), { qos: 1 });
    await publishTelemetry(pi, 'pi-bad', [1]);
    await waitFor('the valid batch', () => collector.stats.batches === 1);
    expect(collector.stats.rejected).toBe(2);
  });

  it('deletes points that arrived longer ago than the retention, periodically', async () => {
    const store = await sqliteStore(dbFile());
    await startCollector(store, { retentionMs: 2_000, pruneEveryMs: 100 });
    const pi = await device('pi-old');
    await publishTelemetry(pi, 'pi-old', [1, 2]);
    const seqs = async (): Promise<number[]> => (await store.series('pi-old', { from: 0, to: Date.now() + 60_000 })).health.map((h) => h.cpuPct);
    await waitFor('the first points', async () => (await seqs()).includes(2));
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await publishTelemetry(pi, 'pi-old', [3]);
    await waitFor('the first points to go', async () => !(await seqs()).includes(1));
    expect(await seqs()).toEqual([3]);
  });

  it('a collector killed with SIGKILL and restarted (persistent session) misses nothing', async () => {
    const file = dbFile();
    const args = ['--broker', broker.url, '--db', `sqlite:${file}`, '--client-id', 'collector-kill', '--share-group', 'kill', '--log-level', 'info'];
    let child = await spawnCollector(args);
    const pi = await device('pi-kill');
    let published = 0;
    const publishSome = async (n: number): Promise<void> => {
      for (const end = published + n; published < end; ) await publishTelemetry(pi, 'pi-kill', [++published]);
    };
    await publishSome(100);
    await waitFor('some points stored', () => countPoints(file) > 0);
    // Killed mid-stream: whatever it had received but not stored was never acknowledged.
    await kill(child);
    await publishSome(100); // while it is down: queued by the broker for its session
    child = await spawnCollector(args);
    await publishSome(50);
    await waitFor('all 250 points', () => countPoints(file) === 250, 30_000);
    expect(child.output()).toContain('"sessionPresent":true');
  });
});

describe('edgefleet collect options', () => {
  const io = { out: () => undefined, note: () => undefined, stderr: process.stderr, cwd: tmpdir() };
  const usage = (args: string[]): Promise<void> => collect.run(['--broker', 'mqtt://127.0.0.1:1', ...args], io);

  it('refuses bad options before connecting to anything', async () => {
    await expect(usage(['--share-group', 'a/b'])).rejects.toThrow(UsageError);
    await expect(usage(['--retention', '30x'])).rejects.toThrow(/--retention must be a duration such as 30d/);
    await expect(usage(['--session-expiry', '-1d'])).rejects.toThrow(UsageError);
    await expect(usage(['--http', 'localhost'])).rejects.toThrow(/--http must be host:port/);
    await expect(usage(['--db', 'mysql://x'])).rejects.toThrow(/--db must be sqlite:PATH or postgres/);
    await expect(usage(['--log-level', 'loud'])).rejects.toThrow(/--log-level/);
    await expect(usage(['--mqtt-version', '3'])).rejects.toThrow(/--mqtt-version must be 5 \(MQTT 5\) or 4/);
    await expect(usage(['--mqtt-version', '4', '--share-group', 'g'])).rejects.toThrow(/--share-group needs MQTT 5/);
    await expect(usage(['--cert', 'c.pem'])).rejects.toThrow(/--cert.*--client-key|--client-cert.*--client-key/);
  });

  it('names the flag and the path of a broker file it cannot read', async () => {
    const missing = join(tmpdir(), `edgefleet-missing-${process.pid}.pem`);
    const err = await usage(['--ca', missing]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FailureError);
    expect(err).toHaveProperty('message', `--ca: cannot read ${missing} (ENOENT)`);
    await expect(usage(['--password-file', missing])).rejects.toThrow(`--password-file: cannot read ${missing} (ENOENT)`);
  });

  it('reads --http addresses', () => {
    expect(parseListen('127.0.0.1:8600')).toEqual({ host: '127.0.0.1', port: 8600 });
    expect(parseListen('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseListen(':8600')).toEqual({ host: '127.0.0.1', port: 8600 });
    expect(() => parseListen('127.0.0.1:99999')).toThrow(UsageError);
  });
});
