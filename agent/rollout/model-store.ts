import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { MODEL_NAME_RE } from '../../protocol/names.js';
import { fsyncDir, removeQuietly, writeFileAtomic } from '../store/fs-atomic.js';
import { RolloutError } from './errors.js';

export interface StoredVersion {
  name: string;
  version: number;
  sha256: string;
}

export class StoreError extends RolloutError<'FILE_HASH' | 'NO_SPACE' | 'MISSING'> {
  constructor(code: StoreError['code'], message: string) {
    super(code, message);
    this.name = 'StoreError';
  }
}


/**
 * Verified model artifacts on disk: `{stateDir}/models/{name}/{version}/`
 * holds `model.onnx` and `manifest.json` (the signed envelope it came with).
 * `manifest.json` is written last, atomically, so a version folder without it
 * is an interrupted install and never counts. Downloads stage in
 * `{stateDir}/staging/{sha256}.part`.
 */
export class ModelStore {
  readonly root: string;
  readonly stagingDir: string;

  constructor(stateDir: string) {
    this.root = join(stateDir, 'models');
    this.stagingDir = join(stateDir, 'staging');
  }

  async init(): Promise<void> {
    await mkdir(this.root, { recursive: true });
    await mkdir(this.stagingDir, { recursive: true });
  }

  stagingFile(sha256: string): string {
    return join(this.stagingDir, `${sha256}.part`);
  }

  private dir(name: string, version: number): string {
    return join(this.root, name, String(version));
  }

  /** Installed versions; the sha256 comes from the manifest stored with each. */
  async list(): Promise<StoredVersion[]> {
    const out: StoredVersion[] = [];
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (!MODEL_NAME_RE.test(name)) continue;
      for (const v of await readdir(join(this.root, name)).catch(() => [] as string[])) {
        const version = Number(v);
        if (!Number.isSafeInteger(version) || version < 1) continue;
        const manifest = await this.readManifest(name, version).catch(() => undefined);
        const sha256 = manifest?.sha256;
        if (typeof sha256 === 'string') out.push({ name, version, sha256 });
      }
    }
    return out;
  }

  /** The stored envelope and the artifact hash recorded when it was installed. */
  async readManifest(name: string, version: number): Promise<{ envelope: unknown; sha256: string }> {
    const text = await readFile(join(this.dir(name, version), 'manifest.json'), 'utf8');
    return JSON.parse(text) as { envelope: unknown; sha256: string };
  }

  /** Moves a verified staging file into place; the manifest is written last. */
  async install(name: string, version: number, sha256: string, envelope: unknown): Promise<void> {
    const dir = this.dir(name, version);
    await removeQuietly(dir);
    await mkdir(dir, { recursive: true });
    await rename(this.stagingFile(sha256), join(dir, 'model.onnx'));
    await fsyncDir(dir);
    await writeFileAtomic(join(dir, 'manifest.json'), JSON.stringify({ sha256, envelope }));
    await fsyncDir(join(this.root, name));
  }

  /**
   * Reads an installed model and checks it against the hash it must have, so
   * nothing that changed on disk since it was verified is ever loaded.
   */
  async readVerified(name: string, version: number, sha256: string): Promise<Buffer> {
    let bytes: Buffer;
    try {
      bytes = await readFile(join(this.dir(name, version), 'model.onnx'));
    } catch {
      throw new StoreError('MISSING', `model file of ${name} version ${version} is missing from the store`);
    }
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (actual !== sha256) {
      await removeQuietly(this.dir(name, version));
      throw new StoreError('FILE_HASH', `model file of ${name} version ${version} on disk has sha256 ${actual}, not ${sha256}; removed`);
    }
    return bytes;
  }

  async remove(name: string, version: number): Promise<void> {
    await removeQuietly(this.dir(name, version));
  }

  /** Removes every version of `name` except those in `keep`. */
  async prune(name: string, keep: readonly number[]): Promise<number[]> {
    const removed: number[] = [];
    for (const v of await this.list()) {
      if (v.name !== name || keep.includes(v.version)) continue;
      await this.remove(name, v.version);
      removed.push(v.version);
    }
    return removed;
  }

  /** Fails with NO_SPACE unless `bytes` more (plus a margin) fit on the state filesystem. */
  async ensureSpace(bytes: number, already = 0): Promise<void> {
    const s = await statfs(this.stagingDir);
    const free = s.bavail * s.bsize;
    const need = bytes - already + Math.max(16 * 1024 * 1024, bytes * 0.05);
    if (free < need) {
      throw new StoreError('NO_SPACE', `not enough disk space in ${this.stagingDir}: the artifact needs ${mib(need)} MiB with margin, ${mib(free)} MiB are free`);
    }
  }
}

const mib = (n: number): string => (n / 1048576).toFixed(1);
