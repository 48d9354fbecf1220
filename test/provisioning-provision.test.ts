/**
 * provisioning/provision.sh staged into a temp root (--root): what it writes,
 * with which modes, that the config is one the agent accepts, and that a
 * second run with the same arguments changes nothing at all.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../agent/config/load.js';
import { caInit } from '../fleet/commands/ca-init.js';
import { caSign } from '../fleet/commands/ca-sign.js';
import type { Command } from '../fleet/command.js';
import { REPO } from './helpers/child.js';
import { makeFleetKeys, writeTrust } from './helpers/fleet.js';

function skipReason(): string | false {
  if (spawnSync('openssl', ['version']).status === 0) return false;
  if (process.env.CI) throw new Error('openssl is missing but CI is set: apt-get install -y openssl');
  return 'openssl not found; apt-get install -y openssl to run the provisioning tests';
}
const skip = skipReason();

const SCRIPT = join(REPO, 'provisioning', 'provision.sh');
let dir: string;
let root: string;

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function provision(args: string[], rootDir = root): Promise<Result> {
  return new Promise((resolve) => {
    execFile('bash', [SCRIPT, '--root', rootDir, ...args], { cwd: dir }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function run(command: Command, args: string[]): Promise<void> {
  await command.run(args, { out: () => undefined, note: () => undefined, stderr: { write: () => true }, cwd: dir });
}

/** Every path under `top` with its type, mode, mtime and content hash. */
async function snapshot(top: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (path: string): Promise<void> => {
    const st = await lstat(path);
    const hash = st.isFile() ? createHash('sha256').update(await readFile(path)).digest('hex') : st.isDirectory() ? 'dir' : 'other';
    out.set(path.slice(top.length) || '/', `${(st.mode & 0o7777).toString(8)} ${st.mtimeMs} ${hash}`);
    if (st.isDirectory()) for (const name of await readdir(path)) await walk(join(path, name));
  };
  await walk(top);
  return out;
}

const mode = async (path: string): Promise<number> => (await lstat(join(root, path))).mode & 0o777;
const openssl = (...args: string[]): string => execFileSync('openssl', args, { encoding: 'utf8' }).trim();

const BASE_ARGS = ['--device-id', 'pi-001', '--group', 'lab', '--group', 'edge', '--broker', 'mqtts://broker.example:8883', '--trust', 'trust.json', '--ca', 'ca/ca.pem', '--source', 'agent-src'];

