import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MODEL_NAME_RE } from '../../protocol/names.js';
import { WARMUP_FILE } from './warmup-file.js';

const VERSION_DIR = /^[1-9][0-9]{0,15}$/;

export interface FileSignature {
  path: string;
  size: number;
  mtimeMs: number;
  /** The version's warmup.json beside the model, when there is one. */
  warmup?: { size: number; mtimeMs: number } | undefined;
}

/** The same model file, unchanged (the warm-up file aside: loading waits only for the model to settle). */
export const sameFile = (a: FileSignature | undefined, b: FileSignature | undefined): boolean =>
  a !== undefined && b !== undefined && a.path === b.path && a.size === b.size && a.mtimeMs === b.mtimeMs;

/** The same model file and the same warm-up file (or none): what a failed load is remembered by. */
export const sameFiles = (a: FileSignature | undefined, b: FileSignature | undefined): boolean =>
  sameFile(a, b) && a?.warmup?.size === b?.warmup?.size && a?.warmup?.mtimeMs === b?.warmup?.mtimeMs;

/**
 * Lists `{dir}/{name}/{version}/model.onnx` files, TensorFlow Serving's layout,
 * with the warmup.json beside each. Names that are not valid model names,
 * non-numeric version folders and hidden entries (temp files of an atomic
 * copy) are skipped.
 */
export async function scanRepository(dir: string): Promise<Map<string, Map<number, FileSignature>>> {
  const out = new Map<string, Map<number, FileSignature>>();
  for (const name of await listDirs(dir)) {
    if (!MODEL_NAME_RE.test(name)) continue;
    const versions = new Map<number, FileSignature>();
    for (const v of await listDirs(join(dir, name))) {
      if (!VERSION_DIR.test(v) || !Number.isSafeInteger(Number(v))) continue;
      const path = join(dir, name, v, 'model.onnx');
      try {
        const s = await stat(path);
        if (s.isFile()) versions.set(Number(v), { path, size: s.size, mtimeMs: s.mtimeMs, warmup: await statWarmup(join(dir, name, v, WARMUP_FILE)) });
      } catch {
        // No model.onnx (yet): not a candidate.
      }
    }
    if (versions.size > 0) out.set(name, versions);
  }
  return out;
}

async function statWarmup(path: string): Promise<FileSignature['warmup']> {
  try {
    const s = await stat(path);
    return { size: s.size, mtimeMs: s.mtimeMs };
  } catch {
    return undefined;
  }
}

async function listDirs(dir: string): Promise<string[]> {
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name);
  } catch {
    return [];
  }
}
