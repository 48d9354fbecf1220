/**
 * The benchmark's device simulator (bench/fleet-sim.ts) against a real
 * Mosquitto and a real collector: every message it sends passes the
 * protocol's own parsers, seqs are strictly increasing per device, N devices
 * share K connections (the broker's log shows K + 1 clients, the extra one
 * listening for acks), and the collector stores and acknowledges every batch.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetSim } from '../bench/fleet-sim.js';
import { Collector } from '../fleet/collector/collector.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import { parseEvent, parseReportedState, parseStatus, parseTelemetryBatch, parseTopic } from '../protocol/index.js';
import { mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';
import type { Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
const DEVICES = 300;
const CONNECTIONS = 3;
const ROOT = 'edgefleet';

describe.skipIf(skip !== false)('fleet simulator', () => {
  let broker: Mosquitto;
  let dir: string;
  let store: SqliteStore;
  let collector: Collector;
  let sim: FleetSim;
  const seen = new Map<string, Buffer[]>();

  beforeAll(async () => {
    broker = await startMosquitto({ logTypes: ['notice'] });
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-sim-'));
    store = new SqliteStore(join(dir, 'fleet.db'));
    await store.init();
    collector = new Collector({
      broker: { url: broker.url, topicRoot: ROOT, tls: {} }, store, clientId: 'sim-test-collector', shareGroup: 'sim',
      sessionExpiryS: 0, retentionMs: null, log: pino({ level: 'silent' }),
    });
    await collector.start();
    const listener = await mqtt.connectAsync(broker.url, { protocolVersion: 5, clientId: 'sim-test-listener' });
    listener.on('message', (topic, payload) => {
      const list = seen.get(topic) ?? [];
      list.push(Buffer.from(payload));
      seen.set(topic, list);
    });
    await listener.subscribeAsync(`${ROOT}/devices/#`, { qos: 1 });

    sim = new FleetSim({ url: broker.url, devices: DEVICES, connections: CONNECTIONS, prefix: 'simtest', intervalMs: 1000, acks: true, eventEvery: 2 });
    await sim.connect();
    sim.run();
    await new Promise((r) => setTimeout(r, 3200));
    sim.halt();
    // What was published is all there is; wait for the collector to store and acknowledge it.
    const until = Date.now() + 15_000;
    while ((collector.stats.batches < sim.stats.batchesPublished || sim.unacked > 0) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 300));
    await sim.stop();
    await listener.endAsync();
  }, 60_000);

  afterAll(async () => {
    await collector?.stop();
    await store?.close();
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('publishes valid protocol: status, state, events and telemetry batches, seq strictly increasing per device', () => {
    const devices = new Set<string>();
    let batches = 0;
    for (const [topic, payloads] of seen) {
      const t = parseTopic(ROOT, topic);
      if (t === undefined) throw new Error(`unexpected topic ${topic}`);
      if (t.kind === 'telemetry-ack') continue;
      devices.add((t as { deviceId: string }).deviceId);
      let lastSeq = 0;
      for (const payload of payloads) {
        if (t.kind === 'status') expect(parseStatus(payload).online).toBe(true);
        else if (t.kind === 'state') expect(parseReportedState(payload).device).toBe(t.deviceId);
        else if (t.kind === 'events') expect(parseEvent(payload).type).toBe('activated');
        else if (t.kind === 'telemetry') {
          const batch = parseTelemetryBatch(payload);
          expect(batch.device).toBe(t.deviceId);
          const kinds = batch.points.map((p) => p.kind);
          expect(kinds).toEqual(['inference', 'inference', 'health']);
          for (const p of batch.points) {
            expect(p.seq).toBeGreaterThan(lastSeq);
            lastSeq = p.seq;
          }
          // The agent's sizes: a batch of two inference points and a health point is ~0.9 KB of JSON.
          expect(payload.length).toBeGreaterThan(700);
          expect(payload.length).toBeLessThan(1400);
          batches++;
        } else throw new Error(`the simulator published on ${topic}`);
      }
    }
    expect(devices.size).toBe(DEVICES);
    // 300 devices at one batch a second for 3.2 s: each device 3 or 4 batches.
    expect(batches).toBe(sim.stats.batchesPublished);
    expect(batches).toBeGreaterThanOrEqual(3 * DEVICES);
    expect(batches).toBeLessThanOrEqual(4 * DEVICES);
  });

  it('shares a few connections among all devices', async () => {
    const log = await readFile(broker.logFile as string, 'utf8');
    const clients = [...log.matchAll(/New client connected from \S+ as (simtest-\S+)/g)].map((m) => m[1]);
    expect(new Set(clients)).toEqual(new Set(['simtest-conn-0', 'simtest-conn-1', 'simtest-conn-2', 'simtest-acks']));
  });

  it('is stored and acknowledged by a real collector, each batch once, with publish-to-ack delays recorded', async () => {
    expect(sim.stats.publishErrors).toBe(0);
    expect(collector.stats.batches).toBe(sim.stats.batchesPublished);
    expect(collector.stats.duplicates).toBe(0);
    expect(collector.stats.quarantined).toBe(0);
    const rows = await store.fleetStatus();
    expect(rows).toHaveLength(DEVICES);
    expect(rows.every((r) => r.online === true && r.inference.length === 2 && r.health !== null && r.outbox !== null)).toBe(true);
    expect(sim.stats.batchesAcked).toBe(sim.stats.batchesPublished);
    expect(sim.unacked).toBe(0);
    const delays = sim.takeDelays();
    expect(delays).toHaveLength(sim.stats.batchesPublished);
    expect(delays.every((d) => d > 0 && d < 15_000)).toBe(true);
  });
});
