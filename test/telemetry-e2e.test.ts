import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { spawnAgent } from './helpers/child.js';
import { makeFleetKeys, writeTrust } from './helpers/fleet.js';
import { startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

let dir: string | undefined;
let broker: Mosquitto | undefined;
afterEach(async () => {
  await broker?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('telemetry e2e (integration check)', () => {
  it('SIGTERM: final inference point reaches the collector', async () => {
    broker = await startMosquitto();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-tel-e2e-'));
    await writeModelTree(join(dir, 'models'), 'mlp', 1, mlpModel());
    const collector = await connectAsync(broker.url, { protocolVersion: 5 });
    const points: any[] = [];
    collector.on('message', (_t, p) => points.push(...JSON.parse(p.toString()).points));
    await collector.subscribeAsync('edgefleet/devices/child/telemetry', { qos: 1 });
    const trust = join(dir, 'trust.json');
    await writeTrust(trust, makeFleetKeys());
    const agent = await spawnAgent(dir, { trust, models: { dir: join(dir, 'models'), settleMs: 0 }, mqtt: { url: broker.url }, telemetry: { health: { schedule: '* * * * * *' } } });
    const body = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 784], datatype: 'FP32', data: new Array(784).fill(0.5) }] });
    let ok = 0;
    for (let i = 0; i < 50; i++) { const r = await fetch(`${agent.url}/v2/models/mlp/infer`, { method: 'POST', body }); if (r.status === 200) ok++; await r.text(); }
    const bad = await fetch(`${agent.url}/v2/models/mlp/infer`, { method: 'POST', body: '{"inputs": 3}' }); await bad.text();
    await new Promise((r) => setTimeout(r, 1500));
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toEqual({ code: 0, signal: null });
    await new Promise((r) => setTimeout(r, 500));
    await collector.endAsync();
    console.log(JSON.stringify(points.filter((p) => p.kind === 'inference')), points.filter((p) => p.kind === 'health').length, JSON.stringify(points.find((p) => p.kind === 'health')));
    const inf = points.filter((p) => p.kind === 'inference');
    expect(inf.reduce((a, p) => a + p.count, 0)).toBe(ok + 1);
    expect(inf.reduce((a, p) => a + p.clientErrors, 0)).toBe(1);
    expect(points.some((p) => p.kind === 'health')).toBe(true);
    const seqs = points.map((p) => p.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  });
});
