/**
 * `npm run package -- --arch arm64|x64`: builds, on an x86-64 machine, the release
 * files a board installs from with no compiler, no npm and no network:
 *
 *   release/edgefleet-agent-<version>-linux-<arch>.tar.gz   for provision.sh --source
 *   release/edgefleet-agent_<version>_<debian arch>.deb     for dpkg -i (amd64 for x64)
 *
 * Both hold the same tree (docs/device-guide.md lists it): a Node.js 20 runtime for the
 * arch, the compiled agent and fleet CLI, production node_modules with native modules
 * built for the arch and onnxruntime-node's binaries for linux/<arch> only, the systemd
 * unit, provision.sh and the docs. Downloads and compiled modules are cached (parts.ts).
 */
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { betterSqlite3Binary, nodeRuntime, REPO, sh, treeBytes, type Arch } from './parts.js';
import { writeDeb } from './deb.js';

export const ARCHES = ['arm64', 'x64'] as const;

export interface PackageOptions {
  arch: Arch;
  outDir: string;
  /** Also write the .deb (default true; the quick tests build only the tarball). */
  deb: boolean;
  /** Lines of progress (default: stderr). */
  log?: (line: string) => void;
}

export interface PackageResult {
  tarball: string;
  deb?: string;
  /** Bytes of the installed tree, and of what `npm ci --omit=dev` plus dist/ installs today. */
  installedBytes: number;
  todayBytes: number;
}

/** Files of the checkout a board needs besides dist/ and node_modules/. */
const COPIED = ['agent/grpc/proto', 'systemd', 'provisioning', 'docs', 'README.md'];

export function parsePackageArgs(argv: readonly string[]): PackageOptions {
  let values;
  try {
    ({ values } = parseArgs({ args: [...argv], options: { arch: { type: 'string' }, out: { type: 'string' }, 'no-deb': { type: 'boolean' } } }));
  } catch (err) {
    throw new Error(`${(err as Error).message.split('\n')[0]}\nusage: npm run package -- --arch arm64|x64 [--out DIR] [--no-deb]`);
  }
  const arch = values.arch;
  if (arch === undefined) throw new Error('--arch is required: arm64 or x64');
  if (!(ARCHES as readonly string[]).includes(arch)) throw new Error(`--arch must be arm64 or x64, not "${arch}"`);
  return { arch: arch as Arch, outDir: values.out ?? join(REPO, 'release'), deb: !values['no-deb'] };
}

export function buildPackage(opts: PackageOptions): PackageResult {
  const log = opts.log ?? ((line: string) => process.stderr.write(`package: ${line}\n`));
  const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string };
  const base = `edgefleet-agent-${pkg.version}-linux-${opts.arch}`;
  const work = mkdtempSync(join(tmpdir(), 'edgefleet-package-'));
  try {
    const tree = join(work, base);
    log('compiling the agent and fleet CLI (tsc)');
    sh('npx', ['tsc', '-p', 'tsconfig.build.json', '--outDir', join(tree, 'dist')], { cwd: REPO });
    const todayBytes = productionModules(tree, log) + treeBytes(join(tree, 'dist'));
    keepOnnxruntimeFor(tree, opts.arch);
    const sqlite = betterSqlite3Binary(tree, opts.arch, log);
    checkNativeModules(tree);
    const node = nodeRuntime(opts.arch, log);
    // The binary and its licence: headers and man pages are for building, not running.
    mkdirSync(join(tree, 'node', 'bin'), { recursive: true });
    for (const file of ['bin/node', 'LICENSE']) cpSync(join(node.dir, file), join(tree, 'node', file));
    for (const path of COPIED) cpSync(join(REPO, path), join(tree, path), { recursive: true });
    writeLaunchers(tree);
    writeFileSync(join(tree, 'PACKAGE.json'), `${JSON.stringify({ name: 'edgefleet-agent', version: pkg.version, arch: opts.arch, node: node.version, betterSqlite3: sqlite }, null, 2)}\n`);
    const installedBytes = treeBytes(tree);
    mkdirSync(opts.outDir, { recursive: true });
    const tarball = join(opts.outDir, `${base}.tar.gz`);
    log(`writing ${tarball}`);
    // Owner root, fixed order and times: the same inputs give the same file.
    sh('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', work, '-czf', tarball, base]);
    const deb = opts.deb ? writeDeb(tree, pkg.version, opts.arch, opts.outDir, log) : undefined;
    return { tarball, deb, installedBytes, todayBytes };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * The lockfile's production dependencies, with every install script skipped: the root's
 * `prepare` (tsc, a dev dependency), onnxruntime-node's (downloads CUDA libraries) and
 * better-sqlite3's (downloads or compiles for this machine, not the board's).
 * Returns the size of that tree as npm leaves it: what a board installs today.
 */
