/**
 * The pieces of a release package that come from outside the checkout, each cached
 * between runs: the Node.js runtime (the registry's node-linux-<arch> package) and
 * better-sqlite3 compiled for that runtime and arch.
 *
 * The cache is EDGEFLEET_CACHE, else /var/cache/edgefleet when writable, else
 * ~/.cache/edgefleet. Nothing in it is ever partly written: files are renamed into place.
 */
import { execFileSync, type ExecFileSyncOptions } from 'node:child_process';
import { accessSync, constants, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, closeSync, readdirSync, renameSync, rmSync, statSync, lstatSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export type Arch = 'arm64' | 'x64';

export const REPO = join(import.meta.dirname, '..');

/**
 * The Node.js 20 release the packages carry: the newest 20.x on the registry when this
 * was written, within package.json's engines (>= 20.19). Its ABI (NODE_MODULE_VERSION)
 * is read from its headers, not assumed.
 */
export const NODE_VERSION = '20.20.2';

/** Runs a command, returning its stdout; a failure throws with the command and its stderr. */
export function sh(cmd: string, args: readonly string[], opts: ExecFileSyncOptions = {}): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'], ...opts }) as string;
  } catch (err) {
    const e = err as { stderr?: string | Buffer; message: string };
    const stderr = e.stderr?.toString().trim().split('\n').slice(-15).join('\n') ?? '';
    throw new Error(`${cmd} ${args.join(' ')} failed: ${stderr || e.message}`);
  }
}

/** Bytes of every regular file under `path`: the sum a copy of it takes, before file system overhead. */
export function treeBytes(path: string): number {
  const st = lstatSync(path);
  if (!st.isDirectory()) return st.isFile() ? st.size : 0;
  return readdirSync(path).reduce((sum, name) => sum + treeBytes(join(path, name)), 0);
}

export function cacheDir(): string {
  const chosen = process.env.EDGEFLEET_CACHE ?? (writable('/var/cache') ? '/var/cache/edgefleet' : join(homedir(), '.cache', 'edgefleet'));
  mkdirSync(chosen, { recursive: true });
  return chosen;
}

