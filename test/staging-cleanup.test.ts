import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mlpModel } from '../models/onnx/zoo.js';
import type { Manifest } from '../protocol/manifest.js';
import { startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';
import { buildManifest, publishBlocks, signManifest } from './helpers/fleet.js';
import { startFleetHarness, type FleetHarness } from './helpers/fleet-harness.js';
import { mosquittoSkipReason } from './helpers/mosquitto.js';
import { mountTmpfs, type Tmpfs } from './helpers/tmpfs.js';

/**
 * Staging files (`staging/{sha256}.part`) as the rollout leaves them: an
 * in-process agent against Mosquitto. A pull that fails for good leaves
 * nothing; at start-up only the document in force keeps its pulls; a pull
 * superseded by a newer document that no longer lists it goes at once, and a
 * full disk then fails the next document until there is room.
 */

const ROOT = 'edgefleet';
const skip = mosquittoSkipReason();
let h: FleetHarness;
const cleanups: (() => Promise<void>)[] = [];

interface Release {
  manifest: Manifest;
  bytes: Uint8Array;
  envelope: ReturnType<typeof signManifest>;
}

function release(version: number, hidden = 64): Release {
  const bytes = mlpModel({ inputs: 16, hidden, classes: 4, seed: version });
  const manifest = buildManifest('mlp', version, bytes, {}, 1024);
  return { manifest, bytes, envelope: signManifest(manifest, [h.keys.models]) };
}

async function deploy(device: string, serial: number, ...releases: Release[]): Promise<void> {
  await h.deploy(device, serial, releases.map((r) => ({ name: 'mlp', version: r.manifest.version, manifest: r.envelope })));
}

const desired = (device: string, serial: number, status: string): (() => unknown) => h.desired(device, serial, status);

function progressRows(stateDir: string): string[] {
  const db = new Database(join(stateDir, 'agent.db'), { readonly: true, fileMustExist: true });
  try {
    return db.prepare<[], { sha256: string }>('SELECT DISTINCT sha256 FROM artifact_blocks ORDER BY sha256').all().map((r) => r.sha256);
  } finally {
    db.close();
  }
}

const staged = async (stateDir: string): Promise<string[]> => (await readdir(join(stateDir, 'staging'))).sort();

async function agentOn(device: string, stateDir: string): Promise<TestAgent> {
  const t = await startTestAgent({ deviceId: device, stateDir, trust: h.trustFile, mqtt: { url: h.broker.url, topicRoot: ROOT }, rollout: { healthWindowS: 0, retryBaseMs: 100, retryMaxMs: 500, blockTimeoutMs: 500, giveUpAfterS: 600 } });
  cleanups.push(() => t.agent.stop());
  return t;
}

beforeAll(async () => {
  if (skip) return;
  h = await startFleetHarness({ root: ROOT });
}, 60_000);

afterAll(async () => {
  await h?.stop();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe.skipIf(skip)('staging files the rollout leaves', () => {
  it('a pull that fails for good leaves neither its staging file nor its progress', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'edgefleet-staging-'));
    cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
    const t = await agentOn('pi-tampered', stateDir);
    const r = release(1);
    // Every other block altered: some land in the staging file before the bad ones fail their hash for good.
    await publishBlocks(h.fleet, ROOT, r.manifest, r.bytes, (i, block) => (i % 2 === 1 ? Buffer.alloc(block.length, 0xee) : block));
    await deploy('pi-tampered', 1, r);
    await waitFor(desired('pi-tampered', 1, 'rejected'), 30_000, 'serial 1 rejected for a block that does not match');
    expect(await staged(stateDir)).toEqual([]);
    expect(progressRows(stateDir)).toEqual([]);
    expect(t.agent.registry.servables()).toEqual([]);
  }, 60_000);

  it('at start-up deletes what the document in force does not list, and keeps its own pull to resume', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'edgefleet-staging-'));
    cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
    const device = 'pi-startup';
    let t = await agentOn(device, stateDir);
    const v1 = release(1);
    const v2 = release(2);
    await publishBlocks(h.fleet, ROOT, v1.manifest, v1.bytes);
    // Version 2 stalls on a missing block: its pull is in progress when the agent stops.
    const missing = 3;
    await publishBlocks(h.fleet, ROOT, v2.manifest, v2.bytes, (i, block) => (i === missing ? Buffer.alloc(0) : block));
    await deploy(device, 1, v1, v2);
    const total = v2.manifest.artifact.blockSha256.length;
    await waitFor(() => h.states.get(device)?.models.find((m) => m.version === 2 && m.progress === (total - 1) / total), 20_000, 'version 2 stalled');
    await t.agent.stop();
    cleanups.pop();

    // Left behind by earlier agents: an abandoned pull with progress, progress alone, an interrupted install.
    const abandoned = 'a'.repeat(64);
    await writeFile(join(stateDir, 'staging', `${abandoned}.part`), Buffer.alloc(4096, 1));
    const db = new Database(join(stateDir, 'agent.db'));
    for (const sha of [abandoned, 'b'.repeat(64)]) db.prepare('INSERT INTO artifact_blocks (sha256, idx) VALUES (?, 0)').run(sha);
    db.close();
    await mkdir(join(stateDir, 'models', 'mlp', '9'), { recursive: true });
    await writeFile(join(stateDir, 'models', 'mlp', '9', 'model.onnx'), 'no manifest: interrupted');

    t = await agentOn(device, stateDir);
    const sha2 = v2.manifest.artifact.sha256;
    expect(await staged(stateDir)).toEqual([`${sha2}.part`]);
    expect(progressRows(stateDir)).toEqual(expect.arrayContaining([sha2]));
    expect(progressRows(stateDir)).not.toEqual(expect.arrayContaining([abandoned]));
    expect(progressRows(stateDir)).not.toEqual(expect.arrayContaining(['b'.repeat(64)]));
    expect(existsSync(join(stateDir, 'models', 'mlp', '9'))).toBe(false);
    // The kept pull resumes once the block is there.
    await publishBlocks(h.fleet, ROOT, v2.manifest, v2.bytes);
    await waitFor(desired(device, 1, 'applied'), 20_000, 'serial 1 applied');
    expect(await staged(stateDir)).toEqual([]);
  }, 60_000);
});

