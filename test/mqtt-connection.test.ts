import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MqttConfig } from '../agent/mqtt/connection.js';
import { backoffDelay, MqttConnection } from '../agent/mqtt/connection.js';
import { parseStatus } from '../protocol/index.js';
import { MOSQUITTO_BIN, mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';
import type { Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
if (skip) console.warn(`mqtt-connection tests skipped: ${skip}`);

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
const uid = (): string => randomBytes(4).toString('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(check: () => T | undefined | false, what: string, timeoutMs = 10_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

interface Seen {
  topic: string;
  text: string;
  retain: boolean;
}

/** The MQTT versions every connection test runs over, and how Mosquitto's log names each (p2 is 3.1.1). */
const VERSIONS = [
  { protocolVersion: 5, name: 'MQTT 5', logged: 'p5' },
  { protocolVersion: 4, name: 'MQTT 3.1.1', logged: 'p2' },
] as const;
type ProtocolVersion = (typeof VERSIONS)[number]['protocolVersion'];

/** A plain mqtt.js client that records what arrives on `filter`. */
async function watch(url: string, filter: string, protocolVersion: ProtocolVersion): Promise<{ client: MqttClient; seen: Seen[] }> {
  const client = await connectAsync(url, { protocolVersion, clientId: `watch-${uid()}`, reconnectPeriod: 100 });
  const seen: Seen[] = [];
  client.on('message', (topic, payload, packet) => seen.push({ topic, text: payload.toString(), retain: packet.retain }));
  await client.subscribeAsync(filter, { qos: 1 });
  return { client, seen };
}

const baseCfg = (url: string, extra: Partial<MqttConfig> = {}): MqttConfig => ({ url, topicRoot: `t${uid()}`, keepaliveS: 30, ...extra });

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

describe('backoffDelay', () => {
  it('doubles from the initial delay up to the cap, with up to half of it random', () => {
    expect([0, 1, 2, 3].map((n) => backoffDelay(n, 1000, 60_000, () => 1))).toEqual([1000, 2000, 4000, 8000]);
    expect([0, 1, 2].map((n) => backoffDelay(n, 1000, 60_000, () => 0))).toEqual([500, 1000, 2000]);
    expect(backoffDelay(20, 1000, 60_000, () => 1)).toBe(60_000);
    expect(backoffDelay(1000, 1000, 60_000, () => 0)).toBe(30_000);
  });
});

/*
 * One suite over both MQTT versions the agent speaks (MQTT.js's
 * abstract_client pattern), each against its own real Mosquitto.
 */
describe.skipIf(skip).each(VERSIONS)(`MqttConnection over $name against Mosquitto${skip ? ` (skipped: ${skip})` : ''}`, ({ protocolVersion, logged }) => {
  let broker: Mosquitto;
  const cleanups: (() => Promise<unknown>)[] = [];
  const cfg = (url: string, extra: Partial<MqttConfig> = {}): MqttConfig => baseCfg(url, { protocolVersion, ...extra });

  beforeAll(async () => {
    broker = await startMosquitto({ logTypes: ['notice'] });
  });
  afterAll(async () => {
    await broker?.stop();
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  function connection(config: MqttConfig, extra: Partial<ConstructorParameters<typeof MqttConnection>[0]> = {}): MqttConnection {
    const conn = new MqttConnection({ config, deviceId: `dev-${uid()}`, logger, startWaitMs: 5000, ...extra });
    cleanups.push(() => conn.stop());
    return conn;
  }
  async function watcher(filter: string): Promise<Seen[]> {
    const { client, seen } = await watch(broker.url, filter, protocolVersion);
    cleanups.push(() => client.endAsync(true));
    return seen;
  }

  it('connects with that version, publishes retained online status and round-trips messages', async () => {
    let connects = 0;
    const deviceId = `dev-${uid()}`;
    const conn = connection(cfg(broker.url), { deviceId, onConnect: () => (connects += 1) });
    await conn.start();
    expect(conn.connected).toBe(true);
    expect(connects).toBe(1);
    expect(conn.client.options.protocolVersion).toBe(protocolVersion);
    // The broker saw that protocol level, a persistent session (c0) and the configured keepalive.
    await waitForAsync(async () => (await readFile(broker.logFile ?? '', 'utf8')).includes(`as ${deviceId} (${logged}, c0, k30)`), 'broker log of the connect');
    // Only MQTT 5 can ask for a session expiry: a 3.1.1 CONNECT with properties is malformed.
    expect(conn.client.options.properties?.sessionExpiryInterval).toBe(protocolVersion === 5 ? 7 * 24 * 3600 : undefined);
    const status = await watcher(conn.statusTopic);
    const retained = await waitFor(() => status.find((m) => m.retain), 'retained status');
    const parsed = parseStatus(retained.text);
    expect(parsed.online).toBe(true);
    expect(Date.now() - Date.parse(parsed.ts ?? '')).toBeLessThan(10_000);

    const inbox: string[] = [];
    const off = conn.onMessage((topic, payload) => inbox.push(`${topic}=${payload.toString()}`));
    await conn.subscribe(`${conn.topicRoot}/in/#`);
    await conn.publishJson(`${conn.topicRoot}/in/a`, { n: 1 });
    await waitFor(() => inbox.length === 1, 'own message back');
    expect(inbox).toEqual([`${conn.topicRoot}/in/a={"n":1}`]);
    off();
    await conn.publishJson(`${conn.topicRoot}/in/b`, { n: 2 });
    await sleep(200);
    expect(inbox).toHaveLength(1);
  });

  it('leaves a retained {"online":false} will when its socket dies, then reconnects and is online again', async () => {
    const conn = connection(cfg(broker.url));
    await conn.start();
    const status = await watcher(conn.statusTopic);
    await waitFor(() => status.length === 1, 'initial status');
    conn.client.stream.destroy();
    const will = await waitFor(() => status.find((m) => JSON.parse(m.text).online === false), 'last will');
    expect(JSON.parse(will.text)).toEqual({ online: false });
    await waitFor(() => status.slice(status.indexOf(will)).find((m) => JSON.parse(m.text).online === true), 'online again');
    expect(conn.connected).toBe(true);
  });

  it('keeps its session across a clean stop: QoS 1 messages sent while away arrive on the next start', async () => {
    const deviceId = `dev-${uid()}`;
    const config = cfg(broker.url);
    const first = connection(config, { deviceId });
    await first.start();
    await first.subscribe(`${config.topicRoot}/cmd`);
    await first.stop();
    const publisher = await connectAsync(broker.url, { protocolVersion, clientId: `pub-${uid()}` });
    cleanups.push(() => publisher.endAsync(true));
    await publisher.publishAsync(`${config.topicRoot}/cmd`, 'while-away', { qos: 1 });
    const second = connection(config, { deviceId });
    const inbox: string[] = [];
    second.onMessage((_topic, payload) => inbox.push(payload.toString()));
    await second.start();
    await waitFor(() => inbox.includes('while-away'), 'queued message');
  });

  it('reconnects after a broker restart with growing backoff and republishes its online status', async () => {
    let connects = 0;
    const conn = connection(cfg(broker.url), { onConnect: () => (connects += 1) });
    await conn.start();
    await conn.subscribe(`${conn.topicRoot}/after`);
    const inbox: string[] = [];
    conn.onMessage((_t, payload) => inbox.push(payload.toString()));
    const periods: number[] = [];
    // Registered after the connection's own listener, so it sees the delay armed for the next close.
    conn.client.on('reconnect', () => periods.push(conn.client.options.reconnectPeriod ?? 0));
    const firstTs = Date.now();
    await broker.restart({ downMs: 3500 });
    await waitFor(() => connects === 2, 'reconnect', 15_000);
    expect(periods.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < periods.length; i++) expect(periods[i]).toBeGreaterThanOrEqual(periods[i - 1] ?? 0);
    expect(periods.at(-1)).toBeGreaterThan(1000);
    // A successful connect resets the backoff.
    expect(conn.client.options.reconnectPeriod).toBeLessThanOrEqual(1000);
    const status = await watcher(conn.statusTopic);
    const retained = await waitFor(() => status.find((m) => m.retain), 'retained status');
    expect(parseStatus(retained.text).online).toBe(true);
    expect(Date.parse(parseStatus(retained.text).ts ?? '')).toBeGreaterThan(firstTs);
    // The subscription survived the restart (persistent session, or resubscribed).
    const publisher = await connectAsync(broker.url, { protocolVersion, clientId: `pub-${uid()}` });
    cleanups.push(() => publisher.endAsync(true));
    await publisher.publishAsync(`${conn.topicRoot}/after`, 'hello', { qos: 1 });
    await waitFor(() => inbox.includes('hello'), 'message after restart');
  });

  it('starts within the bounded wait when no broker is up, queues publishes, and connects once it is', async () => {
    const restarting = broker.restart({ downMs: 2500 });
    await waitForAsync(async () => !(await canConnect(broker.port)), 'broker down');
    const conn = connection(cfg(broker.url), { startWaitMs: 500 });
    const t0 = Date.now();
    await conn.start();
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(conn.connected).toBe(false);
    const queued = conn.publishJson(`${conn.topicRoot}/queued`, { while: 'offline' }, { retain: true });
    await restarting;
    await queued;
    expect(conn.connected).toBe(true);
    const seen = await watcher(`${conn.topicRoot}/#`);
    await waitFor(() => seen.some((m) => m.topic.endsWith('/queued')) && seen.some((m) => m.topic === conn.statusTopic), 'retained messages');
  });

  it('a refused broker ends the start wait at once; a subscribe made offline waits for the connection, not the caller', async () => {
    const restarting = broker.restart({ downMs: 2000 });
    await waitForAsync(async () => !(await canConnect(broker.port)), 'broker down');
    const conn = connection(cfg(broker.url)); // startWaitMs 5000: the first attempt's refusal ends it
    const t0 = Date.now();
    await conn.start();
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(conn.connected).toBe(false);
    const inbox: string[] = [];
    conn.onMessage((_topic, payload) => inbox.push(payload.toString()));
    let subscribed = false;
    const subscribing = conn.subscribe(`${conn.topicRoot}/offline-sub`).then(() => (subscribed = true));
    await sleep(300);
    expect(subscribed).toBe(false); // held by mqtt.js until the broker connects: no start() may await it
    await restarting;
    await subscribing;
    const publisher = await connectAsync(broker.url, { protocolVersion, clientId: `pub-${uid()}` });
    cleanups.push(() => publisher.endAsync(true));
    await publisher.publishAsync(`${conn.topicRoot}/offline-sub`, 'arrived', { qos: 1 });
    await waitFor(() => inbox.includes('arrived'), 'message on the topic subscribed while offline');
  });

  it('stop() publishes a retained offline status with a time and leaves no will behind', async () => {
    const conn = connection(cfg(broker.url));
    await conn.start();
    const status = await watcher(conn.statusTopic);
    await waitFor(() => status.length === 1, 'online status');
    await conn.stop();
    const offline = await waitFor(() => status.find((m) => JSON.parse(m.text).online === false), 'offline status');
    expect(parseStatus(offline.text).ts).toBeDefined();
    await sleep(300);
    expect(status).toHaveLength(2);
    await expect(conn.publishJson('x/y', {})).rejects.toThrow(/stopped/);
  });

  it('fails to start with a message naming the key and path of a missing file', async () => {
    const missing = join(tmpdir(), `edgefleet-missing-${uid()}.pem`);
    const conn = connection(cfg(broker.url, { ca: missing }));
    await expect(conn.start()).rejects.toThrow(`mqtt.ca: cannot read ${missing} (ENOENT)`);
    const half = connection(cfg(broker.url, { cert: missing }));
    await expect(half.start()).rejects.toThrow(/mqtt\.cert and mqtt\.key must be set together/);
    const pw = connection(cfg(broker.url, { username: 'u', passwordFile: missing }));
    await expect(pw.start()).rejects.toThrow(`mqtt.passwordFile: cannot read ${missing}`);
  });
});

// ---- brokers with their own configuration (TLS, passwords) ----------------

const opensslMissing = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return false;
  } catch {
    if (process.env.CI) throw new Error('openssl is missing but CI is set: install openssl to run the TLS tests');
    return 'openssl not found';
  }
})();

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** Mosquitto with the given listener settings; the shared helper only runs plain anonymous ones. */
async function customBroker(dir: string, lines: string[]): Promise<{ port: number; stop(): Promise<void> }> {
  const port = await freePort();
  const config = join(dir, 'mosquitto.conf');
  await writeFile(config, [`listener ${port} 127.0.0.1`, `user ${userInfo().username}`, 'log_dest stderr', ...lines, ''].join('\n'));
  const child: ChildProcess = spawn(MOSQUITTO_BIN, ['-c', config], { stdio: 'ignore' });
  await waitForAsync(() => canConnect(port), 'custom broker');
  return {
    port,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function waitForAsync(check: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

function makePki(dir: string, deviceId: string): void {
  const run = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=edgefleet test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  for (const [name, cn, ext] of [
    ['server', 'localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'],
    ['client', deviceId, 'extendedKeyUsage=clientAuth\n'],
  ] as const) {
    execFileSync('sh', ['-c', `printf '%s' "$EXT" > ${name}.ext`], { cwd: dir, env: { ...process.env, EXT: ext } });
    run('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    run('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`,
      '-days', '2', '-extfile', `${name}.ext`);
  }
}

// Over both versions too: a refused CONNACK differs between them (a 3.1.1 return code, an MQTT 5 reason code).
describe.skipIf(skip || opensslMissing).each(VERSIONS)(`MqttConnection with TLS and passwords over $name${skip || opensslMissing ? ' (skipped)' : ''}`, ({ protocolVersion }) => {
  let dir: string;
  const cleanups: (() => Promise<unknown>)[] = [];
  const cfg = (url: string, extra: Partial<MqttConfig> = {}): MqttConfig => baseCfg(url, { protocolVersion, ...extra });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-tls-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('connects with mutual TLS from ca/cert/key files, and not without a client certificate', async () => {
    const deviceId = `dev-${uid()}`;
    makePki(dir, deviceId);
    const broker = await customBroker(dir, [
      `cafile ${dir}/ca.pem`, `certfile ${dir}/server.pem`, `keyfile ${dir}/server.key`,
      'require_certificate true', 'allow_anonymous true',
    ]);
    cleanups.push(() => broker.stop());
    const url = `mqtts://127.0.0.1:${broker.port}`;
    const conn = new MqttConnection({
      config: cfg(url, { ca: join(dir, 'ca.pem'), cert: join(dir, 'client.pem'), key: join(dir, 'client.key') }),
      deviceId, logger, startWaitMs: 5000,
    });
    cleanups.push(() => conn.stop());
    await conn.start();
    expect(conn.connected).toBe(true);
    await conn.publishJson(`${conn.topicRoot}/tls`, { ok: true });

    const anonymous = new MqttConnection({ config: cfg(url, { ca: join(dir, 'ca.pem') }), deviceId: `dev-${uid()}`, logger, startWaitMs: 1000 });
    cleanups.push(() => anonymous.stop());
    await anonymous.start();
    expect(anonymous.connected).toBe(false);
  });

  it.skipIf(!existsSync('/usr/bin/mosquitto_passwd'))('authenticates with username and a password file', async () => {
    const passwd = join(dir, 'passwd');
    await writeFile(passwd, '');
    execFileSync('mosquitto_passwd', ['-b', passwd, 'device', 's3cret pass'], { stdio: 'ignore' });
    const broker = await customBroker(dir, ['allow_anonymous false', `password_file ${passwd}`]);
    cleanups.push(() => broker.stop());
    const url = `mqtt://127.0.0.1:${broker.port}`;
    const good = join(dir, 'good-password');
    await writeFile(good, 's3cret pass\n');
    const conn = new MqttConnection({ config: cfg(url, { username: 'device', passwordFile: good }), deviceId: `dev-${uid()}`, logger });
    cleanups.push(() => conn.stop());
    await conn.start();
    expect(conn.connected).toBe(true);

    const bad = join(dir, 'bad-password');
    await writeFile(bad, 'wrong');
    const refused = new MqttConnection({ config: cfg(url, { username: 'device', passwordFile: bad }), deviceId: `dev-${uid()}`, logger, startWaitMs: 1000 });
    cleanups.push(() => refused.stop());
    await refused.start();
    expect(refused.connected).toBe(false);
  });
});
