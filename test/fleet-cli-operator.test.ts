/**
 * The `edgefleet` CLI an operator lives in (issue 14): profiles instead of
 * repeated flags, `deploy --clear`, the serial rule read from what devices
 * report, --json results, ages and which document a device follows. Real
 * child processes against a real Mosquitto, as test/fleet-cli.test.ts.
 */
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAge } from '../fleet/age.js';
import { loadProfile, parseProfileFile, profileFile } from '../fleet/profile.js';
import { mlpModel } from '../models/onnx/zoo.js';
import type { Trust } from '../protocol/index.js';
import { loadTrust, openEnvelope } from '../protocol/index.js';
import { REPO, runEdgefleet, type CliRun } from './helpers/child.js';
import { mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';
import type { Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
if (skip) console.warn(`fleet CLI operator tests skipped: ${skip}`);

const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;

type Run = CliRun;

/** The CLI with no profile, broker or store from the environment unless `env` gives one. */
function cli(env: Record<string, string>, ...args: string[]): Promise<Run> {
  return runEdgefleet(args, { EDGEFLEET_BROKER: '', EDGEFLEET_PROFILE: '', EDGEFLEET_CONFIG: join(REPO, 'no-such-profiles.json'), ...env });
}

async function retainedOn(url: string, topic: string, ms = 400): Promise<Buffer | undefined> {
  const client = await connectAsync(url, { protocolVersion: 5, clean: true, reconnectPeriod: 0 });
  let got: Buffer | undefined;
  client.on('message', (t, payload, packet) => {
    if (t === topic && packet.retain && payload.length > 0) got = payload;
  });
  await client.subscribeAsync(topic, { qos: 1 });
  await new Promise((r) => setTimeout(r, ms));
  await client.endAsync();
  return got;
}

async function publishRetained(url: string, topic: string, payload: string): Promise<void> {
  const client = await connectAsync(url, { protocolVersion: 5, clean: true, reconnectPeriod: 0 });
  await client.publishAsync(topic, payload, { qos: 1, retain: true });
  await client.endAsync();
}

/** A device's retained reported state (PROTOCOL.md section 7) saying which document it accepted. */
function reportState(device: string, groups: string[], desired: { source: 'device' | 'group'; group?: string; serial: number; status: string } | null): string {
  const ts = new Date().toISOString();
  return JSON.stringify({
    schema: 1, device, groups, ts,
    desired: desired && { ...desired, error: null },
    models: [],
    agent: { version: '0.1.0', arch: 'arm64', startedAt: ts, executionProviders: { available: ['cpu'], unavailable: {} } },
  });
}

const serialOf = (payload: Buffer | undefined): number => {
  const doc = JSON.parse(openEnvelope(JSON.parse(payload?.toString() ?? 'null'), 'application/vnd.edgefleet.desired+json').payload.toString()) as { serial: number };
  return doc.serial;
};

describe('profiles, ages (no broker)', () => {
  it('formatAge says how long ago, in s, min, h and d, and when a clock runs ahead', () => {
    const now = Date.parse('2026-12-04T12:00:00Z');
    expect(formatAge('2026-12-04T11:59:48Z', now)).toBe('12 s ago');
    expect(formatAge('2026-12-04T11:57:00Z', now)).toBe('3 min ago');
    expect(formatAge('2026-12-04T07:00:00Z', now)).toBe('5 h ago');
    expect(formatAge('2026-11-25T12:00:00Z', now)).toBe('9 d ago');
    expect(formatAge('2026-12-04T12:00:30Z', now)).toBe('30 s ahead');
    expect(formatAge(null, now)).toBe('-');
  });

  it('the profile file is $EDGEFLEET_CONFIG, else under $XDG_CONFIG_HOME, else ~/.config', () => {
    expect(profileFile({ EDGEFLEET_CONFIG: '/etc/fleet/p.json' })).toBe('/etc/fleet/p.json');
    expect(profileFile({ XDG_CONFIG_HOME: '/x' })).toBe('/x/edgefleet/profiles.json');
    expect(profileFile({})).toMatch(/\/\.config\/edgefleet\/profiles\.json$/);
  });

  it('a bad profile file names the file and every bad field at once', () => {
    const bad = JSON.stringify({
      profiles: { lab: { broker: 'http://x', clientKey: 5, mqttVersion: 3, signingKeys: { rollout: [] }, colour: 'red', topicRoot: 'a/#' } },
      default: 'prod',
    });
    let message = '';
    try {
      parseProfileFile(bad, '/p.json');
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/^profile file \/p\.json is invalid: /);
    for (const field of ['profiles.lab.broker', 'profiles.lab.clientKey', 'profiles.lab.mqttVersion', 'profiles.lab.signingKeys.rollout', 'profiles.lab.topicRoot', 'default']) {
      expect(message).toContain(`${field}: `);
    }
    expect(message).toMatch(/colour/);
    expect(() => parseProfileFile('{"profiles": ', '/p.json')).toThrow(/^profile file \/p\.json is not valid JSON: /);
    expect(() => parseProfileFile('{"profiles": {"a b": {}}}', '/p.json')).toThrow(/^profile file \/p\.json is invalid: profiles: "a b" is not a profile name/);
    expect(() => parseProfileFile('[]', '/p.json')).toThrow(/^profile file \/p\.json is invalid: \(document\): .*expected object/);
  });

  it('relative paths are relative to the profile file; the file\'s default applies when none is named', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-profile-'));
    try {
      const file = join(dir, 'profiles.json');
      await writeFile(file, JSON.stringify({
        default: 'lab',
        profiles: { lab: { ca: 'ca.pem', signingKeys: { rollout: ['keys/rollout.key', '/abs/r2.key'] }, db: 'sqlite:fleet.db' }, prod: {} },
      }));
      const lab = await loadProfile(undefined, { EDGEFLEET_CONFIG: file });
      expect(lab).toEqual({
        name: 'lab', file,
        settings: { ca: join(dir, 'ca.pem'), signingKeys: { rollout: [join(dir, 'keys/rollout.key'), '/abs/r2.key'] }, db: `sqlite:${join(dir, 'fleet.db')}` },
      });
      expect((await loadProfile(undefined, { EDGEFLEET_CONFIG: file, EDGEFLEET_PROFILE: 'prod' })).name).toBe('prod');
      expect((await loadProfile('prod', { EDGEFLEET_CONFIG: file, EDGEFLEET_PROFILE: 'lab' })).name).toBe('prod');
      await expect(loadProfile('nope', { EDGEFLEET_CONFIG: file })).rejects.toThrow(`--profile "nope": ${file} has no such profile (it has lab, prod)`);
      // No file and no profile asked for: no profile, no error.
      expect(await loadProfile(undefined, { EDGEFLEET_CONFIG: join(dir, 'none.json') })).toMatchObject({ name: null, settings: {} });
      await expect(loadProfile(undefined, { EDGEFLEET_CONFIG: join(dir, 'none.json'), EDGEFLEET_PROFILE: 'lab' }))
        .rejects.toThrow(`cannot read the profile file ${join(dir, 'none.json')} for EDGEFLEET_PROFILE lab: no such file`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(skip)('edgefleet CLI for operators', () => {
  let broker: Mosquitto;
  let dir: string;
  let keys: string;
  let trust: Trust;
  let manifests: string;
  let profiles: string;
  /** The environment that selects the test's profile file. */
  let env: Record<string, string>;
  /** How many blocks the model has. */
  let blocks: number;

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-operator-'));
    keys = join(dir, 'keys');
    manifests = join(dir, 'manifests');
    await mkdir(manifests);
    profiles = join(dir, 'profiles.json');
    env = { EDGEFLEET_CONFIG: profiles };
    for (const name of ['root', 'models', 'rollout']) {
      const run = await cli({}, 'keys', 'generate', '--out', keys, '--name', name);
      expect(run.code, run.stderr).toBe(0);
    }
    const trustFile = join(dir, 'trust.json');
    const init = await cli({}, 'trust', 'init', '--root', join(keys, 'root.pub'), '--models', join(keys, 'models.pub'), '--rollout', join(keys, 'rollout.pub'), '--out', trustFile);
    expect(init.code, init.stderr).toBe(0);
    trust = loadTrust(JSON.parse(await readFile(trustFile, 'utf8')));
    // Paths relative to the profile file; the broker is the test's.
    await writeFile(profiles, JSON.stringify({
      default: 'lab',
      profiles: {
        lab: { broker: broker.url, signingKeys: { models: ['keys/models.key'], rollout: ['keys/rollout.key'] } },
        unreachable: { broker: 'mqtt://127.0.0.1:1', signingKeys: { rollout: ['keys/rollout.key'] } },
        tls: { broker: broker.url, clientCert: 'admin.pem' },
        missingca: { broker: broker.url, ca: 'no-such-ca.pem' },
        store: { db: 'sqlite:fleet-store.db' },
      },
    }));
    await writeFile(join(dir, 'mlp.onnx'), mlpModel());
    const publish = await cli(env, 'model', 'publish', join(dir, 'mlp.onnx'), '--name', 'mlp', '--version', '1', '--no-self-test',
      '--out-manifest', join(manifests, 'mlp-1.manifest.json'), '--json');
    expect(publish.code, publish.stderr).toBe(0);
    const published = JSON.parse(publish.stdout) as { blocks: number; uploaded: number };
    expect(published).toMatchObject({ name: 'mlp', version: 1, alreadyThere: 0, manifest: join(manifests, 'mlp-1.manifest.json') });
    expect(published.uploaded).toBe(published.blocks);
    blocks = published.blocks;
  });

  afterAll(async () => {
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a profile gives the broker and signing key; --profile, EDGEFLEET_PROFILE and flags choose and override', async () => {
    const deploy = (e: Record<string, string>, ...extra: string[]): Promise<Run> =>
      cli(e, 'deploy', '--device', 'pi-010', 'mlp:1=stable', '--manifests', manifests, '--wait-ms', '200', ...extra);
    const byDefault = await deploy(env);
    expect(byDefault.code, byDefault.stderr).toBe(0);
    expect(byDefault.stdout).toMatch(/^deployed to device "pi-010": serial 1, mlp:1=stable/);
    // The named profile's broker is unreachable, whichever way it is named ...
    const named = await deploy(env, '--profile', 'unreachable');
    expect(named.code).toBe(1);
    expect(named.stderr).toMatch(/cannot reach broker at mqtt:\/\/127\.0\.0\.1:1/);
    const fromEnv = await deploy({ ...env, EDGEFLEET_PROFILE: 'unreachable' });
    expect(fromEnv.stderr).toMatch(/cannot reach broker at mqtt:\/\/127\.0\.0\.1:1/);
    // ... and an explicit flag wins over it.
    const overridden = await deploy(env, '--profile', 'unreachable', '--broker', broker.url);
    expect(overridden.code, overridden.stderr).toBe(0);
    expect(overridden.stdout).toMatch(/serial 2/);
    // The profile's store (relative to the profile file) is where status reads; --db wins over it.
    const status = await cli(env, 'status', '--profile', 'store');
    expect(status.code).toBe(1);
    expect(status.stderr).toContain(join(dir, 'fleet-store.db'));
    const flagged = await cli(env, 'status', '--profile', 'store', '--db', `sqlite:${join(dir, 'other.db')}`);
    expect(flagged.stderr).toContain(join(dir, 'other.db'));
  });

  it.each([
    ['an unknown profile', ['--profile', 'nope'], 2, /--profile "nope": .*profiles\.json has no such profile \(it has lab, unreachable, tls, missingca, store\)/],
    ['a bad profile name', ['--profile', '../x'], 2, /--profile "\.\.\/x" is not a profile name/],
    ['a client certificate without its key', ['--profile', 'tls'], 2,
      /--client-cert \(from "clientCert" of profile "tls" in .*profiles\.json\) and --client-key \(from "clientKey" of profile "tls" in .*profiles\.json\) must be set together/],
    ['a CA file that is not there', ['--profile', 'missingca'], 1, /--ca \(from "ca" of profile "missingca" in .*profiles\.json\): cannot read .*no-such-ca\.pem \(ENOENT\)/],
  ])('%s is one clear line naming the file and the field', async (_what, args, code, message) => {
    const run = await cli(env, 'devices', '--wait-ms', '100', ...args);
    expect(run.code).toBe(code);
    expect(run.stderr).toMatch(message);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
    expect(run.stdout).toBe('');
  });

  it('a profile file that is not JSON, or has a bad field, stops every command that reads it, naming the file and field', async () => {
    const broken = join(dir, 'broken.json');
    await writeFile(broken, '{"profiles": {"lab": {"broker": "mqtt://x", "clientkey": "k.pem"}}}');
    const run = await cli({ EDGEFLEET_CONFIG: broken }, 'devices', '--profile', 'lab');
    expect(run.code).toBe(1);
    expect(run.stderr.trim()).toBe(`edgefleet devices: profile file ${broken} is invalid: profiles.lab: Unrecognized key: "clientkey"`);
    await writeFile(broken, '{"profiles": {"lab": {');
    const notJson = await cli({ EDGEFLEET_CONFIG: broken }, 'status', '--profile', 'lab');
    expect(notJson.code).toBe(1);
    expect(notJson.stderr).toMatch(new RegExp(`^edgefleet status: profile file ${broken} is not valid JSON: `));
    const missing = await cli({ EDGEFLEET_CONFIG: join(dir, 'absent.json') }, 'devices', '--profile', 'lab');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`cannot read the profile file ${join(dir, 'absent.json')} for --profile lab: no such file`);
  });

  it('the old flag names still work with a warning; old and new together are refused', async () => {
    const old = await cli({}, 'deploy', '--device', 'pi-011', 'mlp:1', '--manifests', manifests, '--key', join(keys, 'rollout.key'),
      '--broker', broker.url, '--wait-ms', '200');
    expect(old.code, old.stderr).toBe(0);
    expect(old.stderr).toContain('warning: --key is deprecated; use --signing-key');
    const both = await cli({}, 'deploy', '--device', 'pi-011', 'mlp:1', '--manifests', manifests, '--key', join(keys, 'rollout.key'),
      '--signing-key', join(keys, 'rollout.key'), '--broker', broker.url);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/--key is the old name of --signing-key; pass only --signing-key/);
    const tls = await cli({}, 'devices', '--broker', broker.url, '--cert', join(dir, 'a.pem'), '--key-file', join(dir, 'a.key'));
    expect(tls.code).toBe(1);
    expect(tls.stderr).toContain('warning: --cert is deprecated; use --client-cert');
    expect(tls.stderr).toContain('warning: --key-file is deprecated; use --client-key');
    expect(tls.stderr).toMatch(/--client-cert: cannot read .*a\.pem \(ENOENT\)/);
    const noKey = await cli({}, 'deploy', '--device', 'pi-011', 'mlp:1', '--manifests', manifests, '--broker', broker.url);
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toMatch(/missing --signing-key ROLLOUT\.key \(the rollout role's private key\), or "signingKeys\.rollout" in a profile/);
  });

  it('deploy refuses a serial not above what the target\'s devices report applied, and the default goes above it', async () => {
    await publishRetained(broker.url, 'edgefleet/devices/pi-003/state', reportState('pi-003', ['lab'], { source: 'group', group: 'lab', serial: 7, status: 'applied' }));
    await publishRetained(broker.url, 'edgefleet/devices/pi-004/state', reportState('pi-004', ['lab'], { source: 'group', group: 'lab', serial: 6, status: 'applying' }));
    // Other groups, rejected documents and unreadable states do not count.
    await publishRetained(broker.url, 'edgefleet/devices/pi-005/state', reportState('pi-005', ['lab'], { source: 'group', group: 'lab', serial: 99, status: 'rejected' }));
    await publishRetained(broker.url, 'edgefleet/devices/pi-006/state', reportState('pi-006', ['field'], { source: 'group', group: 'field', serial: 50, status: 'applied' }));
    await publishRetained(broker.url, 'edgefleet/devices/pi-007/state', '{"schema": 1}');
    const group = (...extra: string[]): Promise<Run> => cli(env, 'deploy', '--group', 'lab', 'mlp:1=stable', '--manifests', manifests, '--wait-ms', '300', ...extra);

    const replay = await group('--serial', '5');
    expect(replay.code).toBe(2);
    expect(replay.stderr).toContain('serial 5 is not above 7, the serial pi-003 reports applied from group:lab; it would be rejected as a replay (leave out --serial to take 8)');
    expect(await retainedOn(broker.url, 'edgefleet/groups/lab/desired')).toBeUndefined();
    expect((await group('--serial', '7')).stderr).toContain('serial 7 is not above 7');

    const chosen = await group('--json');
    expect(chosen.code, chosen.stderr).toBe(0);
    const result = JSON.parse(chosen.stdout) as { serial: number; target: unknown; topic: string; models: unknown[] };
    expect(result).toMatchObject({ serial: 8, target: { group: 'lab' }, topic: 'edgefleet/groups/lab/desired', models: [{ name: 'mlp', version: 1, labels: ['stable'] }] });
    expect(serialOf(await retainedOn(broker.url, 'edgefleet/groups/lab/desired'))).toBe(8);
    // Now the retained document is the highest: 9 next, and 8 is refused with that reason.
    const again = await group('--serial', '8');
    expect(again.stderr).toContain('serial 8 is not above 8, the serial of the document retained on edgefleet/groups/lab/desired');
    expect((await group()).stdout).toMatch(/serial 9/);

    // A device's own document: the serial it reports from itself counts, not its group's.
    await publishRetained(broker.url, 'edgefleet/devices/pi-008/state', reportState('pi-008', ['lab'], { source: 'device', serial: 12, status: 'failed' }));
    const own = await cli(env, 'deploy', '--device', 'pi-008', 'mlp:1=stable', '--manifests', manifests, '--serial', '12');
    expect(own.stderr).toContain('serial 12 is not above 12, the serial pi-008 reports accepted (failed) from device:pi-008');
    const next = await cli(env, 'deploy', '--device', 'pi-008', 'mlp:1=stable', '--manifests', manifests);
    expect(next.code, next.stderr).toBe(0);
    expect(next.stdout).toMatch(/serial 13/);
    const fromGroup = await cli(env, 'deploy', '--device', 'pi-003', 'mlp:1=stable', '--manifests', manifests, '--serial', '2');
    expect(fromGroup.code, fromGroup.stderr).toBe(0);
  });

  it('deploy --clear removes a device\'s own document so it follows its group again; a group clear warns', async () => {
    const topic = 'edgefleet/devices/pi-020/desired';
    const made = await cli(env, 'deploy', '--device', 'pi-020', 'mlp:1=stable', '--manifests', manifests, '--serial', '4');
    expect(made.code, made.stderr).toBe(0);
    expect(serialOf(await retainedOn(broker.url, topic))).toBe(4);

    const cleared = await cli(env, 'deploy', '--device', 'pi-020', '--clear', '--wait-ms', '300');
    expect(cleared.code, cleared.stderr).toBe(0);
    expect(cleared.stdout.trim()).toBe(`cleared device "pi-020" (${topic}): removed serial 4; pi-020 follows its groups' documents again`);
    expect(cleared.stderr).toContain('devices remember serial 4 from device:pi-020: a later document for it needs a serial above 4');
    expect(await retainedOn(broker.url, topic)).toBeUndefined();

    const twice = await cli(env, 'deploy', '--device', 'pi-020', '--clear', '--json', '--wait-ms', '300');
    expect(twice.code, twice.stderr).toBe(0);
    expect(JSON.parse(twice.stdout)).toEqual({ target: { device: 'pi-020' }, topic, cleared: true, removedSerial: null, lastSerial: null });

    // Following its group now, the device reports the group's serial, not its own: the default says so.
    await publishRetained(broker.url, 'edgefleet/devices/pi-020/state', reportState('pi-020', ['lab'], { source: 'group', group: 'lab', serial: 9, status: 'applied' }));
    const guess = await cli(env, 'deploy', '--device', 'pi-020', 'mlp:1=stable', '--manifests', manifests, '--wait-ms', '300');
    expect(guess.code, guess.stderr).toBe(0);
    expect(guess.stderr).toContain("starting at serial 1 (the device goes by group:lab now: if it had a document of its own before, pass --serial above the one 'deploy --clear' printed)");
    const after = await cli(env, 'deploy', '--device', 'pi-020', 'mlp:1=stable', '--manifests', manifests, '--serial', '5');
    expect(after.code, after.stderr).toBe(0);

    const groupClear = await cli(env, 'deploy', '--group', 'lab', '--clear', '--wait-ms', '300');
    expect(groupClear.code, groupClear.stderr).toBe(0);
    expect(groupClear.stderr).toMatch(/^warning: removing the document of group lab: its devices without a document of their own fall back to their next group's document, and those with none keep serving what they serve now$/m);
    expect(groupClear.stdout).toMatch(/removed serial 9/);
    expect(await retainedOn(broker.url, 'edgefleet/groups/lab/desired')).toBeUndefined();
    // The removed document's serial is remembered by the devices that applied it.
    expect(groupClear.stderr).toContain('devices remember serial 9 from group:lab');
  });

  it.each([
    [['--device', 'pi-1', '--clear', 'mlp:1'], /--clear publishes nothing to sign: leave out NAME:VERSION/],
    [['--device', 'pi-1', '--clear', '--serial', '3'], /--clear publishes nothing to sign: leave out --serial/],
    [['--device', 'pi-1', '--clear', '--none'], /--clear publishes nothing to sign: leave out --none/],
    [['--clear'], /pass exactly one of --device ID and --group NAME/],
    [['--device', 'pi-1'], /name at least one NAME:VERSION to serve \(or --none to unload everything, or --clear to remove the document\)/],
  ])('deploy %j is a usage error', async (args, message) => {
    const run = await cli(env, 'deploy', ...args);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message);
    expect(run.stdout).toBe('');
  });

  it('devices says which document each device follows and how long ago it reported', async () => {
    const table = await cli(env, 'devices', '--group', 'lab', '--wait-ms', '400');
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^DEVICE\s+ONLINE\s+GROUPS\s+DESIRED\s+FOLLOWS\s+TRUST\s+MODELS\s+LAST SEEN$/);
    expect(lines.find((l) => l.startsWith('pi-003'))).toMatch(/^pi-003\s+\?\s+lab\s+7 applied\s+group:lab\s+-\s+-\s+\d+ s ago$/);
    expect(lines.find((l) => l.startsWith('pi-008'))).toMatch(/^pi-008\s+\?\s+lab\s+12 failed\s+own\s+/);
    const json = JSON.parse((await cli(env, 'devices', '--json', '--wait-ms', '400')).stdout) as { device: string; desired: unknown; ts: string }[];
    expect(json.find((r) => r.device === 'pi-003')).toMatchObject({ desired: { source: 'group', group: 'lab', serial: 7 }, ts: expect.stringMatching(/Z$/) });
  });

  it('every command that prints a result prints it as JSON with --json; version and --version print the package version', async () => {
    expect((await cli({}, 'version')).stdout.trim()).toBe(VERSION);
    expect((await cli({}, '--version')).stdout.trim()).toBe(VERSION);
    expect(JSON.parse((await cli({}, 'version', '--json')).stdout)).toEqual({ version: VERSION });
    const bad = await cli({}, 'version', '--bogus');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/usage: edgefleet version \[--json\]/);

    const key = JSON.parse((await cli({}, 'keys', 'generate', '--out', keys, '--name', 'extra', '--json')).stdout) as Record<string, string>;
    expect(key).toEqual({ keyid: expect.stringMatching(/^[0-9a-f]{64}$/), privateKey: join(keys, 'extra.key'), publicKey: join(keys, 'extra.pub') });
    const init = await cli({}, 'trust', 'init', '--root', join(keys, 'root.pub'), '--models', join(keys, 'models.pub'), '--rollout', join(keys, 'rollout.pub'),
      '--out', join(dir, 'trust2.json'), '--json');
    expect(JSON.parse(init.stdout)).toMatchObject({ out: join(dir, 'trust2.json'), version: 1, roles: { root: { threshold: 1, keyids: trust.document.roles.root.keyids } } });
    const rotate = await cli({}, 'trust', 'rotate', '--current', join(dir, 'trust2.json'), '--sign-old', join(keys, 'root.key'), '--sign-new', join(keys, 'root.key'),
      '--out', join(dir, 'trust3.json'), '--json');
    expect(rotate.code, rotate.stderr).toBe(0);
    expect(JSON.parse(rotate.stdout)).toMatchObject({ version: 2, out: join(dir, 'trust3.json'), outDocument: join(dir, 'trust3.document.json'), published: [] });
    const deploy = await cli(env, 'deploy', '--device', 'pi-030', 'mlp:1', '--manifests', manifests, '--json');
    expect(JSON.parse(deploy.stdout)).toMatchObject({ target: { device: 'pi-030' }, serial: 1 });
    const retire = await cli(env, 'model', 'retire', '--manifest', join(manifests, 'mlp-1.manifest.json'), '--json');
    expect(retire.code, retire.stderr).toBe(0);
    const retired = JSON.parse(retire.stdout) as { topics: string[] };
    expect(retired).toMatchObject({ sha256: expect.stringMatching(/^[0-9a-f]{64}$/), blocks });
    expect(retired.topics).toHaveLength(blocks);
    for (const command of ['keys generate', 'trust init', 'trust rotate', 'model publish', 'model retire', 'deploy', 'devices', 'status', 'ca init', 'ca sign', 'ca server-cert']) {
      expect((await cli({}, ...command.split(' '), '--help')).stdout, command).toContain('--json');
    }
  });
});
