import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { removeQuietly } from '../../lib/fs-atomic.js';
import type { Envelope } from '../../protocol/dsse.js';
import { parseEvent, parseReportedState, parseStatus, type DeviceEvent, type ReportedState, type Status } from '../../protocol/reported.js';
import { connectFleet, makeFleetKeys, publishDesired, signDesired, writeTrust, type DesiredEntry, type FleetKeys } from './fleet.js';
import { startMosquitto, type Mosquitto, type MosquittoOptions } from './mosquitto.js';

/**
 * The fleet side of a rollout integration test in one piece: a real Mosquitto,
 * a fleet MQTT client, fresh keys with their trust document on disk, and what
 * every device reports (status, state, events) collected as it arrives.
 * Start it in beforeAll (or per test) and stop it after.
 */
export interface FleetHarness {
  readonly root: string;
  readonly broker: Mosquitto;
  readonly fleet: MqttClient;
  readonly keys: FleetKeys;
  /** The trust document agents are given (`trust` in their config). */
  readonly trustFile: string;
  /** Each device's latest non-empty reported state. */
  readonly states: Map<string, ReportedState>;
  /** Each device's latest status message (online, offline). */
  readonly statuses: Map<string, Status>;
  /** Every event any device published, in order of arrival. */
  readonly events: (DeviceEvent & { device: string })[];
  /** Every reported state of `device`, in order of arrival. */
  reports(device: string): readonly ReportedState[];
  /** A check for waitFor: the device reports `serial` with `status`; its state then, or false. */
  desired(device: string, serial: number, status: string): () => ReportedState | false;
  /** Signs a desired document for `device` with the rollout key and publishes it retained. */
  deploy(device: string, serial: number, models: DesiredEntry[]): Promise<void>;
  /** Ends the fleet client, stops the broker, removes the trust directory. */
  stop(): Promise<void>;
}

export interface FleetHarnessOptions extends MosquittoOptions {
  /** The topic root agents are configured with ('edgefleet' unless given). */
  root?: string;
}

export async function startFleetHarness(options: FleetHarnessOptions = {}): Promise<FleetHarness> {
  const root = options.root ?? 'edgefleet';
  const broker = await startMosquitto(options);
  const fleet = await connectFleet(broker.url);
  const keys = makeFleetKeys();
  const trustDir = await mkdtemp(join(tmpdir(), 'edgefleet-trust-'));
  const trustFile = join(trustDir, 'trust.json');
  await writeTrust(trustFile, keys);
  const states = new Map<string, ReportedState>();
  const history = new Map<string, ReportedState[]>();
  const statuses = new Map<string, Status>();
  const events: (DeviceEvent & { device: string })[] = [];
  const prefix = `${root}/devices/`;
  fleet.on('message', (topic, payload) => {
    if (!topic.startsWith(prefix) || payload.length === 0) return; // empty: a retained message cleared
    const [device = '', kind] = topic.slice(prefix.length).split('/');
    if (kind === 'state') {
      const state = parseReportedState(payload);
      states.set(device, state);
      history.set(device, [...(history.get(device) ?? []), state]);
    } else if (kind === 'status') statuses.set(device, parseStatus(payload));
    else if (kind === 'events') events.push({ ...parseEvent(payload), device });
  });
  await fleet.subscribeAsync([`${prefix}+/state`, `${prefix}+/status`, `${prefix}+/events`], { qos: 1 });

  return {
    root,
    broker,
    fleet,
    keys,
    trustFile,
    states,
    statuses,
    events,
    reports: (device) => history.get(device) ?? [],
    desired: (device, serial, status) => () => {
      const s = states.get(device);
      return s?.desired?.serial === serial && s.desired.status === status && s;
    },
    async deploy(device, serial, models) {
      const envelope: Envelope = signDesired({ target: { device }, serial, models }, [keys.rollout]);
      await publishDesired(fleet, root, { device }, envelope);
    },
    async stop() {
      // Forced: the broker may be down by now.
      await fleet.endAsync(true);
      await broker.stop();
      await removeQuietly(trustDir);
    },
  };
}
