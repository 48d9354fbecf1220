/**
 * The `edgefleet` CLI as an operator runs it: a real child process per
 * command against a real Mosquitto, and the results checked with the same
 * protocol functions the agent uses to accept them.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrt } from '../agent/runtime/ort.js';
import { mlpModel, scaleModel } from '../models/onnx/zoo.js';
import type { Envelope, Manifest, Trust } from '../protocol/index.js';
import {
  PAYLOAD_TYPES, acceptRotation, keyIdOf, loadTrust, privateKeyFromPem, publicKeyFromBase64, signEnvelope,
  verifyDesired, verifyManifest,
} from '../protocol/index.js';
import { freePort } from './helpers/child.js';
import { mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';
import type { Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
if (skip) console.warn(`fleet CLI tests skipped: ${skip}`);

const REPO = join(import.meta.dirname, '..');
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Everything the CLI printed, checked at the end for key material. */
const printed: string[] = [];

function cli(...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'fleet/bin.ts', ...args], {
      cwd: REPO,
      // No operator's profile or broker from the environment.
      env: { ...process.env, EDGEFLEET_BROKER: '', EDGEFLEET_PROFILE: '', EDGEFLEET_CONFIG: join(REPO, 'no-such-profiles.json') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      printed.push(stdout, stderr);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Retained messages under `filter`, as a device would receive them. */
async function retained(url: string, filter: string, ms = 400): Promise<Map<string, Buffer>> {
  const client = await connectAsync(url, { protocolVersion: 5, clean: true, reconnectPeriod: 0 });
  const got = new Map<string, Buffer>();
  client.on('message', (topic, payload, packet) => {
    if (packet.retain && payload.length > 0) got.set(topic, payload);
  });
  await client.subscribeAsync(filter, { qos: 1 });
  await new Promise((r) => setTimeout(r, ms));
  await client.endAsync();
  return got;
}

async function publishRetained(url: string, topic: string, payload: string): Promise<void> {
  const client = await connectAsync(url, { protocolVersion: 5, clean: true, reconnectPeriod: 0 });
  await client.publishAsync(topic, payload, { qos: 1, retain: true });
  await client.endAsync();
}

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}

const manifestOf = (env: Envelope): Manifest =>
  JSON.parse(Buffer.from(env.payload, 'base64').toString('utf8')) as Manifest;

/** Runs `model` on OIP JSON FP32 inputs with ONNX Runtime, as the device's self-test will. */
async function runModel(model: Uint8Array, inputs: NonNullable<Manifest['selfTest']>['inputs']): Promise<Map<string, number[]>> {
  const ort = await loadOrt();
  const session = await ort.InferenceSession.create(model);
  const feeds: Record<string, InstanceType<typeof ort.Tensor>> = {};
  for (const t of inputs) feeds[t.name] = new ort.Tensor('float32', Float32Array.from(t.data.flat(Infinity as 1) as number[]), t.shape);
  const out = await session.run(feeds);
  await session.release();
  return new Map(Object.entries(out).map(([name, t]) => [name, Array.from(t.data as Float32Array)]));
}

describe.skipIf(skip)('edgefleet CLI', () => {
  let broker: Mosquitto;
  let dir: string;
  let keys: string;
  let trust: Trust;
  let mlpPath: string;
  let manifestPath: string;
  const b = (): string[] => ['--broker', broker.url];

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-cli-'));
    keys = join(dir, 'keys');
    mlpPath = join(dir, 'mlp.onnx');
    manifestPath = join(dir, 'mlp-1.manifest.json');
    await writeFile(mlpPath, mlpModel());
  });

  afterAll(async () => {
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('keys generate writes a 0600 PKCS8 key and its .pub, prints the keyid and refuses to overwrite', async () => {
    for (const name of ['root', 'root2', 'models', 'rollout']) {
      const run = await cli('keys', 'generate', '--out', keys, '--name', name);
      expect(run.code, run.stderr).toBe(0);
      const pub = publicKeyFromBase64((await readFile(join(keys, `${name}.pub`), 'utf8')).trim());
      expect(run.stdout.trim()).toBe(keyIdOf(pub));
      expect((await stat(join(keys, `${name}.key`))).mode & 0o777).toBe(0o600);
      expect(keyIdOf(privateKeyFromPem(await readFile(join(keys, `${name}.key`))))).toBe(keyIdOf(pub));
    }
    const before = await readFile(join(keys, 'root.key'));
    const again = await cli('keys', 'generate', '--out', keys, '--name', 'root');
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/root\.key already exists; pass --force/);
    expect(await readFile(join(keys, 'root.key'))).toEqual(before);

    const forced = await cli('keys', 'generate', '--out', join(dir, 'spare'), '--name', 'k', '--force');
    expect(forced.code).toBe(0);
    expect((await stat(join(dir, 'spare', 'k.key'))).mode & 0o777).toBe(0o600);
  });

  it('trust init writes a document loadTrust accepts', async () => {
    const out = join(dir, 'trust.json');
    const run = await cli('trust', 'init', '--root', join(keys, 'root.pub'), '--models', join(keys, 'models.pub'),
      '--rollout', join(keys, 'rollout.pub'), '--expires', '5y', '--out', out);
    expect(run.code, run.stderr).toBe(0);
    trust = loadTrust(await readFile(out));
    expect(trust.version).toBe(1);
    const rootPub = publicKeyFromBase64((await readFile(join(keys, 'root.pub'), 'utf8')).trim());
    expect(trust.document.roles.root).toEqual({ keyids: [keyIdOf(rootPub)], threshold: 1 });
    expect(trust.expiresAtMs).toBeGreaterThan(Date.now() + 4 * 365 * 86_400_000);

    const tooHigh = await cli('trust', 'init', '--root', join(keys, 'root.pub'), '--models', join(keys, 'models.pub'),
      '--rollout', join(keys, 'rollout.pub'), '--threshold-root', '2', '--out', join(dir, 'bad.json'));
    expect(tooHigh.code).toBe(2);
    expect(tooHigh.stderr).toMatch(/root threshold 2 exceeds its 1 key/);
  });

  it('trust rotate signs with old and new root keys, publishes retained, and devices accept it', async () => {
    const out = join(dir, 'trust-v2.json');
    const run = await cli('trust', 'rotate', '--current', join(dir, 'trust.json'), '--new-root', join(keys, 'root2.pub'),
      '--sign-old', join(keys, 'root.key'), '--sign-new', join(keys, 'root2.key'), '--out', out, '--publish', ...b());
    expect(run.code, run.stderr).toBe(0);
    const envelope = await readJson<Envelope>(out);
    const next = acceptRotation(trust, envelope);
    expect(next.version).toBe(2);
    expect(next.document.roles.models).toEqual(trust.document.roles.models);
    expect(loadTrust(await readFile(join(dir, 'trust-v2.document.json'))).document).toEqual(next.document);
    // Retained on {root}/trust and, for devices that were away, on {root}/trust/2 (section 3, revision 2).
    const onBroker = await retained(broker.url, 'edgefleet/trust/#');
    expect(JSON.parse(onBroker.get('edgefleet/trust')?.toString() ?? 'null')).toEqual(envelope);
    expect(JSON.parse(onBroker.get('edgefleet/trust/2')?.toString() ?? 'null')).toEqual(envelope);
    expect(run.stdout).toContain('published trust version 2 retained on edgefleet/trust/2 and edgefleet/trust');

    // Signed by the new root alone, the same document is refused by devices...
    const newRoot = privateKeyFromPem(await readFile(join(keys, 'root2.key')));
    const onlyNew = signEnvelope(PAYLOAD_TYPES.trust, Buffer.from(envelope.payload, 'base64'), [{ keyid: keyIdOf(newRoot), privateKey: newRoot }]);
    expect(() => acceptRotation(trust, onlyNew)).toThrow(/current root/);
    // ...and the CLI will not produce it.
    const refused = await cli('trust', 'rotate', '--current', join(dir, 'trust.json'), '--new-root', join(keys, 'root2.pub'),
      '--sign-old', join(keys, 'root2.key'), '--sign-new', join(keys, 'root2.key'), '--out', join(dir, 'nope.json'));
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/--sign-old key .* is not a root key of trust version 1/);
  });

  it('model publish retains every block with the right hash and writes a verifiable manifest with a self-test', async () => {
    const run = await cli('model', 'publish', mlpPath, '--name', 'mlp', '--version', '1', '--signing-key', join(keys, 'models.key'),
      '--block-size', '16384', '--arch', 'arm64,x64', '--out-manifest', manifestPath, '--wait-ms', '300', ...b());
    expect(run.code, run.stderr).toBe(0);
    const envelope = await readJson<Envelope>(manifestPath);
    const manifest = verifyManifest(trust, envelope, { name: 'mlp', version: 1, now: Date.now(), arch: process.arch, agentVersion: '0.1.0' });
    const bytes = await readFile(mlpPath);
    expect(manifest.artifact.sha256).toBe(sha256(bytes));
    expect(manifest.compatibility?.arch).toEqual(['arm64', 'x64']);
    expect(run.stdout).toContain(manifest.artifact.sha256);

    const blocks = await retained(broker.url, `edgefleet/artifacts/${manifest.artifact.sha256}/blocks/+`);
    expect(blocks.size).toBe(manifest.artifact.blockSha256.length);
    expect(blocks.size).toBe(Math.ceil(bytes.length / 16384));
    manifest.artifact.blockSha256.forEach((hash, i) => {
      const block = blocks.get(`edgefleet/artifacts/${manifest.artifact.sha256}/blocks/${i}`);
      expect(block && sha256(block)).toBe(hash);
      expect(block).toEqual(bytes.subarray(i * 16384, (i + 1) * 16384));
    });

    const selfTest = manifest.selfTest;
    expect(selfTest?.inputs[0]).toMatchObject({ name: 'x', datatype: 'FP32', shape: [1, 784] });
    const actual = await runModel(bytes, selfTest?.inputs ?? []);
    for (const out of selfTest?.outputs ?? []) {
      const got = actual.get(out.name) ?? [];
      expect(got).toHaveLength(out.data.length);
      (out.data as number[]).forEach((want, i) => expect(Math.abs((got[i] ?? NaN) - want)).toBeLessThanOrEqual(selfTest?.atol ?? 0));
    }
  });

  it('publishing the same version again is detected and changes nothing; other bytes are refused', async () => {
    const before = await readFile(manifestPath);
    const run = await cli('model', 'publish', mlpPath, '--name', 'mlp', '--version', '1', '--signing-key', join(keys, 'models.key'),
      '--block-size', '16384', '--arch', 'arm64,x64', '--out-manifest', manifestPath, '--wait-ms', '300', ...b());
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/already published/);
    expect(await readFile(manifestPath)).toEqual(before);

    const other = join(dir, 'scale.onnx');
    await writeFile(other, scaleModel(2));
    const clash = await cli('model', 'publish', other, '--name', 'mlp', '--version', '1', '--signing-key', join(keys, 'models.key'),
      '--out-manifest', manifestPath, '--wait-ms', '100', ...b());
    expect(clash.code).toBe(1);
    expect(clash.stderr).toMatch(/already holds mlp version 1 with different bytes/);
    expect(await readFile(manifestPath)).toEqual(before);
  });

  it('model publish records the outputs for a given OIP JSON self-test input', async () => {
    const model = join(dir, 'scale3.onnx');
    await writeFile(model, scaleModel(3));
    const input = join(dir, 'input.json');
    await writeFile(input, JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 2], data: [1, 2, 3, 4] }] }));
    const out = join(dir, 'scale-3.manifest.json');
    const run = await cli('model', 'publish', model, '--name', 'scale', '--version', '3', '--signing-key', join(keys, 'models.key'),
      '--self-test-input', input, '--quantization', 'fp32', '--out-manifest', out, '--wait-ms', '100', ...b());
    expect(run.code, run.stderr).toBe(0);
    const manifest = manifestOf(await readJson<Envelope>(out));
    expect(manifest.selfTest?.outputs).toEqual([{ name: 'y', datatype: 'FP32', shape: [2, 2], data: [3, 6, 9, 12] }]);
  });

  it('deploy publishes a desired document devices accept, with a higher serial each time', async () => {
    const deploy = (...extra: string[]): Promise<Run> =>
      cli('deploy', '--device', 'pi-001', 'mlp:1=stable', '--manifests', dir, '--signing-key', join(keys, 'rollout.key'), '--wait-ms', '300', ...extra, ...b());
    const topic = 'edgefleet/devices/pi-001/desired';
    const ctx = { topicTarget: { device: 'pi-001' }, deviceId: 'pi-001', groups: [], now: Date.now() };

    const first = await deploy();
    expect(first.code, first.stderr).toBe(0);
    const env1 = JSON.parse((await retained(broker.url, topic)).get(topic)?.toString() ?? 'null') as unknown;
    const doc1 = verifyDesired(trust, env1, { ...ctx, lastSerial: undefined });
    expect(first.stdout).toMatch(new RegExp(`device "pi-001": serial ${doc1.serial}`));
    expect(doc1.models).toEqual([{ name: 'mlp', version: 1, labels: ['stable'], manifest: await readJson(manifestPath) }]);

    const second = await deploy();
    expect(second.code, second.stderr).toBe(0);
    const env2 = JSON.parse((await retained(broker.url, topic)).get(topic)?.toString() ?? 'null') as unknown;
    const doc2 = verifyDesired(trust, env2, { ...ctx, lastSerial: doc1.serial });
    expect(doc2.serial).toBe(doc1.serial + 1);

    const group = await cli('deploy', '--group', 'lab', 'mlp:1', '--manifests', manifestPath, '--signing-key', join(keys, 'rollout.key'),
      '--serial', '40', ...b());
    expect(group.code, group.stderr).toBe(0);
    const genv = JSON.parse((await retained(broker.url, 'edgefleet/groups/lab/desired')).get('edgefleet/groups/lab/desired')?.toString() ?? 'null') as unknown;
    expect(verifyDesired(trust, genv, { ...ctx, topicTarget: { group: 'lab' }, groups: ['lab'], lastSerial: 39 }).serial).toBe(40);
  });

  it('devices lists what devices report', async () => {
    const ts = new Date().toISOString();
    const state = {
      schema: 1, device: 'pi-001', groups: ['lab'], ts,
      desired: { source: 'device', serial: 2, status: 'rejected', error: 'bad signature by rollout key' },
      trust: { version: 1, expiresAt: '2036-01-01T00:00:00Z', error: 'edgefleet/trust/2: signature does not verify' },
      models: [{ name: 'mlp', version: 1, state: 'serving', labels: ['stable'], executionProvider: 'cpu', sha256: 'a'.repeat(64), progress: 1, error: null }],
      agent: { version: '0.1.0', arch: 'arm64', startedAt: ts, executionProviders: { available: ['cpu'], unavailable: {} } },
    };
    await publishRetained(broker.url, 'edgefleet/devices/pi-001/state', JSON.stringify(state));
    await publishRetained(broker.url, 'edgefleet/devices/pi-001/status', JSON.stringify({ online: true, ts }));
    await publishRetained(broker.url, 'edgefleet/devices/pi-002/status', JSON.stringify({ online: false }));
    await publishRetained(broker.url, 'edgefleet/devices/pi-003/state', '{"not": "a state"}');
    const expired = { ...state, device: 'pi-004', desired: null, models: [], trust: { version: 4, expiresAt: '2020-01-01T00:00:00Z', error: null } };
    await publishRetained(broker.url, 'edgefleet/devices/pi-004/state', JSON.stringify(expired));

    const json = await cli('devices', '--json', '--wait-ms', '500', ...b());
    expect(json.code, json.stderr).toBe(0);
    const rows = JSON.parse(json.stdout) as { device: string; online: boolean | null; groups: string[] }[];
    expect(rows.map((r) => [r.device, r.online])).toEqual([['pi-001', true], ['pi-002', false], ['pi-004', null]]);
    expect(rows[0]).toMatchObject({ groups: ['lab'], desired: state.desired, trust: state.trust, models: state.models, ts });
    // A device that does not report trust (revision 1) has none.
    expect(rows[1]).toMatchObject({ device: 'pi-002', trust: null });
    expect(json.stderr).toMatch(/ignoring the state of pi-003/);

    const table = await cli('devices', '--group', 'lab', '--wait-ms', '500', ...b());
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^DEVICE\s+ONLINE\s+GROUPS\s+DESIRED\s+FOLLOWS\s+TRUST\s+MODELS\s+LAST SEEN$/);
    expect(lines[1]).toMatch(/^pi-001\s+yes\s+lab\s+2 rejected\s+own\s+v1 error\s+mlp:1 serving cpu\s+\d+ s ago$/);
    expect(lines).toContain('pi-001: trust v1: edgefleet/trust/2: signature does not verify');
    expect(lines).toContain('pi-001: desired serial 2 rejected: bad signature by rollout key');
    expect(lines[2]).toMatch(/^pi-004\s+\?\s+lab\s+-\s+-\s+v4 expired\s+-\s+\d+ s ago$/);
    expect(table.stdout).not.toContain('pi-002');
  });

  it('devices prints what a device reports with control characters escaped: no forged rows, no escape sequences', async () => {
    const ts = new Date().toISOString();
    const hostile = 'x\npi-666  yes  lab  9 applied\r\u001b[2J\u001b]0;owned\u0007\u009b31m\u202edesrever';
    const state = {
      schema: 1, device: 'pi-evil', groups: ['evil'], ts,
      desired: { source: 'device', serial: 1, status: 'failed', error: hostile },
      models: [{ name: 'mlp', version: 1, state: 'failed', labels: [], executionProvider: hostile, sha256: null, progress: 1, error: hostile }],
      agent: { version: '0.1.0', arch: 'arm64', startedAt: ts, executionProviders: { available: ['cpu'], unavailable: {} } },
    };
    await publishRetained(broker.url, 'edgefleet/devices/pi-evil/state', JSON.stringify(state));
    const table = await cli('devices', '--group', 'evil', '--wait-ms', '500', ...b());
    expect(table.code, table.stderr).toBe(0);
    // eslint-disable-next-line no-control-regex
    expect(table.stdout).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e]/);
    const lines = table.stdout.trim().split('\n');
    expect(lines).toHaveLength(4); // header, the one device, its two problems
    expect(lines[1]).toMatch(/^pi-evil\s+\?\s+evil\s+1 failed\s+own\s+-\s+mlp:1 failed x\\npi-666 {2}yes {2}lab {2}9 applied\\r\\e\[2J\\e\]0;owned\\x07\\x9b31m\\u202edesrever\s+\d+ s ago$/);
    expect(lines.slice(2).every((l) => l.startsWith('pi-evil: '))).toBe(true);
  });

  it('collect --public-name: the dashboard answers that name and refuses others (DNS rebinding)', async () => {
    const port = await freePort();
    const child = spawn(process.execPath, ['--import', 'tsx', 'fleet/bin.ts', 'collect', '--broker', broker.url, '--db', `sqlite:${join(dir, 'collect.db')}`,
      '--http', `127.0.0.1:${port}`, '--public-name', 'fleet.example.com', '--client-id', 'cli-public-name', '--session-expiry', '0'], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    const get = (host: string): Promise<number> => new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/api/devices?limit=1', setHost: false, headers: { host } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.once('error', reject);
      req.end();
    });
    try {
      const until = Date.now() + 20_000;
      for (;;) {
        const status = await get('fleet.example.com').catch(() => 0);
        if (status !== 0) break;
        if (Date.now() > until) throw new Error('edgefleet collect did not serve its dashboard');
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(await get('fleet.example.com')).toBe(200);
      expect(await get(`fleet.example.com:${port}`)).toBe(200);
      expect(await get(`localhost:${port}`)).toBe(200);
      expect(await get(`evil.example:${port}`)).toBe(421);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('close', r));
    }
  });

  it('model retire clears every block', async () => {
    const { artifact } = manifestOf(await readJson<Envelope>(manifestPath));
    const run = await cli('model', 'retire', '--manifest', manifestPath, ...b());
    expect(run.code, run.stderr).toBe(0);
    expect((await retained(broker.url, `edgefleet/artifacts/${artifact.sha256}/blocks/+`)).size).toBe(0);
    // The other artifact is untouched.
    expect((await retained(broker.url, 'edgefleet/artifacts/+/blocks/+')).size).toBeGreaterThan(0);
  });

  it.each([
    [['keys', 'generate', '--name', 'x'], 2, /keys generate: missing --out DIR \(see 'edgefleet keys generate --help'\)/],
    [['frobnicate'], 2, /unknown command "frobnicate"/],
    [['keys', 'generate', '--out', '/tmp', '--name', 'x', '--bogus'], 2, /Unknown option '--bogus'/],
    [['deploy', '--device', 'd1', 'mlp-1', '--manifests', '.', '--signing-key', 'k', '--broker', 'mqtt://127.0.0.1:1'], 2, /"mlp-1" is not NAME:VERSION/],
    [['deploy', '--device', 'd1', 'mlp:0', '--manifests', '.', '--signing-key', 'k', '--broker', 'mqtt://127.0.0.1:1'], 2, /"mlp:0" is not NAME:VERSION/],
    [['model', 'publish', 'm.onnx', '--name', 'mlp', '--version', 'x', '--signing-key', 'k', '--broker', 'mqtt://h'], 2, /--version must be an integer >= 1/],
    [['devices'], 2, /missing --broker URL/],
    [['collect', '--broker', 'mqtt://127.0.0.1:1', '--http', '127.0.0.1:0', '--public-name', 'http://fleet.example.com'], 2, /--public-name "http:\/\/fleet\.example\.com" must be a DNS name such as fleet\.example\.com/],
    [['devices', '--broker', 'mqtt://127.0.0.1:1'], 1, /cannot reach broker at mqtt:\/\/127\.0\.0\.1:1: .*ECONNREFUSED/],
  ])('bad input %j exits %i with one clear line', async (args, code, message) => {
    const run = await cli(...args);
    expect(run.code).toBe(code);
    expect(run.stderr).toMatch(message);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
    expect(run.stdout).toBe('');
  });

  it('a missing or wrong key file is a failure that names the file, not its content', async () => {
    const missing = await cli('deploy', '--device', 'd1', 'mlp:1', '--manifests', manifestPath, '--signing-key', join(dir, 'nope.key'), ...b());
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim()).toBe(`edgefleet deploy: cannot read private key file ${join(dir, 'nope.key')}: no such file`);

    // A private key where a public key belongs, and a public key where a private key belongs.
    const swapped = await cli('trust', 'init', '--root', join(keys, 'root.key'), '--models', join(keys, 'models.pub'),
      '--rollout', join(keys, 'rollout.pub'), '--out', join(dir, 'x.json'));
    expect(swapped.code).toBe(1);
    expect(swapped.stderr).toMatch(/root\.key holds a PEM key, not a public key/);
    const pubAsKey = await cli('model', 'publish', mlpPath, '--name', 'mlp', '--version', '9', '--signing-key', join(keys, 'models.pub'), ...b());
    expect(pubAsKey.code).toBe(1);
    expect(pubAsKey.stderr).toMatch(/models\.pub is not an Ed25519 private key/);

    // Even key material pasted into a flag value is not echoed back.
    const pem = await readFile(join(keys, 'rollout.key'), 'utf8');
    const pasted = await cli('deploy', '--device', 'd1', 'mlp:1', '--manifests', manifestPath, `--signing-key=${pem}`, ...b());
    expect(pasted.code).toBe(1);
    expect(pasted.stderr).toMatch(/\[redacted key material\]/);
  });

  it('never prints key material', async () => {
    const bodies = await Promise.all(['root', 'root2', 'models', 'rollout'].map(async (name) => {
      const pem = await readFile(join(keys, `${name}.key`), 'utf8');
      return pem.split('\n').filter((l) => l !== '' && !l.startsWith('-----'));
    }));
    const all = printed.join('\n');
    expect(all).not.toMatch(/BEGIN|PRIVATE KEY/);
    for (const line of bodies.flat()) expect(all).not.toContain(line);
  });

  it('prints help for every command', async () => {
    const top = await cli('--help');
    expect(top.code).toBe(0);
    for (const name of ['keys generate', 'trust init', 'trust rotate', 'model publish', 'model retire', 'deploy', 'devices']) {
      expect(top.stdout).toContain(name);
    }
    const one = await cli('model', 'publish', '--help');
    expect(one.code).toBe(0);
    expect(one.stdout).toMatch(/^usage: edgefleet model publish FILE\.onnx/);
    expect(one.stdout).toContain('--topic-root');
  });
});
