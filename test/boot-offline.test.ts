import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scaleModel, writeModelTree } from '../models/onnx/zoo.js';
import type { ReportedState } from '../protocol/reported.js';
import { waitFor } from './helpers/agent.js';
import { spawnAgent, type ChildAgent } from './helpers/child.js';
import { buildManifest, publishBlocks, signManifest } from './helpers/fleet.js';
import { startFleetHarness, type FleetHarness } from './helpers/fleet-harness.js';
import { mosquittoSkipReason } from './helpers/mosquitto.js';

/**
 * A board that boots without its broker serves at once (issue 12): the real
 * agent binary, restarted while Mosquitto is down, answers on its HTTP API
 * with the local model and the fleet model it served before, within seconds;
 * it joins the broker when that comes up (reports, takes a new desired
 * document) and keeps serving when the broker goes away again.
 *
 * The HTTP API answers /v2/health/ready only once agent.start() has returned,
 * which is also when bin.ts sends systemd READY=1: a start that waits on the
 * broker never gets there.
 */

const ROOT = 'edgefleet';
const DEVICE = 'pi-boot-offline';
/**
 * Time from spawning the agent to both models answering with the broker down:
 * at most this much more than the same boot with the broker up (so no wait on
 * the broker hides in it), and never more than SERVE_WITHIN_MS.
 */
const OFFLINE_EXTRA_MS = 2_500;
const SERVE_WITHIN_MS = 10_000;

const skip = mosquittoSkipReason();
let h: FleetHarness;
let dir: string;
let agent: ChildAgent | undefined;

const selfTest = (v: number) => ({ inputs: [{ name: 'x', datatype: 'FP32' as const, shape: [1, 2], data: [1, 2] }], outputs: [{ name: 'y', datatype: 'FP32' as const, shape: [1, 2], data: [v, 2 * v] }], atol: 1e-4, rtol: 1e-3 });

async function deploy(serial: number, version: number): Promise<void> {
  const bytes = scaleModel(version);
  const manifest = buildManifest('scale', version, bytes, { selfTest: selfTest(version) });
  await publishBlocks(h.fleet, ROOT, manifest, bytes);
  await h.deploy(DEVICE, serial, [{ name: 'scale', version, manifest: signManifest(manifest, [h.keys.models]) }]);
}

/** Asks `model` for x * factor; the version that answered, or the HTTP status when it was not 200. */
async function ask(url: string, model: string): Promise<string> {
  const res = await fetch(`${url}/v2/models/${model}/infer`, { method: 'POST', body: JSON.stringify({ inputs: [{ name: 'x', shape: [1, 2], datatype: 'FP32', data: [1, 2] }] }) }).catch(() => undefined);
  if (!res) return 'no answer';
  const json = (await res.json()) as { model_version?: string };
  return res.status === 200 ? `v${json.model_version}` : `HTTP ${res.status}`;
}

const latest = (): ReportedState | undefined => h.reports(DEVICE).at(-1);

/** The agent's subscriptions to its desired topic in the broker's log, from byte `since` on. */
function desiredSubscriptions(since: number): number {
  const log = readFileSync(h.broker.logFile as string).subarray(since).toString('utf8');
  return log.split('\n').filter((line) => line === `${DEVICE} 1 ${ROOT}/devices/${DEVICE}/desired`).length;
}

beforeAll(async () => {
  if (skip) return;
  h = await startFleetHarness({ root: ROOT, logTypes: ['subscribe'] });
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-boot-offline-'));
  await mkdir(join(dir, 'models'));
  await writeModelTree(join(dir, 'models'), 'local', 1, scaleModel(3));
}, 60_000);

afterAll(async () => {
  if (agent && agent.proc.exitCode === null && agent.proc.signalCode === null) {
    agent.proc.kill('SIGKILL');
    await agent.exited;
  }
  await h?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe.skipIf(skip)('booting without the broker', () => {
  it('serves local and fleet models at once, joins the broker when it comes, and keeps serving when it goes', async () => {
    const config = {
      deviceId: DEVICE,
      trust: h.trustFile,
      mqtt: { url: h.broker.url, topicRoot: ROOT },
      models: { dir: join(dir, 'models') },
      rollout: { healthWindowS: 0 },
    };
    // Given: the agent served fleet version 1 (from a signed desired document) and a local model.
    const onlineBootAt = Date.now();
    agent = await spawnAgent(dir, config);
    const onlineReadyMs = Date.now() - onlineBootAt;
    await deploy(1, 1);
    const first = await waitFor(() => latest()?.desired?.serial === 1 && latest()?.desired?.status === 'applied' && latest(), 20_000, 'serial 1 applied');
    expect(await ask(agent.url, 'scale')).toBe('v1');
    // A new file in models.dir loads once it has settled (models.settleMs).
    await waitFor(async () => (await ask(agent?.url ?? '', 'local')) === 'v1', 10_000, 'the local model');
    agent.proc.kill('SIGTERM');
    expect((await agent.exited).code).toBe(0);

    // The board reboots without its broker.
    await h.broker.halt();
    const bootAt = Date.now();
    agent = await spawnAgent(dir, config);
    const readyMs = Date.now() - bootAt;
    expect(await ask(agent.url, 'scale')).toBe('v1');
    expect(await ask(agent.url, 'local')).toBe('v1');
    const servingMs = Date.now() - bootAt;
    console.log(`broker down at boot: HTTP ready after ${readyMs} ms, both models answered after ${servingMs} ms (first boot, broker up: ready after ${onlineReadyMs} ms)`);
    expect(servingMs).toBeLessThan(Math.min(SERVE_WITHIN_MS, onlineReadyMs + OFFLINE_EXTRA_MS));
    expect(agent.output()).toContain('MQTT broker not reachable yet');

    // The broker comes up: the agent subscribes, reports what it serves and applies a new document.
    const mark = readFileSync(h.broker.logFile as string).length;
    const upAt = Date.now();
    await h.broker.start();
    const reported = await waitFor(
      () => {
        const s = latest();
        return s && s.agent.startedAt !== first.agent.startedAt && s.models.some((m) => m.name === 'scale' && m.version === 1 && m.state === 'serving') && s;
      },
      30_000,
      'the restarted agent to report scale version 1 serving',
    );
    console.log(`broker up: state reported after ${Date.now() - upAt} ms`);
    expect(reported.desired).toMatchObject({ serial: 1 });
    await waitFor(() => desiredSubscriptions(mark) > 0, 10_000, 'the agent to subscribe to its desired topic');
    await deploy(2, 2);
    await waitFor(() => latest()?.desired?.serial === 2 && latest()?.desired?.status === 'applied', 20_000, 'serial 2 applied');
    expect(await ask(agent.url, 'scale')).toBe('v2');

    // The broker goes away again: serving goes on.
    await h.broker.halt();
    for (let i = 0; i < 10; i++) {
      expect([await ask(agent.url, 'scale'), await ask(agent.url, 'local')]).toEqual(['v2', 'v1']);
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(agent.proc.exitCode).toBeNull();
    agent.proc.kill('SIGTERM');
    expect((await agent.exited).code).toBe(0);
    await h.broker.start();
  }, 120_000);
});
