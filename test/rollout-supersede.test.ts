import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mlpModel, scaleModel } from '../models/onnx/zoo.js';
import type { Manifest } from '../protocol/manifest.js';
import type { ReportedState } from '../protocol/reported.js';
import { startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';
import { buildManifest, publishBlocks, signManifest } from './helpers/fleet.js';
import { startFleetHarness, type FleetHarness } from './helpers/fleet-harness.js';
import { mosquittoSkipReason } from './helpers/mosquitto.js';

/**
 * A newer desired document supersedes work in progress (issue 12), and a
 * document that fails to apply leaves what served before it serving: an
 * in-process agent against Mosquitto, with the broker logging every SUBSCRIBE
 * so the test sees which blocks the agent asked for.
 */

const ROOT = 'edgefleet';
const skip = mosquittoSkipReason();
let h: FleetHarness;

interface Release {
  manifest: Manifest;
  bytes: Uint8Array;
  envelope: ReturnType<typeof signManifest>;
}

function release(name: string, version: number, bytes: Uint8Array): Release {
  const manifest = buildManifest(name, version, bytes, {}, 1024);
  return { manifest, bytes, envelope: signManifest(manifest, [h.keys.models]) };
}

async function deploy(device: string, serial: number, models: { r: Release; labels?: string[] }[]): Promise<void> {
  await h.deploy(device, serial, models.map(({ r, labels }) => ({ name: r.manifest.name, version: r.manifest.version, labels, manifest: r.envelope })));
}

const desired = (device: string, serial: number, status: string): (() => false | ReportedState) => h.desired(device, serial, status);

/** The version that answered, or the HTTP status when it was not 200. */
async function ask(url: string, model: string, input: { shape: number[]; data: number[] }): Promise<string> {
  const res = await fetch(`${url}/v2/models/${model}/infer`, { method: 'POST', body: JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', ...input }] }) });
  const json = (await res.json()) as { model_version?: string };
  return res.status === 200 ? `v${json.model_version}` : `HTTP ${res.status}`;
}

const MLP = { inputs: 16, hidden: 64, classes: 4 };
const mlpInput = { shape: [1, MLP.inputs], data: new Array<number>(MLP.inputs).fill(0.5) };

function recordedBlocks(dir: string, sha256: string): number[] {
  const db = new Database(join(dir, 'state', 'agent.db'), { readonly: true, fileMustExist: true });
  try {
    return db.prepare<[string], { idx: number }>('SELECT idx FROM artifact_blocks WHERE sha256 = ? ORDER BY idx').all(sha256).map((r) => r.idx);
  } finally {
    db.close();
  }
}

/** Block indexes of `sha256` the device subscribed to, from byte `since` of the broker's log on. */
function blocksAskedFor(device: string, sha256: string, since: number): number[] {
  const prefix = `${ROOT}/artifacts/${sha256}/blocks/`;
  const out: number[] = [];
  for (const line of readFileSync(h.broker.logFile as string).subarray(since).toString('utf8').split('\n')) {
    const m = /^(\S+) \d (\S+)$/.exec(line);
    if (m?.[1] === device && m[2]?.startsWith(prefix)) out.push(Number(m[2].slice(prefix.length)));
  }
  return out;
}

beforeAll(async () => {
  if (skip) return;
  h = await startFleetHarness({ root: ROOT, logTypes: ['subscribe'] });
}, 60_000);

afterAll(async () => {
  await h?.stop();
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe.skipIf(skip)('a newer desired document supersedes work in progress', () => {
  it('a pull stalled on a missing block is abandoned at once for a rollback, its staging file deleted, and pulled whole when the version comes back', async () => {
    const device = 'pi-supersede';
    // Default block timeout (10 s) and give-up time (600 s): only superseding can end the stalled pull soon.
    const t: TestAgent = await startTestAgent({ deviceId: device, trust: h.trustFile, mqtt: { url: h.broker.url, topicRoot: ROOT }, rollout: { healthWindowS: 0 } });
    cleanups.push(() => t.close());

    // Given: version 1 serves.
    const v1 = release('mlp', 1, mlpModel({ ...MLP, seed: 1 }));
    await publishBlocks(h.fleet, ROOT, v1.manifest, v1.bytes);
    await deploy(device, 1, [{ r: v1 }]);
    await waitFor(desired(device, 1, 'applied'), 20_000, 'serial 1 applied');

    // Version 2 is published but for one block: its pull stalls with all the others in.
    const v2 = release('mlp', 2, mlpModel({ ...MLP, seed: 2 }));
    const total = v2.manifest.artifact.blockSha256.length;
    const missing = Math.floor(total / 2);
    expect(total).toBeGreaterThan(2);
    await publishBlocks(h.fleet, ROOT, v2.manifest, v2.bytes, (i, block) => (i === missing ? Buffer.alloc(0) : block));
    await deploy(device, 2, [{ r: v2 }]);
    const stalled = (): boolean => {
      const m = h.states.get(device)?.models.find((x) => x.version === 2);
      return m?.state === 'downloading' && m.progress === (total - 1) / total;
    };
    await waitFor(stalled, 20_000, `version 2 downloading with ${total - 1} of ${total} blocks`);
    expect(await ask(t.url, 'mlp', mlpInput)).toBe('v1');

    // The rollback: serial 3 lists version 1 again.
    const sentAt = Date.now();
    await deploy(device, 3, [{ r: v1 }]);
    const applied = await waitFor(desired(device, 3, 'applied'), 5_000, 'serial 3 applied within seconds of the stalled pull');
    const supersededMs = Date.now() - sentAt;
    console.log(`stalled pull superseded: serial 3 applied ${supersededMs} ms after it was published (block timeout 10 s, give-up 600 s)`);
    expect(applied.models.map((m) => [m.name, m.version, m.state])).toEqual([['mlp', 1, 'serving']]);
    expect(h.events.filter((e) => e.device === device && e.type === 'superseded')).toEqual([
      expect.objectContaining({ model: 'mlp', version: 2, detail: expect.stringMatching(/^download abandoned: serial 3 no longer lists this version/) }),
    ]);
    expect(h.events.some((e) => e.device === device && e.type === 'verify.failed')).toBe(false);
    expect(await ask(t.url, 'mlp', mlpInput)).toBe('v1');
    // The abandoned pull holds no space: its staging file and its recorded blocks are gone.
    const part = join(t.dir, 'state', 'staging', `${v2.manifest.artifact.sha256}.part`);
    await waitFor(() => !existsSync(part) && recordedBlocks(t.dir, v2.manifest.artifact.sha256).length === 0, 5_000, 'staging file and block rows of version 2 deleted');

    // Back to version 2, now complete: it is pulled whole and serves.
    const mark = readFileSync(h.broker.logFile as string).length;
    await publishBlocks(h.fleet, ROOT, v2.manifest, v2.bytes);
    await deploy(device, 4, [{ r: v2 }]);
    await waitFor(desired(device, 4, 'applied'), 20_000, 'serial 4 applied');
    expect(blocksAskedFor(device, v2.manifest.artifact.sha256, mark).sort((a, b) => a - b)).toEqual([...Array(total).keys()]);
    expect(await ask(t.url, 'mlp', mlpInput)).toBe('v2');
  }, 60_000);

  it('a superseding document that lists the same artifact keeps the abandoned pull\'s progress: only the missing block is asked for', async () => {
    const device = 'pi-same-artifact';
    const t: TestAgent = await startTestAgent({ deviceId: device, trust: h.trustFile, mqtt: { url: h.broker.url, topicRoot: ROOT }, rollout: { healthWindowS: 0 } });
    cleanups.push(() => t.close());
    const v1 = release('mlp', 1, mlpModel({ ...MLP, seed: 1 }));
    await publishBlocks(h.fleet, ROOT, v1.manifest, v1.bytes);
    await deploy(device, 1, [{ r: v1 }]);
    await waitFor(desired(device, 1, 'applied'), 20_000, 'serial 1 applied');

    // Version 2 stalls on one missing block.
    const bytes = mlpModel({ ...MLP, seed: 4 });
    const v2 = release('mlp', 2, bytes);
    const sha = v2.manifest.artifact.sha256;
    const total = v2.manifest.artifact.blockSha256.length;
    const missing = Math.floor(total / 2);
    await publishBlocks(h.fleet, ROOT, v2.manifest, v2.bytes, (i, block) => (i === missing ? Buffer.alloc(0) : block));
    await deploy(device, 2, [{ r: v2 }]);
    await waitFor(() => h.states.get(device)?.models.find((m) => m.version === 2 && m.state === 'downloading' && m.progress === (total - 1) / total), 20_000, 'version 2 stalled');

    // Serial 3 lists the same artifact as version 3: the pull of version 2 is abandoned, its staging file is not.
    const v3 = release('mlp', 3, bytes);
    expect(v3.manifest.artifact.sha256).toBe(sha);
    const mark = readFileSync(h.broker.logFile as string).length;
    await deploy(device, 3, [{ r: v3 }]);
    await waitFor(() => h.events.some((e) => e.device === device && e.type === 'superseded' && e.version === 2), 5_000, 'the pull of version 2 superseded');
    await waitFor(() => h.states.get(device)?.models.find((m) => m.version === 3 && m.state === 'downloading'), 5_000, 'version 3 downloading');
    await new Promise((r) => setTimeout(r, 300)); // a clean-up that would wrongly delete it has run by now
    const part = join(t.dir, 'state', 'staging', `${sha}.part`);
    expect(existsSync(part)).toBe(true);
    expect(recordedBlocks(t.dir, sha)).toEqual([...Array(total).keys()].filter((i) => i !== missing));

    // The missing block comes: version 3 completes from the kept blocks.
    await publishBlocks(h.fleet, ROOT, v3.manifest, v3.bytes);
    await waitFor(desired(device, 3, 'applied'), 20_000, 'serial 3 applied');
    expect([...new Set(blocksAskedFor(device, sha, mark))]).toEqual([missing]);
    expect(await ask(t.url, 'mlp', mlpInput)).toBe('v3');
    expect(existsSync(part)).toBe(false);
  }, 60_000);

  it('a superseding document drops the staging file of an earlier failed pull at once, while a pull it still lists goes on', async () => {
    const device = 'pi-drop-failed';
    // One try per version, and a stall of 1 s fails a pull: version "a" 1 fails with its staging file kept (retryable).
    const t: TestAgent = await startTestAgent({ deviceId: device, trust: h.trustFile, mqtt: { url: h.broker.url, topicRoot: ROOT }, rollout: { healthWindowS: 0, maxAttempts: 1, blockTimeoutMs: 200, giveUpAfterS: 1 } });
    cleanups.push(() => t.close());
    const a = release('a', 1, mlpModel({ ...MLP, seed: 5 }));
    const b = release('b', 1, mlpModel({ ...MLP, hidden: 1024, seed: 6 }));
    const shaA = a.manifest.artifact.sha256;
    await publishBlocks(h.fleet, ROOT, a.manifest, a.bytes, (i, block) => (i === 1 ? Buffer.alloc(0) : block));
    // The blocks of "b" come one every 200 ms, so its pull is still going on when serial 2 arrives.
    const totalB = b.manifest.artifact.blockSha256.length;
    let hurry = false;
    const trickle = (async () => {
      for (let i = 0; i < totalB; i++) {
        const off = i * b.manifest.artifact.blockSize;
        await h.fleet.publishAsync(`${ROOT}/artifacts/${b.manifest.artifact.sha256}/blocks/${i}`, Buffer.from(b.bytes.subarray(off, off + b.manifest.artifact.blockSize)), { qos: 1, retain: true });
        if (!hurry) await new Promise((r) => setTimeout(r, 200));
      }
    })();
    await deploy(device, 1, [{ r: a }, { r: b }]);
    await waitFor(() => h.states.get(device)?.models.find((m) => m.name === 'b' && m.state === 'downloading' && (m.progress ?? 0) > 0), 20_000, 'the pull of "b" under way after "a" failed');
    const partA = join(t.dir, 'state', 'staging', `${shaA}.part`);
    expect(existsSync(partA)).toBe(true);
    expect(recordedBlocks(t.dir, shaA).length).toBeGreaterThan(0);

    await deploy(device, 2, [{ r: b }]);
    await waitFor(() => !existsSync(partA) && recordedBlocks(t.dir, shaA).length === 0, 2_000, 'the staging file and block rows of "a" deleted');
    expect(h.states.get(device)?.models.find((m) => m.name === 'b')?.progress ?? 1).toBeLessThan(1);
    expect(h.events.some((e) => e.device === device && e.type === 'superseded')).toBe(false);
    hurry = true;
    await trickle;
    await waitFor(desired(device, 2, 'applied'), 20_000, 'serial 2 applied');
  }, 60_000);

  it('a health window in progress ends when a newer document rolls back: the old version serves again at once', async () => {
    const device = 'pi-window';
    const t: TestAgent = await startTestAgent({ deviceId: device, trust: h.trustFile, mqtt: { url: h.broker.url, topicRoot: ROOT }, rollout: { healthWindowS: 20 } });
    cleanups.push(() => t.close());
    const input = { shape: [1, 2], data: [1, 2] };
    const v1 = release('scale', 1, scaleModel(1));
    const v2 = release('scale', 2, scaleModel(2));
    await publishBlocks(h.fleet, ROOT, v1.manifest, v1.bytes);
    await publishBlocks(h.fleet, ROOT, v2.manifest, v2.bytes);
    await deploy(device, 1, [{ r: v1 }]);
    await waitFor(desired(device, 1, 'applied'), 20_000, 'serial 1 applied');
    await deploy(device, 2, [{ r: v2 }]);
    await waitFor(async () => (await ask(t.url, 'scale', input)) === 'v2', 20_000, 'version 2 switched in, its 20 s health window running');

    const sentAt = Date.now();
    await deploy(device, 3, [{ r: v1 }]);
    await waitFor(async () => (await ask(t.url, 'scale', input)) === 'v1', 5_000, 'version 1 serving again within seconds');
    console.log(`health window superseded: version 1 served again ${Date.now() - sentAt} ms after serial 3 was published (window 20 s)`);
    expect(h.events.some((e) => e.device === device && e.type === 'rolled_back')).toBe(false);
  }, 60_000);

  it('a document that cannot be applied leaves every version that served before it serving, and reports failed', async () => {
    const device = 'pi-keep-serving';
    const t: TestAgent = await startTestAgent({
      deviceId: device,
      trust: h.trustFile,
      mqtt: { url: h.broker.url, topicRoot: ROOT },
      rollout: { healthWindowS: 0, blockTimeoutMs: 200, giveUpAfterS: 1, maxAttempts: 2, retryBaseMs: 50 },
    });
    cleanups.push(() => t.close());
    const scaleInput = { shape: [1, 2], data: [1, 2] };

    // Given: scale version 1 serves, labelled stable.
    const scale = release('scale', 1, scaleModel(1));
    await publishBlocks(h.fleet, ROOT, scale.manifest, scale.bytes);
    await deploy(device, 1, [{ r: scale, labels: ['stable'] }]);
    await waitFor(desired(device, 1, 'applied'), 20_000, 'serial 1 applied');

    // Serial 2 replaces it with another model whose artifact never comes.
    const other = release('other', 1, mlpModel({ ...MLP, seed: 3 }));
    const answers = new Map<string, number>();
    let polling = true;
    const poll = (async () => {
      while (polling) {
        const a = await ask(t.url, 'scale', scaleInput);
        const label = (await fetch(`${t.url}/v1/models/scale/labels/stable`)).status;
        const key = `${a}, label ${label}`;
        answers.set(key, (answers.get(key) ?? 0) + 1);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    await deploy(device, 2, [{ r: other }]);
    const failed = await waitFor(desired(device, 2, 'failed'), 20_000, 'serial 2 reported failed');
    await new Promise((r) => setTimeout(r, 500)); // anything that would follow the failure
    polling = false;
    await poll;

    expect(failed.desired?.error).toMatch(/artifact block 0 of \d+ never arrived/);
    expect(failed.models.map((m) => [m.name, m.version, m.state])).toEqual([
      ['other', 1, 'failed'],
      ['scale', 1, 'serving'],
    ]);
    expect([...answers.keys()]).toEqual(['v1, label 200']);
    expect(answers.get('v1, label 200')).toBeGreaterThan(10);
    expect(h.events.some((e) => e.device === device && e.type === 'unloaded')).toBe(false);
    expect(t.agent.registry.servables().map((s) => `${s.name}@${s.version}`)).toEqual(['scale@1']);
  }, 60_000);
});
