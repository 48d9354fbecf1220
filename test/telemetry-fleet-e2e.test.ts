import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Collector } from '../fleet/collector/collector.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { spawnAgent, type ChildAgent } from './helpers/child.js';
import { waitFor } from './helpers/agent.js';
import { makeFleetKeys, writeTrust } from './helpers/fleet.js';
import { startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

/**
 * The whole telemetry path with real parts: an agent process recording real
 * requests, Mosquitto, and the collector storing into SQLite. The broker goes
 * away for a while and the agent is killed with -9 while points wait in its
 * outbox; afterwards every seq the agent ever assigned is stored exactly once.
 */
let broker: Mosquitto;
let dir: string;
let store: SqliteStore;
let collector: Collector;

beforeAll(async () => {
  broker = await startMosquitto();
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-fleet-e2e-'));
  store = new SqliteStore(join(dir, 'fleet.db'));
  await store.init();
  collector = new Collector({
    broker: { url: broker.url, topicRoot: 'edgefleet', tls: {} },
    store,
    clientId: 'collector-e2e',
    shareGroup: 'e2e',
    sessionExpiryS: 600,
    retentionMs: null,
    log: pino({ level: 'silent' }),
  });
  await collector.start();
}, 60_000);

afterAll(async () => {
  await collector?.stop();
  await store?.close();
  await broker?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function predictFor(agent: ChildAgent, ms: number): Promise<number> {
  const body = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 784], datatype: 'FP32', data: new Array(784).fill(0.25) }] });
  let ok = 0;
  for (const until = Date.now() + ms; Date.now() < until; ) {
    const res = await fetch(`${agent.url}/v2/models/mlp/infer`, { method: 'POST', body });
    await res.text();
    if (res.status === 200) ok++;
  }
  return ok;
}

/** The seq the agent will hand out next, read from its own database. */
function agentNextSeq(): number {
  const db = new Database(join(dir, 'state', 'agent.db'), { readonly: true });
  try {
    return (db.prepare('SELECT next_seq AS n FROM telemetry_state').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

function storedSeqs(): number[] {
  const db = new Database(join(dir, 'fleet.db'), { readonly: true });
  try {
    return (db.prepare("SELECT seq FROM fleet_points WHERE device = 'child' ORDER BY seq").all() as { seq: number }[]).map((r) => r.seq);
  } finally {
    db.close();
  }
}

describe('telemetry from agent to collector', () => {
  it('survives a broker outage and kill -9 of the agent with a full outbox: every point stored exactly once', async () => {
    await writeModelTree(join(dir, 'models'), 'mlp', 1, mlpModel());
    const trust = join(dir, 'trust.json');
    await writeTrust(trust, makeFleetKeys());
    const config = {
      trust,
      models: { dir: join(dir, 'models'), settleMs: 0 },
      mqtt: { url: broker.url },
      telemetry: { intervalS: 1, health: { schedule: '* * * * * *' }, upload: { periodMs: 500, debounceMs: 50 } },
    };
    let agent = await spawnAgent(dir, config);
    expect(await predictFor(agent, 1500)).toBeGreaterThan(0);

    // The broker goes away; the agent keeps serving and buffering, then dies hard.
    const outage = broker.restart({ downMs: 5000 });
    await new Promise((r) => setTimeout(r, 300));
    expect(await predictFor(agent, 2500)).toBeGreaterThan(0);
    agent.proc.kill('SIGKILL');
    await agent.exited;
    const assignedBeforeKill = agentNextSeq() - 1;
    await outage;
    // Mosquitto 2 restores the collector's session but not its shared
    // subscriptions; what is published before the collector subscribes again
    // has no subscriber (docs/operator-guide.md). Wait for it, as operators must.
    await waitFor(() => collector.stats.subscribes >= 2, 15_000, 'collector subscribed again');

    // Back up: the restarted agent uploads what the dead one buffered.
    agent = await spawnAgent(dir, config);
    try {
      await predictFor(agent, 1000);
      await new Promise((r) => setTimeout(r, 1500));
      agent.proc.kill('SIGTERM');
      expect((await agent.exited).code).toBe(0);
      const assigned = agentNextSeq() - 1;
      expect(assigned).toBeGreaterThan(assignedBeforeKill);
      const seqs = await waitFor(() => {
        const s = storedSeqs();
        return s.length === assigned && s;
      }, 20_000, `all ${assigned} points stored`).catch(() => storedSeqs());
      // No gaps, no duplicates: exactly 1..assigned.
      expect(seqs).toEqual(Array.from({ length: assigned }, (_, i) => i + 1));
      expect(collector.stats.points).toBeGreaterThanOrEqual(assigned);
    } finally {
      if (agent.proc.exitCode === null) agent.proc.kill('SIGKILL');
    }
  }, 90_000);
});
