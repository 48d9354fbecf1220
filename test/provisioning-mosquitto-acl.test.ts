/**
 * provisioning/mosquitto/{edgefleet.conf,acl} on a real Mosquitto: mutual TLS
 * with certificates from `edgefleet ca`, and the per-device ACL seen from a
 * device (pi-001) and the fleet operator (fleet-admin), who subscribes to
 * everything and so sees any message a device manages to publish.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { caInit } from '../fleet/commands/ca-init.js';
import { caServerCert } from '../fleet/commands/ca-server-cert.js';
import { caSign } from '../fleet/commands/ca-sign.js';
import type { Command } from '../fleet/command.js';
import { REPO, freePort } from './helpers/child.js';
import { MOSQUITTO_BIN, mosquittoSkipReason } from './helpers/mosquitto.js';

function skipReason(): string | false {
  const broker = mosquittoSkipReason();
  if (broker) return broker;
  if (spawnSync('openssl', ['version']).status === 0) return false;
  if (process.env.CI) throw new Error('openssl is missing but CI is set: apt-get install -y openssl');
  return 'openssl not found; apt-get install -y openssl to run the broker ACL tests';
}
const skip = skipReason();
if (skip) console.warn(`Mosquitto ACL tests skipped: ${skip}`);

const SHA = 'ab'.repeat(32);
let dir: string;
let broker: ChildProcess | undefined;
let brokerLog = '';
let port: number;
const clients: MqttClient[] = [];

async function run(command: Command, args: string[]): Promise<void> {
  await command.run(args, { out: () => undefined, note: () => undefined, stderr: { write: () => true }, cwd: dir });
}

/** A key and CSR as provision.sh makes them, signed by `edgefleet ca sign`. */
async function identity(cn: string): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${cn}.key`);
  const csr = join(dir, `${cn}.csr`);
  const made = spawnSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-subj', `/CN=${cn}`, '-out', csr]);
  if (made.status !== 0) throw new Error(made.stderr.toString());
  await run(caSign, ['--ca', 'ca', '--csr', csr, '--out', `${cn}.pem`, ...(cn === 'fleet-admin' ? ['--operator'] : cn === 'fleet-collector' ? ['--collector'] : [])]);
  return { cert: await readFile(join(dir, `${cn}.pem`), 'utf8'), key: await readFile(key, 'utf8') };
}

/** The shipped config with only paths, port and logging changed; each change must apply. */
async function brokerConfig(): Promise<string> {
  let text = await readFile(join(REPO, 'provisioning', 'mosquitto', 'edgefleet.conf'), 'utf8');
  const swaps: [RegExp, string][] = [
    [/^listener 8883$/m, `listener ${port} 127.0.0.1`],
    [/^acl_file .*$/m, `acl_file ${join(dir, 'acl')}`],
    [/^cafile .*$/m, `cafile ${join(dir, 'ca', 'ca.pem')}`],
    [/^certfile .*$/m, `certfile ${join(dir, 'broker', 'server.pem')}`],
    [/^keyfile .*$/m, `keyfile ${join(dir, 'broker', 'server.key')}`],
    [/^persistence true$/m, 'persistence false'],
  ];
  for (const [re, line] of swaps) {
    if (!re.test(text)) throw new Error(`edgefleet.conf has no line matching ${re}`);
    text = text.replace(re, line);
  }
  // Mosquitto started as root drops to user "mosquitto", which could not read the temp dir.
  return `${text}\nuser ${userInfo().username}\nlog_dest stderr\nlog_type error\nlog_type warning\n`;
}

async function waitForPort(): Promise<void> {
  const until = Date.now() + 10_000;
  for (;;) {
    if (broker?.exitCode !== null) throw new Error(`mosquitto exited: ${brokerLog}`);
    const open = await new Promise<boolean>((resolve) => {
      const s = connect({ port, host: '127.0.0.1' });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > until) throw new Error(`mosquitto did not listen: ${brokerLog}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let ca: string;
async function client(clientId: string, id: { cert: string; key: string } | undefined, extra: IClientOptions = {}): Promise<MqttClient> {
  const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, {
    protocolVersion: 5, clientId, reconnectPeriod: 0, connectTimeout: 5_000, ca, rejectUnauthorized: true, ...(id ?? {}), ...extra,
  });
  clients.push(c);
  return c;
}