const mounted = skip ? { skip } : await mountTmpfs(40 * 1024 * 1024);
const noTmpfs = 'skip' in mounted ? mounted.skip : false;
if (noTmpfs && !skip) console.warn(`superseded-staging test skipped: ${noTmpfs}`);

describe.skipIf(noTmpfs)('a superseded pull', () => {
  afterAll(async () => {
    if (!noTmpfs) await (mounted as Tmpfs).unmount();
  });

  it('is deleted as soon as it is superseded; a full disk then fails the next document until there is room', async () => {
    const fs = mounted as Tmpfs;
    const stateDir = join(fs.dir, 'state');
    const device = 'pi-superseded';
    await agentOn(device, stateDir);
    const v1 = release(1);
    const v2 = release(2, 1024); // about 70 KB in 1 KiB blocks
    const v3 = release(3);
    await publishBlocks(h.fleet, ROOT, v1.manifest, v1.bytes);
    await publishBlocks(h.fleet, ROOT, v3.manifest, v3.bytes);
    await publishBlocks(h.fleet, ROOT, v2.manifest, v2.bytes, (i, block) => (i === 5 ? Buffer.alloc(0) : block));
    await deploy(device, 1, v1);
    await waitFor(desired(device, 1, 'applied'), 20_000, 'serial 1 applied');
    await deploy(device, 2, v2);
    const total = v2.manifest.artifact.blockSha256.length;
    await waitFor(() => h.states.get(device)?.models.find((m) => m.version === 2 && m.progress === (total - 1) / total), 20_000, 'version 2 stalled');
    await deploy(device, 3, v1);
    await waitFor(desired(device, 3, 'applied'), 20_000, 'serial 3 applied');
    const sha2 = v2.manifest.artifact.sha256;
    await waitFor(async () => !(await staged(stateDir)).includes(`${sha2}.part`), 10_000, 'the superseded staging file deleted');
    expect(progressRows(stateDir)).not.toContain(sha2);

    fs.fill();
    await deploy(device, 4, v3);
    const failed = await waitFor(h.desired(device, 4, 'failed'), 20_000, 'serial 4 failed for lack of space');
    expect(failed.desired?.error).toMatch(/^no space left on /);
    await fs.free();
    await waitFor(desired(device, 4, 'applied'), 30_000, 'serial 4 applied once there is room');
    expect(await staged(stateDir)).toEqual([]);
  }, 60_000);
});