beforeAll(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-provision-'));
  root = join(dir, 'root');
  // A built agent tree as `npm run build` leaves it, with its node_modules already in.
  const src = join(dir, 'agent-src');
  for (const [file, text] of Object.entries({
    'package.json': '{"name":"edgefleet","version":"0.1.0","type":"module"}\n',
    'dist/agent/bin.js': '#!/usr/bin/env node\n',
    'node_modules/pino/package.json': '{"name":"pino"}\n',
  })) {
    await mkdir(dirname(join(src, file)), { recursive: true });
    await writeFile(join(src, file), text);
  }
  await writeTrust(join(dir, 'trust.json'), makeFleetKeys());
  await run(caInit, ['--out', 'ca']);
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe.skipIf(skip)('provision.sh --root', () => {
  let first: Map<string, string>;

  it('stages user-less: folders, agent, trust, CA, key, CSR, config and unit', async () => {
    const r = await provision(BASE_ARGS);
    expect(r.stderr).toMatch(/still needed: the device certificate \/etc\/edgefleet\/device\.pem/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^would run: useradd --system .* edgefleet$/m);
    expect(r.stdout).toMatch(/^would run: systemctl daemon-reload$/m);
    expect(r.stdout).toMatch(/^would run: systemctl enable --now edgefleet-agent\.service$/m);
    expect(r.stdout).toMatch(/^changed: generated device key \/etc\/edgefleet\/device\.key \(EC P-256\)$/m);
    expect(r.stdout.trim().split('\n').at(-1)).toMatch(/^provision: \d+ change\(s\)$/);

    expect(await mode('etc/edgefleet')).toBe(0o755);
    expect(await mode('var/lib/edgefleet')).toBe(0o700);
    expect(await mode('etc/edgefleet/device.key')).toBe(0o600);
    expect(await mode('etc/edgefleet/device.csr')).toBe(0o644);
    expect(await mode('etc/edgefleet/agent.json')).toBe(0o640);
    expect(await mode('etc/edgefleet/trust.json')).toBe(0o644);
    expect(await mode('etc/edgefleet/ca.pem')).toBe(0o644);
    expect(await readFile(join(root, 'etc/edgefleet/trust.json'))).toEqual(await readFile(join(dir, 'trust.json')));
    expect(await readFile(join(root, 'etc/edgefleet/ca.pem'))).toEqual(await readFile(join(dir, 'ca/ca.pem')));
    expect(await readFile(join(root, 'opt/edgefleet/dist/agent/bin.js'), 'utf8')).toBe('#!/usr/bin/env node\n');
    expect(await readFile(join(root, 'opt/edgefleet/node_modules/pino/package.json'), 'utf8')).toContain('pino');
    expect(await readFile(join(root, 'etc/systemd/system/edgefleet-agent.service'))).toEqual(await readFile(join(REPO, 'systemd/edgefleet-agent.service')));
    expect(await mode('etc/systemd/system/edgefleet-agent.service')).toBe(0o644);

    // The key: EC P-256; the CSR: CN = device id, for that key, self-signature valid.
    const key = join(root, 'etc/edgefleet/device.key');
    const csr = join(root, 'etc/edgefleet/device.csr');
    expect(openssl('pkey', '-in', key, '-noout', '-text')).toMatch(/NIST CURVE: P-256/);
    expect(openssl('req', '-in', csr, '-noout', '-subject', '-nameopt', 'RFC2253')).toBe('subject=CN=pi-001');
    expect(openssl('req', '-in', csr, '-noout', '-pubkey')).toBe(openssl('pkey', '-in', key, '-pubout'));
    expect(spawnSync('openssl', ['req', '-in', csr, '-noout', '-verify']).stderr.toString()).toMatch(/verify OK/);

    // The config is one the agent accepts, with the device's real paths.
    const raw = JSON.parse(await readFile(join(root, 'etc/edgefleet/agent.json'), 'utf8'));
    const config = parseConfig(raw, { source: 'agent.json', baseDir: '/etc/edgefleet' });
    expect(config.deviceId).toBe('pi-001');
    expect(config.groups).toEqual(['lab', 'edge']);
    expect(config.stateDir).toBe('/var/lib/edgefleet');
    expect(config.trust).toBe('/etc/edgefleet/trust.json');
    expect(config.mqtt).toMatchObject({ url: 'mqtts://broker.example:8883', topicRoot: 'edgefleet', ca: '/etc/edgefleet/ca.pem', cert: '/etc/edgefleet/device.pem', key: '/etc/edgefleet/device.key' });
    expect(config.http).toMatchObject({ host: '127.0.0.1', port: 8501 });
    // Section 12: points kept until a collector acknowledges them.
    expect(config.telemetry).toMatchObject({ delivery: 'collector', ackTimeoutS: 300 });
    first = await snapshot(root);
  });

  it('changes nothing on a second run with the same arguments', async () => {
    const r = await provision(BASE_ARGS);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/^changed:/m);
    expect(r.stdout).toMatch(/^ok: device key \/etc\/edgefleet\/device\.key exists \(kept\)$/m);
    expect(r.stdout.trim().split('\n').at(-1)).toBe('provision: no changes');
    expect(await snapshot(root)).toEqual(first);
  });

  it('installs the signed certificate, and only that', async () => {
    await run(caSign, ['--ca', 'ca', '--csr', join(root, 'etc/edgefleet/device.csr'), '--out', 'pi-001.pem']);
    const r = await provision([...BASE_ARGS, '--cert', 'pi-001.pem']);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toMatch(/still needed/);
    expect(r.stdout.match(/^changed: .*$/gm)).toEqual(['changed: installed /etc/edgefleet/device.pem']);
    const after = await snapshot(root);
    const differs = [...after].filter(([path, v]) => first.get(path) !== v).map(([path]) => path);
    // The new file and the folder that holds it (its mtime).
    expect(differs.sort()).toEqual(['/etc/edgefleet', '/etc/edgefleet/device.pem']);
    expect((await provision([...BASE_ARGS, '--cert', 'pi-001.pem'])).stdout).toMatch(/provision: no changes\n$/);
  });

  it('refuses a certificate made for another key or another device', async () => {
    const other = join(dir, 'other');
    spawnSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${other}.key`, '-subj', '/CN=pi-001', '-out', `${other}.csr`]);
    await run(caSign, ['--ca', 'ca', '--csr', `${other}.csr`, '--out', 'other.pem']);
    const r = await provision([...BASE_ARGS, '--cert', 'other.pem']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/was not issued for this device's key/);
  });

  it('follows changed arguments: new port and the Jetson drop-in, then without it; the key stays', async () => {
    const key = await readFile(join(root, 'etc/edgefleet/device.key'));
    const r = await provision([...BASE_ARGS, '--cert', 'pi-001.pem', '--http-port', '9000', '--jetson', '--execution-providers', 'tensorrt,cuda,cpu']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^changed: installed \/etc\/edgefleet\/agent\.json$/m);
    expect(r.stdout).toMatch(/^changed: installed \/etc\/systemd\/system\/edgefleet-agent\.service\.d\/jetson-gpu\.conf$/m);
    const config = parseConfig(JSON.parse(await readFile(join(root, 'etc/edgefleet/agent.json'), 'utf8')));
    expect(config.http.port).toBe(9000);
    expect(config.telemetry.delivery).toBe('collector');
    expect(config.runtime.executionProviders).toEqual(['tensorrt', 'cuda', 'cpu']);
    expect(await readFile(join(root, 'etc/systemd/system/edgefleet-agent.service.d/jetson-gpu.conf'))).toEqual(await readFile(join(REPO, 'systemd/jetson-gpu.conf')));

    // An older collector never acknowledges: --telemetry-delivery broker is section 7's rule.
    const older = await provision([...BASE_ARGS, '--cert', 'pi-001.pem', '--http-port', '9000', '--jetson', '--execution-providers', 'tensorrt,cuda,cpu', '--telemetry-delivery', 'broker']);
    expect(older.stdout.match(/^changed: .*$/gm)).toEqual(['changed: installed /etc/edgefleet/agent.json']);
    expect(parseConfig(JSON.parse(await readFile(join(root, 'etc/edgefleet/agent.json'), 'utf8'))).telemetry.delivery).toBe('broker');

    const back = await provision([...BASE_ARGS, '--cert', 'pi-001.pem']);
    expect(parseConfig(JSON.parse(await readFile(join(root, 'etc/edgefleet/agent.json'), 'utf8'))).telemetry.delivery).toBe('collector');
    expect(back.stdout).toMatch(/^changed: removed \/etc\/systemd\/system\/edgefleet-agent\.service\.d\/jetson-gpu\.conf$/m);
    expect(await readFile(join(root, 'etc/edgefleet/device.key'))).toEqual(key);
  });

  it('keeps the key but makes a new CSR when the device id changes', async () => {
    const key = await readFile(join(root, 'etc/edgefleet/device.key'));
    const r = await provision(['--device-id', 'pi-002', '--source', 'agent-src']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^changed: installed \/etc\/edgefleet\/device\.csr$/m);
    expect(await readFile(join(root, 'etc/edgefleet/device.key'))).toEqual(key);
    expect(openssl('req', '-in', join(root, 'etc/edgefleet/device.csr'), '-noout', '-subject', '-nameopt', 'RFC2253')).toBe('subject=CN=pi-002');
    // Without --broker: a local-only agent, which needs no trust.
    const config = parseConfig(JSON.parse(await readFile(join(root, 'etc/edgefleet/agent.json'), 'utf8')));
    expect(config.mqtt).toBeUndefined();
  });

  it('installs from an npm pack tarball, once', async () => {
    const tgz = join(dir, 'edgefleet-0.1.0.tgz');
    execFileSync('cp', ['-r', join(dir, 'agent-src'), join(dir, 'package')]);
    await writeFile(join(dir, 'package', 'dist/agent/bin.js'), '#!/usr/bin/env node\n// from the tarball\n');
    execFileSync('tar', ['-czf', tgz, '-C', dir, 'package']);
    const other = join(dir, 'root-tgz');
    const r = await provision(['--device-id', 'pi-003', '--source', tgz], other);
    expect(r.code).toBe(0);
    expect(await readFile(join(other, 'opt/edgefleet/dist/agent/bin.js'), 'utf8')).toContain('from the tarball');
    const again = await provision(['--device-id', 'pi-003', '--source', tgz], other);
    expect(again.stdout).toMatch(/^ok: agent in \/opt\/edgefleet is up to date$/m);
    expect(again.stdout).toMatch(/provision: no changes\n$/);
  });

  it('writes --onnxruntime-path into agent.json and refuses a relative one', async () => {
    const other = join(dir, 'root-ort');
    const r = await provision(['--device-id', 'jetson-01', '--source', 'agent-src', '--onnxruntime-path', '/opt/onnxruntime-node-trt'], other);
    expect(r.code).toBe(0);
    const config = parseConfig(JSON.parse(await readFile(join(other, 'etc/edgefleet/agent.json'), 'utf8')));
    expect(config.runtime.onnxruntimePath).toBe('/opt/onnxruntime-node-trt');
    const relative = await provision(['--device-id', 'jetson-01', '--onnxruntime-path', 'trt'], other);
    expect(relative.code).toBe(2);
    expect(relative.stderr).toMatch(/--onnxruntime-path must be an absolute path/);
  });

  // A checkout's tree without node_modules: provision.sh runs npm there. Its package has no
  // dependencies, so npm needs no network; its scripts stand for the real ones.
  async function sourceWithScripts(name: string, scripts: Record<string, string>): Promise<string> {
    const src = join(dir, name);
    await mkdir(join(src, 'dist/agent'), { recursive: true });
    await writeFile(join(src, 'dist/agent/bin.js'), '#!/usr/bin/env node\n');
    await writeFile(join(src, 'package.json'), JSON.stringify({ name: 'edgefleet', version: '0.1.0', scripts }));
    return src;
  }

  it('a tree without node_modules gets npm install --omit=dev without the prepare script (tsc is not installed)', async () => {
    const src = await sourceWithScripts('src-prepare', { prepare: 'echo prepare ran >&2; exit 7' });
    const other = join(dir, 'root-prepare');
    const r = await provision(['--device-id', 'pi-004', '--source', src], other);
    expect(r.stderr).not.toContain('prepare ran');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^provision: npm install --omit=dev in \/opt\/edgefleet .*build-essential and python3\)$/m);
    expect(JSON.parse(await readFile(join(other, 'opt/edgefleet/package.json'), 'utf8')).scripts).toEqual({});
  });

  it('a failing npm install leaves the installed agent as it was and no /opt/edgefleet.new', async () => {
    const other = join(dir, 'root-prepare');
    const before = await readFile(join(other, 'opt/edgefleet/package.json'), 'utf8');
    const src = await sourceWithScripts('src-broken', { preinstall: 'exit 3' });
    const r = await provision(['--device-id', 'pi-004', '--source', src], other);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^provision: npm install --omit=dev failed \(see above\); \/opt\/edgefleet is unchanged$/m);
    expect(await readFile(join(other, 'opt/edgefleet/package.json'), 'utf8')).toBe(before);
    await expect(lstat(join(other, 'opt/edgefleet.new'))).rejects.toThrow(/ENOENT/);
  });

  it('refuses bad arguments before writing anything', async () => {
    const empty = join(dir, 'root-bad');
    for (const args of [['--device-id', 'bad id'], ['--device-id', 'pi-1', '--group', 'a/b'], ['--device-id', 'pi-1', '--broker', 'http://x'], ['--device-id', 'pi-1', '--http-port', '70000'], ['--device-id', 'pi-1', '--bogus']]) {
      const r = await provision(args, empty);
      expect(r.code, args.join(' ')).toBe(2);
    }
    expect((await provision([], empty)).stderr).toMatch(/--device-id is required/);
    const delivery = await provision(['--device-id', 'pi-1', '--telemetry-delivery', 'brokers'], empty);
    expect(delivery.code).toBe(2);
    expect(delivery.stderr).toMatch(/--telemetry-delivery must be collector or broker, not "brokers"/);
    await expect(readdir(empty)).rejects.toThrow();
  });
});