interface Seen {
  topic: string;
  payload: string;
}

/** Everything `sub` receives, and a way to wait for one payload. */
function watch(sub: MqttClient): { seen: Seen[]; until(payload: string): Promise<void> } {
  const seen: Seen[] = [];
  const waiters: (() => void)[] = [];
  sub.on('message', (topic, payload) => {
    seen.push({ topic, payload: payload.toString() });
    for (const w of waiters.splice(0)) w();
  });
  return {
    seen,
    until(payload) {
      const start = Date.now();
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (seen.some((s) => s.payload === payload)) return resolve();
          if (Date.now() - start > 5_000) return reject(new Error(`"${payload}" never arrived; saw ${JSON.stringify(seen)}`));
          waiters.push(check);
          setTimeout(check, 100);
        };
        check();
      });
    },
  };
}

/** Publishes QoS 1; resolves to the error when the broker refuses (MQTT 5 PUBACK reason code). */
async function publish(c: MqttClient, topic: string, payload: string, retain = false): Promise<Error | undefined> {
  return c.publishAsync(topic, payload, { qos: 1, retain }).then(
    () => undefined,
    (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
  );
}

let admin: MqttClient;
let adminSeen: ReturnType<typeof watch>;
let device: MqttClient;
let deviceKeys: { cert: string; key: string };
let marker = 0;
let collectorKeys: Promise<{ cert: string; key: string }> | undefined;
/** The collector's identity (CN=fleet-collector), made once for the tests that need it. */
const collectorIdentity = (): Promise<{ cert: string; key: string }> => (collectorKeys ??= identity('fleet-collector'));

/**
 * Publishes `payload` from `from` on `topic`, then a marker on the device's own
 * events topic. The broker delivers one client's QoS 1 messages in order, so
 * once the admin has the marker, a permitted message would have arrived first.
 */
async function reachesAdmin(from: MqttClient, topic: string, payload: string): Promise<boolean> {
  await publish(from, topic, payload);
  const m = `marker-${++marker}`;
  expect(await publish(device, 'edgefleet/devices/pi-001/events', m)).toBeUndefined();
  await adminSeen.until(m);
  return adminSeen.seen.some((s) => s.topic === topic && s.payload === payload);
}

beforeAll(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-acl-'));
  port = await freePort();
  await run(caInit, ['--out', 'ca']);
  await run(caServerCert, ['--ca', 'ca', '--out', 'broker', '--san', 'localhost,127.0.0.1']);
  await copyFile(join(REPO, 'provisioning', 'mosquitto', 'acl'), join(dir, 'acl'));
  await writeFile(join(dir, 'mosquitto.conf'), await brokerConfig());
  ca = await readFile(join(dir, 'ca', 'ca.pem'), 'utf8');
  broker = spawn(MOSQUITTO_BIN, ['-c', join(dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  broker.stderr?.on('data', (d: Buffer) => (brokerLog = (brokerLog + d.toString()).slice(-4000)));
  await waitForPort();

  admin = await client('fleet-admin', await identity('fleet-admin'));
  adminSeen = watch(admin);
  await admin.subscribeAsync('edgefleet/#', { qos: 1 });
  deviceKeys = await identity('pi-001');
  // The agent's last will is its status topic: the broker must accept it at CONNECT.
  device = await client('pi-001', deviceKeys, { will: { topic: 'edgefleet/devices/pi-001/status', payload: Buffer.from('{"online":false}'), qos: 1, retain: true } });
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
  if (broker && broker.exitCode === null) {
    const exited = new Promise((r) => broker?.once('exit', r));
    broker.kill('SIGTERM');
    await exited;
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe.skipIf(skip)('Mosquitto with provisioning/mosquitto (mutual TLS, per-device ACL)', () => {
  it('lets a device publish its own status, state, events and telemetry', async () => {
    for (const channel of ['status', 'state', 'events', 'telemetry']) {
      const topic = `edgefleet/devices/pi-001/${channel}`;
      expect(await publish(device, topic, `own ${channel}`, channel === 'status' || channel === 'state')).toBeUndefined();
      await adminSeen.until(`own ${channel}`);
    }
  });

  it("does not let a device publish another device's state", async () => {
    expect(await reachesAdmin(device, 'edgefleet/devices/pi-002/state', 'forged state')).toBe(false);
    expect(await reachesAdmin(device, 'edgefleet/devices/pi-002/status', 'forged status')).toBe(false);
    // The broker says so (MQTT 5 PUBACK "Not authorized").
    expect((await publish(device, 'edgefleet/devices/pi-002/telemetry', 'x'))?.message).toMatch(/not authorized/i);
  });

  it('does not let a device publish desired state, trust or artifact blocks', async () => {
    for (const topic of ['edgefleet/devices/pi-001/desired', 'edgefleet/devices/pi-002/desired', 'edgefleet/groups/lab/desired', 'edgefleet/trust', 'edgefleet/trust/3', `edgefleet/artifacts/${SHA}/blocks/0`, 'edgefleet/other']) {
      expect(await reachesAdmin(device, topic, `forged ${topic}`), topic).toBe(false);
    }
  });

  it('lets the operator publish what a device reads, and the device read only its own', async () => {
    const published: [string, string][] = [
      ['edgefleet/devices/pi-001/desired', 'desired for pi-001'],
      ['edgefleet/devices/pi-002/desired', 'desired for pi-002'],
      ['edgefleet/groups/lab/desired', 'desired for lab'],
      ['edgefleet/trust', 'trust v2'],
      ['edgefleet/trust/2', 'trust chain v2'],
      [`edgefleet/artifacts/${SHA}/blocks/0`, 'block 0'],
    ];
    for (const [topic, payload] of published) {
      expect(await publish(admin, topic, payload, true), topic).toBeUndefined();
      await adminSeen.until(payload);
    }
    // A second session of the same device subscribes as the agent does.
    const reader = await client('pi-001-reader', deviceKeys);
    const got = watch(reader);
    const allowed = ['edgefleet/devices/pi-001/desired', 'edgefleet/groups/lab/desired', 'edgefleet/trust', 'edgefleet/trust/+', `edgefleet/artifacts/${SHA}/blocks/0`];
    const granted = await reader.subscribeAsync(allowed, { qos: 1 });
    expect(granted.map((g) => g.qos)).toEqual([1, 1, 1, 1, 1]);
    for (const payload of ['desired for pi-001', 'desired for lab', 'trust v2', 'trust chain v2', 'block 0']) await got.until(payload);

    // Mosquitto 2.0 grants the SUBSCRIBE and checks read access per message, so the
    // retained messages there must simply never come. A marker published after the
    // subscription arrives after them (one session's messages keep their order).
    await reader.subscribeAsync(['edgefleet/devices/pi-002/desired', 'edgefleet/devices/pi-002/state', 'edgefleet/devices/pi-001/state'], { qos: 1 });
    expect(await publish(admin, 'edgefleet/trust', 'trust v3', true)).toBeUndefined();
    await got.until('trust v3');
    const payloads = got.seen.map((s) => s.payload);
    expect(payloads).not.toContain('desired for pi-002');
    expect(payloads).not.toContain('own state');
  });

  it("lets a device read its own telemetry ack (retained, from the collector) and never write one, its own or another's", async () => {
    const collector = await client('fleet-collector-acks', await collectorIdentity());
    expect(await publish(collector, 'edgefleet/devices/pi-001/telemetry/ack', '{"schema":1,"device":"pi-001","upTo":41}', true)).toBeUndefined();
    await adminSeen.until('{"schema":1,"device":"pi-001","upTo":41}');
    const reader = await client('pi-001-acks', deviceKeys);
    const got = watch(reader);
    expect((await reader.subscribeAsync('edgefleet/devices/pi-001/telemetry/ack', { qos: 1 })).map((g) => g.qos)).toEqual([1]);
    await got.until('{"schema":1,"device":"pi-001","upTo":41}');

    for (const topic of ['edgefleet/devices/pi-001/telemetry/ack', 'edgefleet/devices/pi-002/telemetry/ack']) {
      expect(await reachesAdmin(device, topic, `{"schema":1,"device":"pi-001","upTo":999999}`), topic).toBe(false);
      expect((await publish(device, topic, 'forged ack'))?.message, topic).toMatch(/not authorized/i);
    }
    // Another device's ack is not readable either.
    expect(await publish(collector, 'edgefleet/devices/pi-002/telemetry/ack', 'ack for pi-002', true)).toBeUndefined();
    await reader.subscribeAsync('edgefleet/devices/pi-002/telemetry/ack', { qos: 1 });
    expect(await publish(collector, 'edgefleet/devices/pi-001/telemetry/ack', '{"schema":1,"device":"pi-001","upTo":42}', true)).toBeUndefined();
    await got.until('{"schema":1,"device":"pi-001","upTo":42}');
    expect(got.seen.map((s) => s.payload)).not.toContain('ack for pi-002');
  });

  it('gives the collector user (fleet-collector) reading of device channels through $share and writing of acks, nothing else', async () => {
    const collector = await client('fleet-collector-1', await collectorIdentity(), { clean: false, properties: { sessionExpiryInterval: 60 } });
    const got = watch(collector);
    const filters = ['telemetry', 'events', 'status', 'state'].map((c) => `$share/edgefleet-collectors/edgefleet/devices/+/${c}`);
    expect((await collector.subscribeAsync(filters, { qos: 1 })).map((g) => g.qos)).toEqual([1, 1, 1, 1]);
    for (const channel of ['telemetry', 'events', 'status', 'state']) {
      expect(await publish(device, `edgefleet/devices/pi-001/${channel}`, `for the collector: ${channel}`)).toBeUndefined();
      await got.until(`for the collector: ${channel}`);
    }
    // Writes: only telemetry acks.
    expect(await reachesAdmin(collector, 'edgefleet/devices/pi-001/telemetry/ack', 'a real ack')).toBe(true);
    const refused = [
      'edgefleet/devices/pi-001/desired', 'edgefleet/groups/lab/desired', 'edgefleet/trust', 'edgefleet/trust/9', `edgefleet/artifacts/${SHA}/blocks/0`,
      'edgefleet/devices/pi-001/telemetry', 'edgefleet/devices/pi-001/state', 'edgefleet/devices/pi-001/status', 'edgefleet/devices/pi-001/events', 'edgefleet/other',
    ];
    for (const topic of refused) {
      expect(await reachesAdmin(collector, topic, `collector forged ${topic}`), topic).toBe(false);
    }
    expect((await publish(collector, 'edgefleet/devices/pi-001/desired', 'x'))?.message).toMatch(/not authorized/i);
    // Reads: not a device's desired document (the retained one never comes). Group documents,
    // trust and blocks are readable by every user through the device patterns, as by any device.
    await collector.subscribeAsync(['edgefleet/devices/pi-001/desired', 'edgefleet/devices/+/desired'], { qos: 1 });
    expect(await publish(device, 'edgefleet/devices/pi-001/events', 'after the reads')).toBeUndefined();
    await got.until('after the reads');
    expect(got.seen.map((s) => s.payload)).not.toContain('desired for pi-001');
  });

  it('sets queue limits for persistent sessions, with the reason', async () => {
    const text = await readFile(join(REPO, 'provisioning', 'mosquitto', 'edgefleet.conf'), 'utf8');
    expect(text).toMatch(/^max_queued_messages 100000$/m);
    expect(text).toMatch(/^max_queued_bytes 536870912$/m);
    expect(text).toMatch(/# .*1,000 devices sending one batch every 10 s/);
  });

  it('refuses a client without a certificate, or with one from another CA', async () => {
    await expect(client('anonymous', undefined)).rejects.toThrow();
    const other = join(dir, 'other-ca');
    await run(caInit, ['--out', other, '--name', 'rogue CA']);
    const key = join(dir, 'rogue.key');
    const csr = join(dir, 'rogue.csr');
    spawnSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-subj', '/CN=fleet-admin', '-out', csr]);
    await run(caSign, ['--ca', other, '--csr', csr, '--out', 'rogue.pem', '--operator']);
    const rogue = { cert: await readFile(join(dir, 'rogue.pem'), 'utf8'), key: await readFile(key, 'utf8') };
    await expect(client('rogue', rogue)).rejects.toThrow();
  });
});
