/**
 * The rollout controller: runs inside `edgefleet collect --rollout-key`, one
 * leader at a time per store (rollout-records.ts `lead`). Every tick it
 * takes each active rollout one step with the planner (planner.ts), on what
 * the collector stored: the devices' reported state and their inference
 * intervals. The documents a step asks for are signed with the rollout
 * role's key, given their serials, and recorded together with the step;
 * then published retained and marked. A crash anywhere leaves either the
 * old step (nothing recorded) or the new one with its documents recorded,
 * which the next leader publishes first, unchanged.
 */
import type { Logger } from 'pino';
import type { Envelope, SigningKey, Target } from '../../protocol/index.js';
import { PAYLOAD_TYPES, desiredSchema, encodeDocument, formatTime, openEnvelope, signEnvelope, topics } from '../../protocol/index.js';
import type { NewPublication, RolloutRecords } from '../collector/rollout-records.js';
import { RevisionConflict } from '../collector/rollout-records.js';
import type { FleetStore } from '../collector/store.js';
import { errorMessage } from '../errors.js';
import type { Broker, BrokerSettings } from '../mqtt.js';
import { connectBroker } from '../mqtt.js';
import type { Action, DeviceView, Interval, Rollout, RolloutModel } from './planner.js';
import { step } from './planner.js';

export interface ControllerOptions {
  store: FleetStore;
  broker: BrokerSettings;
  keys: readonly SigningKey[];
  log: Logger;
  /** Who holds the lead: the collector's client id. */
  holder: string;
  tickMs?: number;
  /** How long to wait for a retained document when reading a serial or the group's current models. */
  retainedWaitMs?: number;
  connect?: (settings: BrokerSettings) => Promise<Broker>;
}

/** Documents in flight to the broker at once (bounded further by its Receive Maximum). */
const PUBLISH_IN_FLIGHT = 64;

/** A lease outlives a few missed ticks, so a slow tick does not hand the lead over. */
const LEASE_TICKS = 5;

export class RolloutController {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private broker: Broker | undefined;
  private leading = false;
  private stopped = false;
  /** Tick durations (ms), for the benchmark. */
  readonly tickTimes: number[] = [];
  /** Documents published (removals included), for the benchmark. */
  published = 0;

  constructor(private readonly options: ControllerOptions) {}

  private get records(): RolloutRecords {
    return this.options.store.rollouts;
  }

  private get tickMs(): number {
    return this.options.tickMs ?? 2_000;
  }

