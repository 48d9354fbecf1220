import { spawn } from 'node:child_process';
import { readdir, readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { StateDirLock } from '../agent/store/state-lock.js';
import { makeFleetKeys, writeTrust } from './helpers/fleet.js';
import { REPO, freePort, spawnAgent, type ChildAgent } from './helpers/child.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
let dir: string;
const children: ChildAgent[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('StateDirLock', () => {
  it('refuses a second holder in the same process, naming the owner, and frees the directory on stop', async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-lock-'));
    const first = new StateDirLock(dir);
    await first.start();
    const second = new StateDirLock(dir);
    await expect(second.start()).rejects.toThrow(`state directory ${dir} is in use by another edgefleet-agent (pid ${process.pid}, since `);
    await first.stop();
    await second.start();
    await second.stop();
  });
});

/** Runs a second agent to its exit; it must not get as far as serving. */
async function runToExit(configFile: string): Promise<{ code: number | null; output: string }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'agent', 'bin.ts'), '--config', configFile], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  return { code, output };
}

describe.skipIf(skip)(`one agent per state directory, as real processes${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto({ logTypes: ['notice'] });
  });
  afterAll(async () => {
    await broker?.stop();
  });

  it('refuses a second agent on the same state directory before it touches the broker or the files, and starts once the first is killed', async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-lock-'));
    await writeModelTree(join(dir, 'models'), 'mlp', 1, mlpModel());
    await writeTrust(join(dir, 'trust.json'), makeFleetKeys());
    const shared = { deviceId: 'lock-pi', models: { dir: join(dir, 'models'), settleMs: 0 }, mqtt: { url: broker.url }, trust: join(dir, 'trust.json') };
    const first = await spawnAgent(dir, shared);
    children.push(first);
    const stateBefore = (await readdir(join(dir, 'state'))).sort();
    const connectsBefore = (await readFile(broker.logFile as string, 'utf8')).split('New client connected').length;

    const secondConfig = join(dir, 'second.json');
    await writeFile(secondConfig, JSON.stringify({ ...shared, stateDir: join(dir, 'state'), http: { port: await freePort() }, runtime: { executionProviders: ['cpu'] } }));
    const second = await runToExit(secondConfig);
    expect(second.code).toBe(2);
    expect(second.output).toContain(`state directory ${join(dir, 'state')} is in use by another edgefleet-agent (pid ${first.proc.pid}`);

    // The first agent still serves, keeps its MQTT session and its files.
    const res = await fetch(`${first.url}/v2/models/mlp/ready`);
    expect(res.status).toBe(200);
    expect((await readFile(broker.logFile as string, 'utf8')).split('New client connected').length).toBe(connectsBefore);
    expect((await readdir(join(dir, 'state'))).sort()).toEqual(stateBefore);

    // kill -9 leaves no stale lock: the kernel drops it with the process.
    first.proc.kill('SIGKILL');
    await first.exited;
    const third = await spawnAgent(dir, shared);
    children.push(third);
    expect((await fetch(`${third.url}/v2/models/mlp/ready`)).status).toBe(200);
  });
});
