/**
 * A board offline through several trust rotations catches up (docs/protocol.md
 * section 3, revision 2): the real agent in a child process, a real Mosquitto,
 * and the fleet side done by the CLI's own commands (keys, trust init, trust
 * rotate --publish, model publish, deploy, devices), run in-process.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Command } from '../fleet/command.js';
import { deploy } from '../fleet/commands/deploy.js';
import { devices, type DeviceRow } from '../fleet/commands/devices.js';
import { keysGenerate } from '../fleet/commands/keys-generate.js';
import { modelPublish } from '../fleet/commands/model-publish.js';
import { trustInit } from '../fleet/commands/trust-init.js';
import { trustRotate } from '../fleet/commands/trust-rotate.js';
import { scaleModel } from '../models/onnx/zoo.js';
import { parseEvent, parseReportedState, type DeviceEvent, type Envelope, type ReportedState } from '../protocol/index.js';
import { waitFor } from './helpers/agent.js';
import { spawnAgent, type ChildAgent } from './helpers/child.js';
import { connectFleet } from './helpers/fleet.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();

let broker: Mosquitto;
let fleet: MqttClient;
let dir: string;
const states = new Map<string, ReportedState>();
const events = new Map<string, DeviceEvent[]>();
/** Retained trust messages, by topic, as the broker holds them. */
const trustTopics = new Map<string, Buffer>();

/** Runs a fleet command in-process as `edgefleet` would; returns what it printed on stdout. */
async function cli(command: Command, ...args: string[]): Promise<string[]> {
  const out: string[] = [];
  await command.run(args, { out: (line) => out.push(line), note: () => undefined, stderr: { write: () => true }, cwd: dir });
  return out;
}
const key = (name: string): string => join(dir, 'keys', name);
const brokerArgs = (root: string): string[] => ['--broker', broker.url, '--topic-root', root];

/** Two rotations as an operator does them, each published: v2 and v3 get new root and rollout keys. */
async function rotateTwice(root: string, suffix: string): Promise<void> {
  await cli(trustRotate, '--current', join(dir, 'trust.json'), '--new-root', key('root2.pub'), '--new-rollout', key('rollout2.pub'),
    '--sign-old', key('root1.key'), '--sign-new', key('root2.key'), '--out', join(dir, `trust-v2${suffix}.json`), '--publish', ...brokerArgs(root));
  await cli(trustRotate, '--current', join(dir, `trust-v2${suffix}.json`), '--new-root', key('root3.pub'), '--new-rollout', key('rollout3.pub'),
    '--sign-old', key('root2.key'), '--sign-new', key('root3.key'), '--out', join(dir, `trust-v3${suffix}.json`), '--publish', ...brokerArgs(root));
}

/** "scale" version 1 published, and deployed to `device` signed by the rollout key only trust version 3 knows. */
async function deployScale(root: string, device: string, suffix: string): Promise<void> {
  const manifest = join(dir, `scale-1${suffix}.manifest.json`);
  await cli(modelPublish, join(dir, 'scale.onnx'), '--name', 'scale', '--version', '1', '--key', key('models.key'), '--no-self-test',
    '--out-manifest', manifest, '--wait-ms', '200', ...brokerArgs(root));
  await cli(deploy, '--device', device, 'scale:1=stable', '--manifests', manifest, '--key', key('rollout3.key'),
    '--trust', join(dir, `trust-v3${suffix}.document.json`), '--serial', '1', ...brokerArgs(root));
}

async function deviceRows(root: string): Promise<{ rows: DeviceRow[]; table: string[] }> {
  const rows = JSON.parse((await cli(devices, '--json', '--wait-ms', '300', ...brokerArgs(root))).join('\n')) as DeviceRow[];
  return { rows, table: (await cli(devices, '--wait-ms', '300', ...brokerArgs(root))).join('\n').split('\n') };
}

function agentConfig(device: string, root: string): Record<string, unknown> {
  return {
    deviceId: device,
    stateDir: join(dir, device),
    trust: join(dir, 'trust.json'),
    mqtt: { url: broker.url, topicRoot: root },
    rollout: { healthWindowS: 1, retryBaseMs: 50 },
  };
}