  start(): void {
    const loop = (): void => {
      this.running = this.tick()
        .catch((err: unknown) => this.options.log.warn({ err: errorMessage(err) }, 'rollout controller tick failed; retrying'))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(loop, this.tickMs);
        });
    };
    loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
    if (this.leading) await this.records.resign(this.options.holder).catch(() => undefined);
    await this.broker?.close();
    this.broker = undefined;
  }

  /** One pass over every active rollout. Public for tests and the benchmark. */
  async tick(): Promise<void> {
    const started = performance.now();
    const leading = await this.records.lead(this.options.holder, this.tickMs * LEASE_TICKS);
    if (leading !== this.leading) this.options.log.info({ holder: this.options.holder }, leading ? 'rollout controller: leading' : 'rollout controller: another collector leads');
    this.leading = leading;
    if (!leading) return;
    for (const id of await this.records.unpublished()) await this.flush(id);
    for (const r of await this.records.list({ active: true })) await this.advance(r);
    this.tickTimes.push(performance.now() - started);
  }

  private async connected(): Promise<Broker> {
    if (this.broker === undefined) this.broker = await (this.options.connect ?? connectBroker)(this.options.broker);
    return this.broker;
  }

  /**
   * Publishes what is recorded and not published yet, several in flight at
   * a time (each its own target), and marks them in one write once the
   * broker has them all. A broker problem marks nothing and drops the
   * connection: the next tick publishes them again, the same bytes, which a
   * device that already has them ignores.
   */
  private async flush(rollout: string): Promise<void> {
    const pending = await this.records.pending(rollout);
    if (pending.length === 0) return;
    const broker = await this.connected();
    try {
      await broker.publishAllRetained(pending.map((p) => ({ topic: topicOf(broker.topicRoot, p.target), payload: p.payload })), PUBLISH_IN_FLIGHT);
    } catch (err) {
      this.broker = undefined;
      await broker.close().catch(() => undefined);
      throw err;
    }
    await this.records.markPublished(pending.map((p) => p.id));
    this.published += pending.length;
    this.options.log.info({ rollout, documents: pending.length }, 'rollout documents published');
  }

  private async advance(current: Rollout): Promise<void> {
    let r = current;
    if (r.previous === null && r.status === 'running') {
      // What the group served before: the rollback target. Recorded before anything is published.
      const previous = await this.groupModels(r.spec.group);
      r = { ...r, previous, revision: r.revision + 1, updatedAt: Date.now() };
      await this.records.save(r, current.revision);
    }
    const now = Date.now();
    const rows = await this.options.store.fleetStatus({ group: r.spec.group });
    const devices = new Map<string, DeviceView>(rows.map((row) => [row.device, { online: row.online, desired: row.desired, models: row.models }]));
    const published = await this.records.deviceSerials(r.id);
    const wave = r.waves[r.wave];
    const judging = r.phase === 'soak' && now - r.phaseSince >= r.spec.soakMs && wave !== undefined;
    let intervals: Interval[] = [];
    if (judging) {
      const soakFrom = wave.appliedAt ?? r.phaseSince;
      const from = (wave.startedAt ?? soakFrom) - (now - soakFrom) - 60_000;
      intervals = await this.records.intervals([...new Set([...devices.keys(), ...wave.devices])], from);
    }
    const shadows = judging && r.spec.shadow !== null ? await this.records.shadows(wave.devices, wave.startedAt ?? r.phaseSince) : [];
    const next = step(r, { now, devices, published, intervals, shadows });
    if (next.rollout === r) return;
    const publications = next.actions.length === 0 ? [] : await this.documents(next.rollout, next.actions, devices);
    try {
      await this.records.save(next.rollout, r.revision, publications);
    } catch (err) {
      // The command line changed it meanwhile (pause, abort): the next tick starts from what it wrote.
      if (err instanceof RevisionConflict) return;
      throw err;
    }
    if (next.rollout.status !== r.status || next.rollout.phase !== r.phase || next.rollout.wave !== r.wave) {
      this.options.log.info(
        { rollout: r.id, status: next.rollout.status, phase: next.rollout.phase, wave: next.rollout.wave + 1, reason: next.rollout.reason },
        'rollout step',
      );
    }
    if (publications.length > 0) await this.flush(r.id);
  }

  /** The signed documents for a step's actions, each with the next serial of its target. */
  private async documents(r: Rollout, actions: readonly Action[], devices: ReadonlyMap<string, DeviceView>): Promise<NewPublication[]> {
    const out: NewPublication[] = [];
    const now = Date.now();
    for (const action of actions) {
      if (action.kind === 'clear') {
        for (const device of action.devices) out.push({ target: `device:${device}`, serial: null, payload: Buffer.alloc(0) });
        continue;
      }
      const targets: Target[] = action.kind === 'group' ? [{ group: r.spec.group }] : action.devices.map((device) => ({ device }));
      const serials = await this.nextSerials(targets, devices);
      for (const target of targets) {
        const key = keyOf(target);
        const previous = action.kind === 'devices' && action.models === 'previous';
        if (previous && (r.previous ?? []).length === 0) {
          // Nothing served before: putting a device back is removing its document (it follows its group again).
          out.push({ target: key, serial: null, payload: Buffer.alloc(0) });
          continue;
        }
        const models = previous ? (r.previous ?? []) : withShadow(r, action.kind === 'devices');
        const doc = {
          schema: 1 as const, target, serial: serials.get(key) as number, issuedAt: formatTime(now),
          expiresAt: formatTime(now + r.spec.documentTtlMs), models,
        };
        const envelope = signEnvelope(PAYLOAD_TYPES.desired, encodeDocument(desiredSchema, doc, 'desired state'), this.options.keys);
        out.push({ target: key, serial: doc.serial, payload: Buffer.from(JSON.stringify(envelope)) });
      }
    }
    return out;
  }

  /**
   * One above the highest serial known for each target: recorded by any
   * rollout, retained on its topic now, or reported applied by the device.
   */
  private async nextSerials(targets: readonly Target[], devices: ReadonlyMap<string, DeviceView>): Promise<Map<string, number>> {
    const keys = targets.map(keyOf);
    const recorded = await this.records.lastSerials(keys);
    const broker = await this.connected();
    const topicsOf = new Map(targets.map((t) => [topics.desired(broker.topicRoot, t), keyOf(t)]));
    const retained = await broker.collectRetained([...topicsOf.keys()], {
      quietMs: this.options.retainedWaitMs ?? 500,
      complete: (got) => got.size === topicsOf.size,
    });
    const out = new Map<string, number>();
    for (const t of targets) {
      const key = keyOf(t);
      const retainedSerial = serialOf(retained.get(topics.desired(broker.topicRoot, t)));
      const reported = reportedSerial(t, devices);
      out.set(key, Math.max(recorded.get(key) ?? 0, retainedSerial ?? 0, reported ?? 0) + 1);
    }
    return out;
  }

  /** The models of the group's retained document (signatures are the devices' business; only the list matters here). */
  private async groupModels(group: string): Promise<RolloutModel[]> {
    const broker = await this.connected();
    const topic = topics.groupDesired(broker.topicRoot, group);
    const got = await broker.collectRetained([topic], { quietMs: this.options.retainedWaitMs ?? 500, complete: (m) => m.size > 0 });
    const payload = got.get(topic);
    if (payload === undefined) return [];
    const doc = openDesired(payload);
    return (doc?.models ?? []).map((m) => ({ name: m.name, version: m.version, labels: m.labels, manifest: m.manifest }));
  }
}

