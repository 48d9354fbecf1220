import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../protocol/errors.js';
import { eventSchema, reportedStateSchema, type DeviceEvent } from '../protocol/reported.js';
import { BlockPullError } from '../agent/rollout/block-puller.js';
import { RolledBackError, RolloutError, classify } from '../agent/rollout/errors.js';
import { RolloutEvents, type DesiredOrigin, type RolloutEvent } from '../agent/rollout/events.js';
import { reportProjection } from '../agent/rollout/report-projection.js';
import { Reporter, type ReportTransport } from '../agent/rollout/reporter.js';

const SHA1 = '1'.repeat(64);
const SHA2 = '2'.repeat(64);
const device: DesiredOrigin = { source: 'device' };
const logger = pino({ level: 'silent' });

/**
 * A real Reporter on a transport that records what it is asked to publish and
 * is never connected, so the state is read with snapshot() and events come
 * back in order: the projection, without MQTT.
 */
function project(events: RolloutEvent[]): { reporter: Reporter; published: Omit<DeviceEvent, 'ts'>[] } {
  const published: Omit<DeviceEvent, 'ts'>[] = [];
  const transport: ReportTransport = {
    connected: false,
    publishJson: async (topic, value) => {
      expect(topic).toBe('r/devices/pi/events');
      const { ts: _ts, ...event } = eventSchema.parse(value);
      published.push(event);
    },
    onConnect: () => () => {},
  };
  const reporter = new Reporter({ transport, topicRoot: 'r', deviceId: 'pi', groups: ['lab'], logger });
  const bus = new RolloutEvents(logger);
  bus.on(reportProjection(reporter));
  for (const e of events) bus.emit(e);
  return { reporter, published };
}

const accepted = (serial: number, models: { name: string; version: number; sha256: string }[], available: { name: string; version: number }[] = []): RolloutEvent => ({
  type: 'desired.accepted',
  origin: device,
  serial,
  from: 'device',
  models: models.map((m) => ({ ...m, labels: ['stable'] })),
  available,
});

