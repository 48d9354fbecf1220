/**
 * Signed manifest files as `edgefleet model publish` writes them. Read here
 * without checking signatures: the fleet tools only need the name, version
 * and artifact, and every device verifies the envelope itself (pass --trust
 * to a command to have it checked before anything is published).
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Envelope, Manifest } from '../protocol/index.js';
import { PAYLOAD_TYPES, envelopeSchema, manifestSchema, openEnvelope, parsePayload, validate } from '../protocol/index.js';
import { FailureError, errorMessage } from './errors.js';
import { readJsonInput } from './files.js';

export interface ManifestFile {
  path: string;
  envelope: Envelope;
  manifest: Manifest;
}

export const MANIFEST_SUFFIX = '.manifest.json';

export async function readManifestFile(path: string): Promise<ManifestFile> {
  const json = await readJsonInput(path, 'manifest file');
  try {
    const envelope = validate(envelopeSchema, json, 'DSSE envelope');
    const opened = openEnvelope(envelope, PAYLOAD_TYPES.model);
    return { path, envelope, manifest: parsePayload(manifestSchema, opened.payload, 'model manifest') };
  } catch (err) {
    throw new FailureError(`${path} is not a signed model manifest: ${errorMessage(err)}`);
  }
}

export const manifestKey = (name: string, version: number): string => `${name}:${version}`;

/** Manifests from files and directories (every `*.manifest.json` in them), keyed by name:version. */
export async function collectManifests(paths: readonly string[]): Promise<Map<string, ManifestFile>> {
  const found = new Map<string, ManifestFile>();
  for (const file of await expand(paths)) {
    const m = await readManifestFile(file);
    const key = manifestKey(m.manifest.name, m.manifest.version);
    const other = found.get(key);
    if (other !== undefined && JSON.stringify(other.envelope) !== JSON.stringify(m.envelope)) {
      throw new FailureError(`${other.path} and ${file} are different manifests for ${key}; pass only one`);
    }
    found.set(key, m);
  }
  return found;
}

async function expand(paths: readonly string[]): Promise<string[]> {
  const files: string[] = [];
  for (const path of paths) {
    let isDir: boolean;
    try {
      isDir = (await stat(path)).isDirectory();
    } catch {
      throw new FailureError(`cannot read manifests from ${path}: no such file or directory`);
    }
    if (!isDir) {
      files.push(path);
      continue;
    }
    const names = (await readdir(path)).filter((n) => n.endsWith(MANIFEST_SUFFIX)).sort();
    files.push(...names.map((n) => join(path, n)));
  }
  return files;
}