function productionModules(tree: string, log: (line: string) => void): number {
  log('installing production dependencies (npm ci --omit=dev --ignore-scripts)');
  for (const file of ['package.json', 'package-lock.json', '.npmrc']) cpSync(join(REPO, file), join(tree, file));
  sh('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: tree });
  const bytes = treeBytes(join(tree, 'node_modules'));
  rmSync(join(tree, '.npmrc'));
  rmSync(join(tree, 'package-lock.json'));
  // No scripts or dev dependencies on a board: npm is never run there.
  sh('npm', ['pkg', 'delete', 'scripts', 'devDependencies', 'allowScripts'], { cwd: tree });
  return bytes;
}

/** onnxruntime-node carries binaries for macOS, Windows and both Linux arches: keep linux/<arch>. */
function keepOnnxruntimeFor(tree: string, arch: Arch): void {
  const bin = join(tree, 'node_modules', 'onnxruntime-node', 'bin');
  const napi = readdirSync(bin).filter((d) => d.startsWith('napi-v'));
  if (napi.length === 0) throw new Error(`onnxruntime-node has no bin/napi-v*/ folder in ${bin}: its layout changed`);
  for (const version of napi) {
    const wanted = join(bin, version, 'linux', arch);
    if (!existsSync(join(wanted, 'onnxruntime_binding.node'))) throw new Error(`onnxruntime-node ships no binding for linux/${arch} in ${wanted}`);
    for (const platform of readdirSync(join(bin, version))) {
      if (platform !== 'linux') rmSync(join(bin, version, platform), { recursive: true });
    }
    for (const other of readdirSync(join(bin, version, 'linux'))) {
      if (other !== arch) rmSync(join(bin, version, 'linux', other), { recursive: true });
    }
  }
}

/** A native module this script does not know would ship without its binary: refuse instead. */
function checkNativeModules(tree: string): void {
  const gyp = sh('find', [join(tree, 'node_modules'), '-name', 'binding.gyp', '-not', '-path', '*/better-sqlite3/*']);
  if (gyp.trim() !== '') throw new Error(`native modules packaging/package.ts does not build: ${gyp.trim().split('\n').join(', ')}`);
}

/** bin/edgefleet-agent and bin/edgefleet run the bundled Node.js, wherever the tree is. */
function writeLaunchers(tree: string): void {
  mkdirSync(join(tree, 'bin'));
  for (const [name, entry] of [['edgefleet-agent', 'agent'], ['edgefleet', 'fleet']] as const) {
    const file = join(tree, 'bin', name);
    writeFileSync(file, `#!/bin/sh\n# Runs dist/${entry}/bin.js with the Node.js runtime shipped in this package.\nhere=$(dirname "$(readlink -f "$0")")\nexec "$here/../node/bin/node" "$here/../dist/${entry}/bin.js" "$@"\n`);
    chmodSync(file, 0o755);
    chmodSync(join(tree, 'dist', entry, 'bin.js'), 0o755);
  }
}

export function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  try {
    const opts = parsePackageArgs(process.argv.slice(2));
    const r = buildPackage(opts);
    const saved = (1 - r.installedBytes / r.todayBytes) * 100;
    console.log(`installed tree: ${megabytes(r.installedBytes)} with Node.js (npm ci --omit=dev and dist/ today: ${megabytes(r.todayBytes)} without it; ${saved.toFixed(0)}% less)`);
    for (const file of [r.tarball, r.deb]) if (file) console.log(`${file}: ${megabytes(statSync(file).size)}`);
  } catch (err) {
    console.error(`package: ${(err as Error).message}`);
    process.exit(1);
  }
}