async function infer(url: string): Promise<{ status: number; version: string }> {
  const res = await fetch(`${url}/v2/models/scale/infer`, { method: 'POST', body: JSON.stringify({ inputs: [{ name: 'x', shape: [1, 1], datatype: 'FP32', data: [3] }] }) });
  const body = (await res.json()) as { model_version?: string };
  return { status: res.status, version: body.model_version ?? '' };
}

async function stopAgent(agent: ChildAgent | undefined): Promise<void> {
  if (!agent || agent.proc.exitCode !== null) return;
  agent.proc.kill('SIGTERM');
  await agent.exited;
}

/** Waits for `check` on the device's reported state; on a timeout says what was reported and what the agent logged. */
async function reported(device: string, agent: ChildAgent, what: string, check: (s: ReportedState) => boolean): Promise<ReportedState> {
  return waitFor(() => { const s = states.get(device); return s && check(s) ? s : undefined; }, 30_000, what).catch((err: unknown) => {
    throw new Error(`${String(err)}; last reported: ${JSON.stringify(states.get(device))}\n${agent.output().slice(-4000)}`);
  });
}

beforeAll(async () => {
  if (skip) return;
  broker = await startMosquitto();
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-catch-up-'));
  for (const name of ['root1', 'root2', 'root3', 'models', 'rollout1', 'rollout2', 'rollout3']) await cli(keysGenerate, '--out', join(dir, 'keys'), '--name', name);
  await cli(trustInit, '--root', key('root1.pub'), '--models', key('models.pub'), '--rollout', key('rollout1.pub'), '--out', join(dir, 'trust.json'));
  await writeFile(join(dir, 'scale.onnx'), scaleModel(1));
  fleet = await connectFleet(broker.url);
  fleet.on('message', (topic, payload, packet) => {
    const parts = topic.split('/');
    if (parts[1] === 'trust') {
      if (packet.retain) trustTopics.set(topic, payload);
      return;
    }
    const device = parts[2] ?? '';
    if (payload.length === 0) return;
    if (topic.endsWith('/state')) states.set(device, parseReportedState(payload));
    else if (topic.endsWith('/events')) events.set(device, [...(events.get(device) ?? []), parseEvent(payload)]);
  });
  await fleet.subscribeAsync(['+/devices/+/state', '+/devices/+/events'], { qos: 1 });
}, 60_000);