const keyOf = (t: Target): string => (t.device !== undefined ? `device:${t.device}` : `group:${t.group}`);

function topicOf(root: string, key: string): string {
  const [kind, name] = [key.slice(0, key.indexOf(':')), key.slice(key.indexOf(':') + 1)];
  return topics.desired(root, kind === 'device' ? { device: name } : { group: name });
}

/** The wave documents' models: the new list, with the shadow block on each version that replaces another. */
function withShadow(r: Rollout, wave: boolean): Array<RolloutModel & { shadow?: object }> {
  const shadow = r.spec.shadow;
  if (!wave || shadow === null) return r.spec.models;
  const before = new Map((r.previous ?? []).map((m) => [m.name, m.version]));
  return r.spec.models.map((m) => (before.has(m.name) && before.get(m.name) !== m.version ? { ...m, shadow } : m));
}

function openDesired(payload: Buffer): { serial: number; models: { name: string; version: number; labels: string[]; manifest: Envelope }[] } | undefined {
  try {
    const envelope = JSON.parse(payload.toString('utf8')) as Envelope;
    return desiredSchema.parse(JSON.parse(openEnvelope(envelope, PAYLOAD_TYPES.desired).payload.toString('utf8')));
  } catch {
    return undefined;
  }
}

function serialOf(payload: Buffer | undefined): number | undefined {
  return payload === undefined ? undefined : openDesired(payload)?.serial;
}

/** The serial a device reports applying from this target, when that target is what it follows. */
function reportedSerial(t: Target, devices: ReadonlyMap<string, DeviceView>): number | undefined {
  if (t.device !== undefined) {
    const d = devices.get(t.device)?.desired;
    return d?.source === 'device' ? d.serial : undefined;
  }
  let max: number | undefined;
  for (const view of devices.values()) {
    const d = view.desired;
    if (d?.source === 'group' && d.group === t.group) max = Math.max(max ?? 0, d.serial);
  }
  return max;
}
