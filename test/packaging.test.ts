/**
 * The x64 release package (npm run package), built once for this file in a temp folder:
 * what it holds, that its tarball provisions a --root and that a newer one upgrades it
 * keeping config, key and state, that the installed commands run, and that the installed
 * agent's execution-provider report is the one docs/execution-providers.md quotes for
 * linux/x64 (the arm64 one is checked by npm run test:arm64 under qemu).
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePackageArgs, type PackageOptions, type PackageResult } from '../packaging/package.js';
import { elfArch } from '../packaging/parts.js';
import { documentedReport, loggedReport } from '../packaging/smoke-checks.js';
import { freePort, REPO } from './helpers/child.js';
import { waitFor } from './helpers/agent.js';

const PROVISION = join(REPO, 'provisioning', 'provision.sh');
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const TOP = `edgefleet-agent-${VERSION}-linux-x64`;

let dir: string;
let pkg: PackageResult;

/**
 * buildPackage in a child process: it runs tsc, npm and tar synchronously for about a minute,
 * and a test worker whose event loop is blocked that long fails its run with vitest's
 * "Timeout calling onTaskUpdate" (its 60 s RPC timeout), whatever the tests say.
 */
async function buildInChild(opts: PackageOptions): Promise<PackageResult> {
  const code = `import { buildPackage } from './packaging/package.ts';
process.stdout.write(JSON.stringify(buildPackage({ ...${JSON.stringify(opts)}, log: () => undefined })));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: REPO, maxBuffer: 1 << 20 });
  return JSON.parse(stdout) as PackageResult;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-packaging-'));
  pkg = await buildInChild({ arch: 'x64', outDir: join(dir, 'release'), deb: true });
  execFileSync('tar', ['-xzf', pkg.tarball, '-C', dir]);
}, 600_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

function provision(root: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('bash', [PROVISION, '--root', root, '--device-id', 'pi-001', ...args], { cwd: dir, env }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** A PATH of everything in /usr/bin and /bin but Node.js and npm: what a bare board has. */
async function pathWithoutNode(): Promise<string> {
  const bare = join(dir, 'bare-bin');
  await mkdir(bare);
  for (const from of ['/usr/bin', '/bin']) {
    for (const name of readdirSync(from)) {
      if (['node', 'nodejs', 'npm', 'npx', 'corepack'].includes(name) || existsSync(join(bare, name))) continue;
      await symlink(join(from, name), join(bare, name));
    }
  }
  return `${bare}:/usr/sbin:/sbin`;
}

const sha = async (file: string): Promise<string> => createHash('sha256').update(await readFile(file)).digest('hex');

describe('npm run package arguments', () => {
  it('refuses a missing or unknown --arch and unknown options, saying what was wrong', () => {
    expect(() => parsePackageArgs([])).toThrow('--arch is required: arm64 or x64');
    expect(() => parsePackageArgs(['--arch', 'armhf'])).toThrow('--arch must be arm64 or x64, not "armhf"');
    expect(() => parsePackageArgs(['--arch', 'x64', '--arm'])).toThrow(/Unknown option '--arm'[\s\S]*usage: npm run package -- --arch arm64\|x64/);
    expect(parsePackageArgs(['--arch', 'arm64', '--out', '/tmp/r', '--no-deb'])).toEqual({ arch: 'arm64', outDir: '/tmp/r', deb: false });
  });
});

describe('the x64 release package', () => {
  it('holds Node.js, the agent and linux/x64 native modules only, and no build leftovers', async () => {
    const tree = join(dir, TOP);
    expect(elfArch(join(tree, 'node/bin/node'))).toBe('x64');
    expect(execFileSync(join(tree, 'node/bin/node'), ['--version'], { encoding: 'utf8' })).toMatch(/^v20\./);
    const ort = join(tree, 'node_modules/onnxruntime-node/bin/napi-v6');
    expect(readdirSync(ort)).toEqual(['linux']);
    expect(readdirSync(join(ort, 'linux'))).toEqual(['x64']);
    expect(elfArch(join(tree, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node'))).toBe('x64');
    for (const gone of ['node_modules/better-sqlite3/deps', 'node_modules/better-sqlite3/src', 'package-lock.json', '.npmrc', 'node/include']) expect(existsSync(join(tree, gone)), gone).toBe(false);
    const manifest = JSON.parse(await readFile(join(tree, 'package.json'), 'utf8'));
    expect(manifest.scripts).toBeUndefined();
    expect(manifest.devDependencies).toBeUndefined();
    for (const kept of ['dist/agent/bin.js', 'dist/fleet/bin.js', 'agent/grpc/proto/grpc_predict_v2.proto', 'systemd/edgefleet-agent.service', 'provisioning/provision.sh', 'docs/device-guide.md']) {
      expect(existsSync(join(tree, kept)), kept).toBe(true);
    }
    expect(JSON.parse(await readFile(join(tree, 'PACKAGE.json'), 'utf8'))).toMatchObject({ version: VERSION, arch: 'x64', node: expect.stringMatching(/^20\./) });
    expect(pkg.installedBytes).toBeLessThan(pkg.todayBytes);
  });

  it('installed commands run: bin/edgefleet-agent, bin/edgefleet and the executable dist/*/bin.js', () => {
    const tree = join(dir, TOP);
    expect(execFileSync(join(tree, 'bin/edgefleet-agent'), ['--version'], { encoding: 'utf8' }).trim()).toBe(VERSION);
    expect(execFileSync(join(tree, 'bin/edgefleet'), ['--help'], { encoding: 'utf8' })).toMatch(/^usage: edgefleet <command>/);
    for (const bin of ['dist/agent/bin.js', 'dist/fleet/bin.js']) expect(statSync(join(tree, bin)).mode & 0o111, bin).toBe(0o111);
    expect(execFileSync(join(tree, 'dist/agent/bin.js'), ['--version'], { encoding: 'utf8' }).trim()).toBe(VERSION);
    // The packaged better-sqlite3 loads in the packaged Node.js (its ABI) and runs SQL.
    const sql = `const D = require('${tree}/node_modules/better-sqlite3'); console.log(new D(':memory:').prepare('select 6 * 7 as n').get().n)`;
    expect(execFileSync(join(tree, 'node/bin/node'), ['-e', sql], { encoding: 'utf8' }).trim()).toBe('42');
  });

  it('the .deb puts the tree in /opt/edgefleet and the commands in /usr/bin, for amd64', () => {
    expect(pkg.deb).toBe(join(dir, 'release', `edgefleet-agent_${VERSION}_amd64.deb`));
    expect(execFileSync('dpkg-deb', ['--field', pkg.deb!, 'Package', 'Version', 'Architecture'], { encoding: 'utf8' })).toBe(`Package: edgefleet-agent\nVersion: ${VERSION}\nArchitecture: amd64\n`);
    const list = execFileSync('dpkg-deb', ['--contents', pkg.deb!], { encoding: 'utf8', maxBuffer: 64 << 20 });
    expect(list).toMatch(/^-rwxr-xr-x root\/root .* \.\/opt\/edgefleet\/node\/bin\/node$/m);
    expect(list).toMatch(/ \.\/usr\/bin\/edgefleet-agent -> \/opt\/edgefleet\/bin\/edgefleet-agent$/m);
    expect(list).not.toMatch(/\.\/etc\/edgefleet|\.\/var\/lib/);
  });
});

describe('npm pack', () => {
  it('carries dist/, the .proto files, the unit and provision.sh (prepare builds dist/ first)', () => {
    const out = execFileSync('npm', ['pack', '--dry-run', '--json'], { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    // prepare's own output comes first on stdout; the JSON report starts at a line of its own.
    const files = (JSON.parse(out.slice(out.search(/^\[/m))) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
    for (const file of ['dist/agent/bin.js', 'dist/fleet/bin.js', 'agent/grpc/proto/grpc_predict_v2.proto', 'systemd/edgefleet-agent.service', 'provisioning/provision.sh']) {
      expect(files, file).toContain(file);
    }
    expect(files.filter((f) => f.startsWith('test/') || f.startsWith('node_modules/'))).toEqual([]);
  }, 180_000);
});

describe('provision.sh --source with the release tarball', () => {
  let root: string;
  beforeAll(async () => {
    root = join(dir, 'root');
  });

  it('installs it and runs the packaged Node.js, with no npm and no Node.js on the PATH', async () => {
    const r = await provision(root, ['--models-dir', '/srv/models', '--source', pkg.tarball], { PATH: await pathWithoutNode() });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^changed: installed the agent into \/opt\/edgefleet$/m);
    expect(existsSync(join(root, 'opt/edgefleet/node/bin/node'))).toBe(true);
    expect(existsSync(join(root, 'opt/edgefleet.new'))).toBe(false);
    expect(await readFile(join(root, 'etc/systemd/system/edgefleet-agent.service.d/node-path.conf'), 'utf8')).toContain(
      'ExecStart=/opt/edgefleet/node/bin/node /opt/edgefleet/dist/agent/bin.js --config /etc/edgefleet/agent.json',
    );
    expect(JSON.parse(await readFile(join(root, 'etc/edgefleet/agent.json'), 'utf8'))).toMatchObject({ deviceId: 'pi-001', models: { dir: '/srv/models' } });
    const again = await provision(root, ['--models-dir', '/srv/models', '--source', pkg.tarball]);
    expect(again.stdout).toMatch(/^ok: agent in \/opt\/edgefleet is up to date$/m);
    expect(again.stdout.trim().split('\n').at(-1)).toBe('provision: no changes');
  });

  it('a newer package upgrades the agent alone: config, key and state kept, one change', async () => {
    const kept = ['etc/edgefleet/agent.json', 'etc/edgefleet/device.key', 'etc/edgefleet/device.csr'];
    const before = await Promise.all(kept.map((f) => sha(join(root, f))));
    await mkdir(join(root, 'var/lib/edgefleet/models'), { recursive: true });
    await writeFile(join(root, 'var/lib/edgefleet/agent.db'), 'state');
    // The same tree as a later release: only its PACKAGE.json says so.
    const newer = join(dir, 'newer');
    await mkdir(newer);
    execFileSync('cp', ['-a', join(dir, TOP), join(newer, TOP)]);
    await writeFile(join(newer, TOP, 'PACKAGE.json'), JSON.stringify({ version: '9.9.9' }));
    execFileSync('tar', ['-C', newer, '-I', 'gzip -1', '-cf', join(newer, 'newer.tar.gz'), TOP]);
    const r = await provision(root, ['--models-dir', '/srv/models', '--source', join(newer, 'newer.tar.gz')]);
    expect(r.code).toBe(0);
    expect(r.stdout.match(/^changed: .*$/gm)).toEqual(['changed: installed the agent into /opt/edgefleet']);
    expect(JSON.parse(await readFile(join(root, 'opt/edgefleet/PACKAGE.json'), 'utf8'))).toEqual({ version: '9.9.9' });
    expect(await Promise.all(kept.map((f) => sha(join(root, f))))).toEqual(before);
    expect(await readFile(join(root, 'var/lib/edgefleet/agent.db'), 'utf8')).toBe('state');
  }, 120_000); // copies, packs and unpacks 180 MB

  it('a tarball that is not an agent is refused and leaves no half-built /opt/edgefleet.new', async () => {
    const junk = join(dir, 'junk');
    await mkdir(join(junk, 'edgefleet-agent-1.0.0-linux-x64'), { recursive: true });
    await writeFile(join(junk, 'edgefleet-agent-1.0.0-linux-x64', 'README'), 'not an agent');
    execFileSync('tar', ['-C', junk, '-czf', join(junk, 'junk.tar.gz'), 'edgefleet-agent-1.0.0-linux-x64']);
    const fresh = join(dir, 'root-junk');
    const r = await provision(fresh, ['--source', join(junk, 'junk.tar.gz')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('is not a built agent (needs package.json and dist/agent/bin.js');
    expect(existsSync(join(fresh, 'opt/edgefleet.new'))).toBe(false);
  });

  it('a package whose native modules do not load here is refused before anything is replaced; staged for another arch, it is not tried', async () => {
    // Stands for a board older than the packages' glibc 2.34: better-sqlite3 cannot be loaded.
    const broken = join(dir, 'broken');
    await mkdir(broken);
    execFileSync('cp', ['-a', join(dir, TOP), join(broken, TOP)]);
    await writeFile(join(broken, TOP, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node'), 'not a shared object');
    execFileSync('tar', ['-C', broken, '-I', 'gzip -1', '-cf', join(broken, 'broken.tar.gz'), TOP]);
    const before = await readFile(join(root, 'opt/edgefleet/PACKAGE.json'), 'utf8');
    const r = await provision(root, ['--models-dir', '/srv/models', '--source', join(broken, 'broken.tar.gz')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/its better-sqlite3 does not load on this board \(Error: .*better_sqlite3\.node: .+\); release packages need glibc 2\.34/);
    expect(await readFile(join(root, 'opt/edgefleet/PACKAGE.json'), 'utf8')).toBe(before);
    expect(existsSync(join(root, 'opt/edgefleet.new'))).toBe(false);

    // Staging (--root, for an image) a package for another arch cannot try it, and says so.
    await writeFile(join(broken, TOP, 'PACKAGE.json'), JSON.stringify({ version: VERSION, arch: 'arm64' }));
    execFileSync('tar', ['-C', broken, '-I', 'gzip -1', '-cf', join(broken, 'arm64.tar.gz'), TOP]);
    const staged = await provision(join(dir, 'root-arm64-image'), ['--source', join(broken, 'arm64.tar.gz')]);
    expect(staged.code).toBe(0);
    expect(staged.stderr).toContain('provision: note: staging a linux/arm64 package on x86_64: its Node.js and native modules are not tried here');
  }, 180_000);

  it('the installed agent reports the execution providers docs/execution-providers.md quotes for linux/x64', async () => {
    const port = await freePort();
    const config = join(dir, 'agent-x64.json');
    await writeFile(config, JSON.stringify({ deviceId: 'pi-001', stateDir: join(dir, 'state-x64'), http: { port }, runtime: { executionProviders: ['tensorrt', 'cuda', 'xnnpack', 'cpu'], warmupRuns: 0 } }));
    const proc = spawn(join(root, 'opt/edgefleet/bin/edgefleet-agent'), ['--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor(() => fetch(`http://127.0.0.1:${port}/v2/health/ready`).then((r) => r.ok, () => false), 30_000, `the packaged agent:\n${out}`);
      const doc = await readFile(join(REPO, 'docs/execution-providers.md'), 'utf8');
      expect(loggedReport(out)).toEqual(documentedReport(doc, 'x64'));
    } finally {
      proc.kill('SIGTERM');
    }
  });
});