describe('report projection: rollout events to reported state and events', () => {
  it('a first install, step by step, ends serving with the events PROTOCOL.md lists', () => {
    const { reporter, published } = project([
      accepted(1, [{ name: 'm', version: 1, sha256: SHA1 }]),
      { type: 'fetch.started', name: 'm', version: 1, sha256: SHA1, size: 300, blocks: 3 },
      { type: 'fetch.progress', name: 'm', version: 1, done: 1, total: 3 },
      { type: 'fetch.verifying', name: 'm', version: 1 },
      { type: 'fetch.completed', name: 'm', version: 1 },
      { type: 'verify.started', name: 'm', version: 1, sha256: SHA1 },
      { type: 'load.started', name: 'm', version: 1 },
      { type: 'load.completed', name: 'm', version: 1, executionProvider: 'cpu' },
      { type: 'activated', name: 'm', version: 1, previous: undefined },
      { type: 'desired.settled', origin: device, serial: 1, status: 'applied', error: null },
    ]);
    const state = reportedStateSchema.parse(reporter.snapshot());
    expect(state.desired).toEqual({ source: 'device', serial: 1, status: 'applied', error: null });
    expect(state.models).toEqual([{ name: 'm', version: 1, state: 'serving', labels: ['stable'], executionProvider: 'cpu', sha256: SHA1, progress: 1, error: null }]);
    expect(published).toEqual([
      { type: 'desired.received', detail: 'serial 1 from device' },
      { type: 'download.started', model: 'm', version: 1, detail: '300 bytes in 3 blocks' },
      { type: 'download.completed', model: 'm', version: 1 },
      { type: 'activated', model: 'm', version: 1 },
    ]);
  });

  it('reports each intermediate model state as the steps pass it', () => {
    const states: string[] = [];
    const { reporter } = project([]);
    const bus = new RolloutEvents(logger);
    bus.on(reportProjection(reporter));
    bus.on(() => states.push(`${reporter.snapshot().models[0]?.state}:${reporter.snapshot().models[0]?.progress}`));
    for (const e of [
      accepted(1, [{ name: 'm', version: 1, sha256: SHA1 }]),
      { type: 'fetch.started', name: 'm', version: 1, sha256: SHA1, size: 300, blocks: 3 },
      { type: 'fetch.progress', name: 'm', version: 1, done: 2, total: 4 },
      { type: 'fetch.verifying', name: 'm', version: 1 },
      { type: 'verify.started', name: 'm', version: 1, sha256: SHA1 },
      { type: 'load.started', name: 'm', version: 1 },
      { type: 'added', name: 'm', version: 1 },
    ] satisfies RolloutEvent[]) bus.emit(e);
    expect(states).toEqual(['pending:0', 'downloading:0', 'downloading:0.5', 'verifying:1', 'verifying:1', 'loading:1', 'serving:1']);
  });

  it('an upgrade keeps the serving version listed, drops versions that no longer serve, and reports the replacement', () => {
    const { reporter, published } = project([
      accepted(1, [{ name: 'm', version: 1, sha256: SHA1 }, { name: 'old', version: 4, sha256: SHA2 }]),
      { type: 'restored', name: 'm', version: 1 },
      // m@1 serves and is no longer listed: it stays until unloaded; old@4 never served: it goes.
      accepted(2, [{ name: 'm', version: 2, sha256: SHA2 }], [{ name: 'm', version: 1 }]),
      { type: 'activated', name: 'm', version: 2, previous: 1 },
    ]);
    expect(reporter.snapshot().models.map((m) => `${m.name}@${m.version}:${m.state}`)).toEqual(['m@1:serving', 'm@2:serving']);
    expect(published.at(-1)).toEqual({ type: 'activated', model: 'm', version: 2, detail: 'replaces version 1' });
    const unloaded = project([{ type: 'restored', name: 'm', version: 1 }, { type: 'unloaded', name: 'm', version: 1 }]);
    expect(unloaded.reporter.snapshot().models).toEqual([]);
    expect(unloaded.published).toEqual([{ type: 'unloaded', model: 'm', version: 1 }]);
    // A version already serving keeps its state and gets the new labels only.
    const { reporter: r3 } = project([{ type: 'restored', name: 'm', version: 1 }, accepted(3, [{ name: 'm', version: 1, sha256: SHA1 }], [{ name: 'm', version: 1 }])]);
    expect(r3.snapshot().models[0]).toMatchObject({ state: 'serving', labels: ['stable'], sha256: null });
  });

  it('a retried failure says which attempt; the last one reports the classified state and its event', () => {
    const missing = classify(new BlockPullError('BLOCK_MISSING', 'block 2 never arrived', 2));
    const hash = classify(new BlockPullError('BLOCK_HASH', 'block 1 failed its check', 1));
    const { reporter, published } = project([
      accepted(1, [{ name: 'm', version: 1, sha256: SHA1 }, { name: 'n', version: 1, sha256: SHA2 }]),
      { type: 'step.failed', name: 'm', version: 1, outcome: missing, attempt: 1, maxAttempts: 3, retrying: true },
      { type: 'step.failed', name: 'n', version: 1, outcome: hash, attempt: 1, maxAttempts: 3, retrying: false },
      { type: 'step.failed', name: 'prune-has-no-version', version: undefined, outcome: missing, attempt: 3, maxAttempts: 3, retrying: false },
      { type: 'desired.settled', origin: device, serial: 1, status: 'rejected', error: hash.message },
    ]);
    const [m, n] = reporter.snapshot().models;
    expect(m).toMatchObject({ name: 'm', state: 'pending', error: 'block 2 never arrived (attempt 1 of 3, retrying)' });
    expect(n).toMatchObject({ name: 'n', state: 'rejected', error: 'block 1 failed its check' });
    expect(reporter.snapshot().models).toHaveLength(2);
    expect(reporter.snapshot().desired).toEqual({ source: 'device', serial: 1, status: 'rejected', error: 'block 1 failed its check' });
    expect(published.slice(1)).toEqual([{ type: 'verify.failed', model: 'n', version: 1, detail: 'block 1 failed its check' }]);
  });

  it('a rollback stays rolled_back when its step failure is reported', () => {
    const reason = 'm version 2 rolled back: 5 of 5 runs failed in its health window';
    const { reporter, published } = project([
      { type: 'activated', name: 'm', version: 2, previous: 1 },
      { type: 'rolled-back', name: 'm', version: 2, reason },
      { type: 'step.failed', name: 'm', version: 2, outcome: classify(new RolledBackError(reason)), attempt: 1, maxAttempts: 3, retrying: false },
    ]);
    expect(reporter.snapshot().models).toMatchObject([{ name: 'm', version: 2, state: 'rolled_back', error: reason }]);
    expect(published.map((e) => e.type)).toEqual(['activated', 'rolled_back']);
  });

  it('a rejected document: verify.failed besides desired.rejected only when a manifest failed', () => {
    const group: DesiredOrigin = { source: 'group', group: 'lab' };
    const manifest = new RolloutError('MANIFEST', 'manifest of m version 2: signature does not verify');
    const { reporter, published } = project([
      { type: 'desired.rejected', origin: device, serial: 7, code: 'REPLAY', error: 'serial 7 is not above 9' },
      { type: 'desired.rejected', origin: group, serial: 8, code: classify(manifest).code, error: manifest.message },
    ]);
    expect(reporter.snapshot().desired).toEqual({ source: 'group', group: 'lab', serial: 8, status: 'rejected', error: manifest.message });
    expect(published).toEqual([
      { type: 'desired.rejected', detail: 'serial 7 is not above 9' },
      { type: 'desired.rejected', detail: manifest.message },
      { type: 'verify.failed', detail: manifest.message },
    ]);
  });

  it('resumed, dropped: desired state and events', () => {
    const { reporter, published } = project([{ type: 'desired.resumed', origin: device, serial: 3 }]);
    expect(reporter.snapshot().desired).toEqual({ source: 'device', serial: 3, status: 'applying', error: null });
    const dropped = project([{ type: 'desired.dropped', origin: device, serial: 3, error: 'no longer verifies' }]);
    expect(dropped.reporter.snapshot().desired).toEqual({ source: 'device', serial: 3, status: 'rejected', error: 'no longer verifies' });
    expect([...published, ...dropped.published]).toEqual([{ type: 'desired.rejected', detail: 'no longer verifies' }]);
  });

  it('trust: the version in force and its last problem in the state, an event per update and refusal', () => {
    const v1 = { version: 1, expiresAt: '2036-01-01T00:00:00Z' };
    const v2 = { version: 2, expiresAt: '2037-01-01T00:00:00Z' };
    const refused = new ProtocolError('TRUST_VERSION', 'trust version 4 skips past the current version 2').message;
    // Before any trust event a state has no trust field (what a revision-1 device sends), and still validates.
    const before = project([]).reporter.snapshot();
    expect(before).not.toHaveProperty('trust');
    expect(reportedStateSchema.parse(before)).not.toHaveProperty('trust');

    const loaded = project([{ type: 'trust.loaded', ...v1 }]);
    expect(loaded.reporter.snapshot().trust).toEqual({ ...v1, error: null });
    expect(loaded.published).toEqual([]);

    const { reporter, published } = project([
      { type: 'trust.loaded', ...v1 },
      { type: 'trust.updated', topic: 'r/trust/2', ...v2 },
      { type: 'trust.rejected', current: v2, error: `r/trust/3: ${refused}` },
    ]);
    const state = reporter.snapshot();
    expect(state.trust).toEqual({ ...v2, error: `r/trust/3: ${refused}` });
    expect(reportedStateSchema.parse(state).trust).toEqual(state.trust);
    expect(published).toEqual([
      { type: 'trust.updated', detail: 'trust version 2 from r/trust/2' },
      { type: 'trust.rejected', detail: `r/trust/3: ${refused}` },
    ]);
    // The next accepted version clears the problem.
    const cleared = project([{ type: 'trust.rejected', current: v1, error: 'bad' }, { type: 'trust.updated', topic: 'r/trust', ...v2 }]);
    expect(cleared.reporter.snapshot().trust).toEqual({ ...v2, error: null });
  });
});

describe('rollout event bus', () => {
  it('delivers in order to every listener; one that throws is logged and does not stop the others or the emitter', () => {
    const logged: unknown[] = [];
    const bus = new RolloutEvents(pino({ level: 'error' }, { write: (line: string) => void logged.push(JSON.parse(line)) }));
    const seen: string[] = [];
    bus.on(() => {
      throw new Error('boom');
    });
    const off = bus.on((e) => seen.push(e.type));
    bus.emit({ type: 'load.started', name: 'm', version: 1 });
    off();
    bus.emit({ type: 'unloaded', name: 'm', version: 1 });
    expect(seen).toEqual(['load.started']);
    expect(logged).toMatchObject([{ type: 'load.started', err: 'boom' }, { type: 'unloaded', err: 'boom' }]);
  });
});
