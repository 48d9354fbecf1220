import { randomBytes } from 'node:crypto';
import { connectAsync } from 'mqtt';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { MqttConnection } from '../agent/mqtt/connection.js';
import { Reporter } from '../agent/rollout/reporter.js';
import type { ReporterOptions } from '../agent/rollout/reporter.js';
import { agentVersion } from '../agent/version.js';
import { eventSchema, reportedStateSchema, topics } from '../protocol/index.js';
import type { ReportedState } from '../protocol/index.js';
import { mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';
import type { Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
if (skip) console.warn(`reporter tests skipped: ${skip}`);

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
const uid = (): string => randomBytes(4).toString('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const SHA = 'a'.repeat(64);

async function waitFor(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe.skipIf(skip)(`Reporter against Mosquitto${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let broker: Mosquitto;
  let watcher: MqttClient;
  let root: string;
  let deviceId: string;
  let conn: MqttConnection;
  let reporter: Reporter | undefined;
  /** Reported states as published, each checked against the protocol's schema. */
  let states: { state: ReportedState; retain: boolean }[];
  let events: unknown[];

  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker?.stop();
  });
  beforeEach(async () => {
    root = `t${uid()}`;
    deviceId = `pi-${uid()}`;
    states = [];
    events = [];
    reporter = undefined;
    watcher = await connectAsync(broker.url, { protocolVersion: 5, clientId: `watch-${uid()}`, reconnectPeriod: 100 });
    watcher.on('message', (topic, payload, packet) => {
      const value: unknown = JSON.parse(payload.toString());
      if (topic.endsWith('/state')) states.push({ state: reportedStateSchema.parse(value), retain: packet.retain });
      else events.push({ ...eventSchema.parse(value), retain: packet.retain });
    });
    // rap (retain as published) keeps the retain flag on live deliveries, so the test can check it.
    await watcher.subscribeAsync([topics.device(root, deviceId, 'state'), topics.device(root, deviceId, 'events')], { qos: 1, rap: true });
    conn = new MqttConnection({ config: { url: broker.url, topicRoot: root, keepaliveS: 30 }, deviceId, logger });
  });
  afterEach(async () => {
    await reporter?.stop();
    await conn.stop();
    await watcher.endAsync(true);
  });

  async function startReporter(extra: Partial<ReporterOptions> = {}): Promise<Reporter> {
    await conn.start();
    const r = new Reporter({
      transport: conn, topicRoot: root, deviceId, groups: ['lab'], logger,
      executionProviders: { available: ['cpu'], unavailable: { cuda: 'libcudart.so.12 not found' } },
      ...extra,
    });
    reporter = r;
    await r.start();
    return r;
  }
  const last = (): ReportedState | undefined => states.at(-1)?.state;

  it('publishes the full state, valid per the protocol schema, on start', async () => {
    const r = await startReporter();
    await waitFor(() => states.length === 1, 'first state');
    const { state } = states[0] ?? { state: undefined };
    expect(state).toMatchObject({
      schema: 1, device: deviceId, groups: ['lab'], desired: null, models: [],
      agent: { version: agentVersion(), arch: process.arch, executionProviders: { available: ['cpu'], unavailable: { cuda: 'libcudart.so.12 not found' } } },
    });
    expect(reportedStateSchema.parse(r.snapshot())).toEqual({ ...state, ts: expect.any(String) });
    // A late subscriber gets it retained.
    const late = await connectAsync(broker.url, { protocolVersion: 5 });
    const got: Buffer[] = [];
    late.on('message', (_t, payload, packet) => packet.retain && got.push(payload));
    await late.subscribeAsync(topics.device(root, deviceId, 'state'), { qos: 1 });
    await waitFor(() => got.length === 1, 'retained state');
    await late.endAsync();
    expect(reportedStateSchema.parse(JSON.parse(String(got[0]))).device).toBe(deviceId);
  });

  it('coalesces a burst of changes into few publishes and never loses the final state', async () => {
    const r = await startReporter();
    await waitFor(() => states.length === 1, 'first state');
    r.setDesired({ source: 'device', serial: 7, status: 'applying', error: null });
    const steps = ['pending', 'downloading', 'verifying', 'loading', 'serving'] as const;
    for (let v = 1; v <= 10; v++) for (const state of steps) r.setModel('mnist', v, { state, sha256: SHA, labels: ['stable'] });
    for (let v = 1; v < 10; v++) r.removeModel('mnist', v);
    r.setModel('mnist', 10, { executionProvider: 'cpu', progress: 1 });
    r.setDesired({ source: 'device', serial: 7, status: 'applied', error: null });
    await sleep(400);
    expect(states.length).toBeLessThanOrEqual(3);
    expect(last()?.desired).toEqual({ source: 'device', serial: 7, status: 'applied', error: null });
    expect(last()?.models).toEqual([
      { name: 'mnist', version: 10, state: 'serving', labels: ['stable'], executionProvider: 'cpu', sha256: SHA, progress: 1, error: null },
    ]);
    expect(states.every((s) => s.retain)).toBe(true);
  });

  it('spaces publishes by coalesceMs and throttles progress-only updates harder', async () => {
    const r = await startReporter({ coalesceMs: 100, progressIntervalMs: 1000 });
    await waitFor(() => states.length === 1, 'first state');
    r.setModel('mnist', 1, { state: 'downloading', progress: 0 });
    await waitFor(() => states.length === 2, 'downloading');
    const t0 = Date.now();
    for (let i = 1; i <= 20; i++) {
      r.setModel('mnist', 1, { progress: i / 20 });
      await sleep(40);
    }
    // 800 ms of progress: at most the throttled one or two, then the final value soon after.
    expect(states.length - 2).toBeLessThanOrEqual(1);
    await waitFor(() => last()?.models[0]?.progress === 1, 'final progress', 3000);
    expect(Date.now() - t0).toBeLessThan(2000);
    // A real state change is not held back by the progress throttle.
    const before = states.length;
    r.setModel('mnist', 1, { progress: 1 });
    r.setModel('mnist', 1, { state: 'verifying' });
    await waitFor(() => last()?.models[0]?.state === 'verifying', 'verifying', 500);
    expect(states.length).toBe(before + 1);
  });

  it('publishes events non-retained with QoS 1', async () => {
    const r = await startReporter();
    r.event('download.started', { model: 'mnist', version: 3 });
    r.event('trust.updated', { detail: 'trust version 2' });
    await waitFor(() => events.length === 2, 'events');
    expect(events).toEqual([
      { ts: expect.any(String), type: 'download.started', model: 'mnist', version: 3, retain: false },
      { ts: expect.any(String), type: 'trust.updated', detail: 'trust version 2', retain: false },
    ]);
  });

  it('keeps working offline and republishes the full state (and queued events) on reconnect', async () => {
    const r = await startReporter();
    await waitFor(() => states.length === 1, 'first state');
    conn.client.stream.destroy();
    await waitFor(() => !conn.connected, 'offline');
    r.setModel('mnist', 2, { state: 'serving', sha256: SHA, executionProvider: 'cpu', progress: 1 });
    r.event('activated', { model: 'mnist', version: 2 });
    expect(r.snapshot().models).toHaveLength(1);
    await waitFor(() => last()?.models[0]?.state === 'serving', 'state after reconnect');
    await waitFor(() => events.length === 1, 'queued event');
    // Republished even without a change: the retained copy may be stale after an outage.
    // (Wait for the PUBACK first: an unacknowledged publish is resent after reconnecting, as QoS 1 allows.)
    await r.flush();
    const count = states.length;
    conn.client.stream.destroy();
    await waitFor(() => states.length === count + 1, 'republish on reconnect');
    expect(last()?.models[0]).toMatchObject({ name: 'mnist', version: 2, state: 'serving' });
  });

  it('publishes on the first connect when started before the broker is up', async () => {
    const restarting = broker.restart({ downMs: 1500 });
    await sleep(300);
    conn = new MqttConnection({ config: { url: broker.url, topicRoot: root, keepaliveS: 30 }, deviceId, logger, startWaitMs: 200 });
    const r = await startReporter();
    expect(conn.connected).toBe(false);
    r.setDesired({ source: 'group', group: 'lab', serial: 3, status: 'failed', error: 'artifact missing' });
    await restarting;
    await waitFor(() => last()?.desired?.status === 'failed', 'state after the broker came up');
    expect(reportedStateSchema.parse(last()).desired).toEqual({ source: 'group', group: 'lab', serial: 3, status: 'failed', error: 'artifact missing' });
  });
});