afterAll(async () => {
  await fleet?.endAsync();
  await broker?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe.skipIf(skip)('a board offline through two trust rotations', () => {
  it('walks {root}/trust/2 and /3 when restarted, and applies the rollout signed by the newest rollout key', async () => {
    const root = 'fleet-a';
    const device = 'pi-away';
    let agent: ChildAgent | undefined = await spawnAgent(dir, agentConfig(device, root));
    try {
      const first = await reported(device, agent, 'trust version 1 reported', (s) => s.trust?.version === 1);
      expect(first.trust).toEqual({ version: 1, expiresAt: expect.any(String), error: null });
      await stopAgent(agent);
      agent = undefined;

      // While the board is down: two rotations, and a rollout only trust version 3 can verify.
      await rotateTwice(root, '-a');
      await deployScale(root, device, '-a');
      // The CLI retained every version on its own topic, and the newest on {root}/trust.
      await fleet.subscribeAsync(`${root}/trust/#`, { qos: 1 });
      await waitFor(() => trustTopics.size === 3, 5_000, 'retained trust messages');
      const published = async (v: number): Promise<string> => JSON.stringify(JSON.parse(await readFile(join(dir, `trust-v${v}-a.json`), 'utf8')) as Envelope);
      expect(trustTopics.get(`${root}/trust/2`)?.toString()).toBe(await published(2));
      expect(trustTopics.get(`${root}/trust/3`)?.toString()).toBe(await published(3));
      expect(trustTopics.get(`${root}/trust`)?.toString()).toBe(await published(3));

      const mark = events.get(device)?.length ?? 0;
      agent = await spawnAgent(dir, agentConfig(device, root));
      const s = await reported(device, agent, 'serial 1 applied under trust version 3', (x) => x.trust?.version === 3 && x.desired?.serial === 1 && x.desired.status === 'applied');
      expect(s.trust?.error).toBeNull();
      expect(s.models).toMatchObject([{ name: 'scale', version: 1, state: 'serving', labels: ['stable'] }]);
      expect(await infer(agent.url)).toEqual({ status: 200, version: '1' });
      expect(JSON.parse(await readFile(join(dir, device, 'trust.json'), 'utf8'))).toMatchObject({ version: 3 });

      const since = (events.get(device) ?? []).slice(mark);
      expect(since.filter((e) => e.type.startsWith('trust.')).map((e) => `${e.type} ${e.detail}`)).toEqual([
        `trust.updated trust version 2 from ${root}/trust/2`,
        `trust.updated trust version 3 from ${root}/trust/3`,
      ]);
      // The document waited for the walk: it was never refused under the trust being left behind.
      expect(since.filter((e) => e.type === 'desired.rejected')).toEqual([]);

      const { rows, table } = await deviceRows(root);
      expect(rows.find((r) => r.device === device)?.trust).toEqual(s.trust);
      expect(table[0]).toMatch(/^DEVICE\s+ONLINE\s+GROUPS\s+DESIRED\s+FOLLOWS\s+TRUST\s+MODELS\s+LAST SEEN$/);
      expect(table[1]).toMatch(new RegExp(`^${device}\\s+yes\\s+-\\s+1 applied\\s+own\\s+v3\\s+scale:1 serving cpu\\s+\\d+ (s|min) ago$`));
    } finally {
      await stopAgent(agent);
    }
  }, 120_000);

  it('a tampered link stops the walk: its cause is in the reported state and in `devices`, until a good copy is published', async () => {
    const root = 'fleet-b';
    const device = 'pi-tampered';
    await rotateTwice(root, '-b');
    await deployScale(root, device, '-b');
    // Someone with write access replaces version 2 with a document its signatures do not cover.
    const good = await readFile(join(dir, 'trust-v2-b.json'), 'utf8');
    const envelope = JSON.parse(good) as Envelope;
    const doc = JSON.parse(Buffer.from(envelope.payload, 'base64').toString('utf8')) as { expiresAt: string };
    const tampered = { ...envelope, payload: Buffer.from(JSON.stringify({ ...doc, expiresAt: '2099-01-01T00:00:00Z' })).toString('base64') };
    await fleet.publishAsync(`${root}/trust/2`, JSON.stringify(tampered), { qos: 1, retain: true });

    // A board provisioned with version 1 starts after all that.
    const agent = await spawnAgent(dir, agentConfig(device, root));
    try {
      const s = await reported(device, agent, 'the trust problem reported', (x) => x.trust?.error != null && x.desired?.status === 'rejected');
      expect(s.trust?.version).toBe(1);
      expect(s.trust?.error).toMatch(new RegExp(`^${root}/trust/2: .*current root \\(trust v1\\)`));
      // Which is why the rollout is refused.
      expect(s.desired?.error).toMatch(/not trusted for rollout/);
      expect(events.get(device)?.find((e) => e.type === 'trust.rejected')?.detail).toBe(s.trust?.error);

      const { rows, table } = await deviceRows(root);
      expect(rows.find((r) => r.device === device)?.trust).toEqual(s.trust);
      expect(table[1]).toMatch(new RegExp(`^${device}\\s+yes\\s+-\\s+1 rejected\\s+own\\s+v1 error\\s+-\\s+\\d+ (s|min) ago$`));
      expect(table).toContain(`${device}: trust v1: ${s.trust?.error}`);

      // The good version 2 published again: the walk goes on to 3 and the rollout applies.
      await fleet.publishAsync(`${root}/trust/2`, JSON.stringify(JSON.parse(good)), { qos: 1, retain: true });
      const fixed = await reported(device, agent, 'serial 1 applied after the repair', (x) => x.trust?.version === 3 && x.desired?.status === 'applied');
      expect(fixed.trust?.error).toBeNull();
      expect(await infer(agent.url)).toEqual({ status: 200, version: '1' });
    } finally {
      await stopAgent(agent);
    }
  }, 120_000);
});