function writable(dir: string): boolean {
  try {
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export interface NodeRuntime {
  /** A folder holding bin/node, include/node/ and the licence. */
  dir: string;
  version: string;
  /** NODE_MODULE_VERSION: native modules must be built for this. */
  abi: number;
}

/** The node-linux-<arch> package from the registry (npm pack), unpacked into the cache once. */
export function nodeRuntime(arch: Arch, log: (line: string) => void): NodeRuntime {
  const dir = join(cacheDir(), 'node', `node-linux-${arch}-${NODE_VERSION}`);
  if (!existsSync(join(dir, 'bin', 'node'))) {
    log(`fetching Node.js ${NODE_VERSION} for linux/${arch} (npm pack node-linux-${arch}@${NODE_VERSION})`);
    mkdirSync(dirname(dir), { recursive: true });
    const tmp = mkdtempSync(`${dir}.tmp-`);
    try {
      const file = sh('npm', ['pack', `node-linux-${arch}@${NODE_VERSION}`, '--pack-destination', tmp, '--silent'], { cwd: tmp }).trim().split('\n').pop() ?? '';
      sh('tar', ['-xzf', join(tmp, file), '-C', tmp, '--strip-components=1', '--no-same-owner']);
      rmSync(join(tmp, file));
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
  }
  const header = readFileSync(join(dir, 'include', 'node', 'node_version.h'), 'utf8');
  const abi = Number(/#define NODE_MODULE_VERSION (\d+)/.exec(header)?.[1]);
  if (!Number.isInteger(abi)) throw new Error(`no NODE_MODULE_VERSION in ${dir}/include/node/node_version.h`);
  return { dir, version: NODE_VERSION, abi };
}

/** ELF e_machine values: what a shared object was compiled for. */
const ELF_MACHINE: Record<Arch, number> = { x64: 0x3e, arm64: 0xb7 };

export function elfArch(file: string): Arch | 'other' {
  const head = Buffer.alloc(20);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, head, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  if (head.readUInt32BE(0) !== 0x7f454c46) return 'other';
  const machine = head.readUInt16LE(18);
  return (Object.keys(ELF_MACHINE) as Arch[]).find((a) => ELF_MACHINE[a] === machine) ?? 'other';
}

/**
 * Puts better-sqlite3's binary for `arch` into the tree's copy of the module (installed
 * with its scripts skipped) and drops its sources (sqlite3.c alone is 9 MB). The binary
 * is compiled once per (better-sqlite3 version, Node ABI, arch): for x64 with this
 * machine's compiler, for arm64 in the Debian arm64 root under qemu-user
 * (packaging/arm64-root.sh), as the prebuilt download needs GitHub.
 * Returns the cache key, e.g. "12.11.1-node-v115-linux-arm64".
 */
export function betterSqlite3Binary(tree: string, arch: Arch, log: (line: string) => void): string {
  const moduleDir = join(tree, 'node_modules', 'better-sqlite3');
  const { version } = JSON.parse(readFileSync(join(moduleDir, 'package.json'), 'utf8')) as { version: string };
  const node = nodeRuntime(arch, log);
  const key = `${version}-node-v${node.abi}-linux-${arch}`;
  const cached = join(cacheDir(), 'better-sqlite3', `${key}.node`);
  if (!existsSync(cached)) {
    log(`compiling better-sqlite3 ${version} for Node ABI ${node.abi} linux/${arch}${arch === 'arm64' ? ' under qemu-user (several minutes)' : ''}`);
    const built = arch === 'arm64' ? compileInArm64Root(moduleDir, node, log) : compileHere(moduleDir, node);
    try {
      if (elfArch(built) !== arch) throw new Error(`the compiled better_sqlite3.node is not a linux/${arch} binary`);
      mkdirSync(dirname(cached), { recursive: true });
      copyFileSync(built, `${cached}.tmp`);
      renameSync(`${cached}.tmp`, cached);
    } finally {
      rmSync(built, { force: true });
    }
  }
  for (const name of ['deps', 'src', 'build', 'binding.gyp']) rmSync(join(moduleDir, name), { recursive: true, force: true });
  mkdirSync(join(moduleDir, 'build', 'Release'), { recursive: true });
  copyFileSync(cached, join(moduleDir, 'build', 'Release', 'better_sqlite3.node'));
  return key;
}

/** node-gyp as npm bundles it: no download, since --nodedir gives it the headers. */
function nodeGyp(): string {
  const npmDir = join(sh('npm', ['root', '-g']).trim(), 'npm');
  if (!existsSync(join(npmDir, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'))) throw new Error(`npm's node-gyp is not in ${npmDir}/node_modules/node-gyp`);
  return npmDir;
}

function compileHere(moduleDir: string, node: NodeRuntime): string {
  const work = mkdtempSync(join(cacheDir(), 'better-sqlite3-build-'));
  cpSync(moduleDir, work, { recursive: true });
  sh(process.execPath, [join(nodeGyp(), 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'), 'rebuild', '--release', `--nodedir=${node.dir}`, '-j', 'max'], { cwd: work });
  const out = join(work, 'build', 'Release', 'better_sqlite3.node');
  const keep = `${work}.node`;
  copyFileSync(out, keep);
  rmSync(work, { recursive: true, force: true });
  return keep;
}

function compileInArm64Root(moduleDir: string, node: NodeRuntime, log: (line: string) => void): string {
  const rootScript = join(REPO, 'packaging', 'arm64-root.sh');
  const root = sh('bash', [rootScript, 'build'], { stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  const build = join(root, 'build');
  rmSync(build, { recursive: true, force: true });
  cpSync(moduleDir, join(build, 'better-sqlite3'), { recursive: true });
  cpSync(node.dir, join(build, 'node'), { recursive: true });
  cpSync(nodeGyp(), join(build, 'npm'), { recursive: true });
  const started = Date.now();
  sh('bash', [rootScript, 'run', root, 'sh', '-c', 'cd /build/better-sqlite3 && PATH=/build/node/bin:$PATH node /build/npm/node_modules/node-gyp/bin/node-gyp.js rebuild --release --nodedir=/build/node -j max']);
  log(`better-sqlite3 compiled under qemu-user in ${Math.round((Date.now() - started) / 1000)} s`);
  const out = join(cacheDir(), `better-sqlite3-arm64-${process.pid}.node`);
  copyFileSync(join(build, 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node'), out);
  rmSync(build, { recursive: true, force: true });
  if (statSync(out).size === 0) throw new Error('better-sqlite3 compiled to an empty file');
  return out;
}
