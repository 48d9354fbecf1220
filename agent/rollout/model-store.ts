import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MODEL_NAME_RE } from '../../protocol/names.js';
import { fsyncDir, removeQuietly, writeFileAtomic } from '../store/fs-atomic.js';
import { NoSpaceError, freeBytes, isNoSpace, noSpaceAs } from '../store/no-space.js';
import { RolloutError } from './errors.js';

export interface StoredVersion {
  name: string;
  version: number;
  sha256: string;
}

export class StoreError extends RolloutError<'FILE_HASH' | 'MISSING'> {
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
 * `{stateDir}/staging/{sha256}.part`. A full filesystem is a NoSpaceError
 * (agent/store/no-space.ts) naming the file and the bytes needed.
 */
export class ModelStore {
  readonly root: string;
  readonly stagingDir: string;

  constructor(stateDir: string) {
    this.root = join(stateDir, 'models');
    this.stagingDir = join(stateDir, 'staging');
  }

  /** Creates the folders; a full filesystem does not stop the start (a pull fails with NoSpaceError later instead). */
  async init(): Promise<void> {
    for (const dir of [this.root, this.stagingDir]) {
      await mkdir(dir, { recursive: true }).catch((err: unknown) => {
        if (!isNoSpace(err)) throw err;
      });
    }
  }

  stagingFile(sha256: string): string {
    return join(this.stagingDir, `${sha256}.part`);
  }

  /** The artifacts (sha256) with a staging file. */
  async staged(): Promise<string[]> {
    const names = await readdir(this.stagingDir).catch(() => [] as string[]);
    return names.filter((n) => STAGING_NAME.test(n)).map((n) => n.slice(0, -'.part'.length));
  }

  /** Deletes an artifact's staging file (and the space it holds). */
  async discardStaging(sha256: string): Promise<void> {
    await removeQuietly(this.stagingFile(sha256));
  }

  /**
   * Removes what an interrupted install left: a version folder without its
   * manifest never counts (list() skips it) but holds the model's bytes.
   */
  async removeIncomplete(): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (!MODEL_NAME_RE.test(name)) continue;
      for (const v of await readdir(join(this.root, name)).catch(() => [] as string[])) {
        const dir = join(this.root, name, v);
        if (await stat(join(dir, 'manifest.json')).then(() => true, () => false)) continue;
        await removeQuietly(dir);
        removed.push(`${name}/${v}`);
      }
    }
    return removed;
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

  /**
   * Moves a verified staging file into place; the manifest is written last.
   * On a full filesystem the staging file goes back, so the next try needs
   * no download.
   */
  async install(name: string, version: number, sha256: string, envelope: unknown): Promise<void> {
    const dir = this.dir(name, version);
    const manifest = JSON.stringify({ sha256, envelope });
    await removeQuietly(dir);
    await noSpaceAs(dir, Buffer.byteLength(manifest), () => mkdir(dir, { recursive: true }));
    await rename(this.stagingFile(sha256), join(dir, 'model.onnx'));
    try {
      await fsyncDir(dir);
      await writeFileAtomic(join(dir, 'manifest.json'), manifest);
      await fsyncDir(join(this.root, name));
    } catch (err) {
      await rename(join(dir, 'model.onnx'), this.stagingFile(sha256)).catch(() => undefined);
      await removeQuietly(dir);
      throw err;
    }
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

  /**
   * Fails with a NoSpaceError unless the rest of an artifact of `size` bytes
   * (what its staging file does not hold yet) plus a margin for the
   * database and manifests fits on the state filesystem.
   */
  async ensureSpace(sha256: string, size: number): Promise<void> {
    const held = await stat(this.stagingFile(sha256)).then((s) => Math.min(size, s.blocks * 512), () => 0);
    // Of the nearest folder that exists: a first start on a full disk may not have made staging/.
    const free = freeBytes(this.stagingDir) ?? 0;
    const need = Math.ceil(size - held + Math.max(MIN_MARGIN, size * 0.05));
    if (free < need) {
      throw new NoSpaceError(this.stagingFile(sha256), need, { free, detail: `the artifact is ${size} bytes, ${held} are staged, and ${need - (size - held)} more are kept free for the agent's records` });
    }
  }
}

/** Room kept free beyond an artifact, for the database, the manifests and the logs. */
const MIN_MARGIN = 16 * 1024 * 1024;
const STAGING_NAME = /^[0-9a-f]{64}\.part$/;

