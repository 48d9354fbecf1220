/**
 * The serials a desired document for a target must be above (PROTOCOL.md
 * section 6): the one retained on the target's topic, and the ones its
 * devices report having accepted from that target in their retained state
 * (section 7). A device keeps the last serial it accepted from a target even
 * after the document is removed (section 10), so a serial not above it is
 * rejected as a replay.
 */
import type { Envelope, ReportedState, Target } from '../protocol/index.js';
import { PAYLOAD_TYPES, openEnvelope, parseReportedState, parseTopic, topics } from '../protocol/index.js';
import { FailureError, UsageError } from './errors.js';
import type { Broker } from './mqtt.js';

/** One serial a new document must be above, and who holds it. */
export interface SerialFloor {
  serial: number;
  /** e.g. "the serial pi-003 reports applied from group:lab". */
  why: string;
}

export interface TargetSerials {
  topic: string;
  /** The serial of the document retained on the topic; undefined when none is. */
  retained: number | undefined;
  /** The highest serial a device reports from this target; undefined when none does. */
  reported: SerialFloor | undefined;
  /** For a device target: the other document it reports going by (e.g. "group:lab"), whose serial says nothing of its own. */
  followsOther?: string;
}

/** "device:pi-001" or "group:lab", as the messages name a target. */
export function targetName(target: Target): string {
  return target.device !== undefined ? `device:${target.device}` : `group:${target.group}`;
}

/**
 * Reads the retained document on the target's topic and the retained state of
 * its devices (for a group: every device; those reporting it as their source
 * count). Waits `waitMs` for retained messages; a device target stops as soon
 * as both have come.
 */
export async function readTargetSerials(broker: Broker, target: Target, waitMs: number): Promise<TargetSerials> {
  const root = broker.topicRoot;
  const topic = topics.desired(root, target);
  const stateFilter = target.device !== undefined ? `${root}/devices/${target.device}/state` : topics.allDevices(root, 'state');
  const got = await broker.collectRetained(
    [topic, stateFilter],
    target.device !== undefined
      ? { quietMs: waitMs, complete: (m) => m.size >= 2 }
      : { quietMs: waitMs, maxMs: Math.max(waitMs * 10, 10_000) }, // a fleet's states take a while to replay
  );
  const payload = got.get(topic);
  let retained: number | undefined;
  if (payload !== undefined) {
    retained = retainedSerial(payload);
    if (retained === undefined) throw new FailureError(`the message retained on ${topic} is not a desired-state envelope; pass --serial N`);
  }
  let reported: SerialFloor | undefined;
  let followsOther: string | undefined;
  for (const [t, bytes] of got) {
    const parsed = parseTopic(root, t);
    if (parsed?.kind !== 'state') continue;
    const state = readState(parsed.deviceId, bytes);
    const floor = state && reportedFloor(state, target);
    if (floor !== undefined && (reported === undefined || floor.serial > reported.serial)) reported = floor;
    if (target.device !== undefined && state?.desired?.source === 'group') followsOther = `group:${state.desired.group ?? '?'}`;
  }
  return { topic, retained, reported, ...(followsOther !== undefined && { followsOther }) };
}

/** A device's retained state, or undefined when unreadable or not its own ('edgefleet devices' names those). */
function readState(deviceId: string, bytes: Buffer): ReportedState | undefined {
  try {
    const state = parseReportedState(bytes);
    return state.device === deviceId ? state : undefined;
  } catch {
    return undefined;
  }
}

/** What one device's state says it accepted from `target`. */
function reportedFloor(state: ReportedState, target: Target): SerialFloor | undefined {
  const deviceId = state.device;
  const d = state.desired;
  // A rejected document was never accepted: its serial is not remembered.
  if (d === null || d.status === 'rejected') return undefined;
  const from = d.source === 'device' ? { device: deviceId } : d.group !== undefined ? { group: d.group } : undefined;
  if (from === undefined || targetName(from) !== targetName(target)) return undefined;
  const how = d.status === 'applied' ? 'applied' : `accepted (${d.status})`;
  return { serial: d.serial, why: `the serial ${deviceId} reports ${how} from ${targetName(target)}` };
}

/** The serials a new document must be above, highest first. */
function floors(s: TargetSerials): SerialFloor[] {
  const all = [
    ...(s.retained !== undefined ? [{ serial: s.retained, why: `the serial of the document retained on ${s.topic}` }] : []),
    ...(s.reported !== undefined ? [s.reported] : []),
  ];
  return all.sort((a, b) => b.serial - a.serial);
}

/**
 * `explicit` when it is above every floor (else a usage error with the
 * figures), or one above the highest floor, or 1 when nothing is known.
 */
export function chooseSerial(s: TargetSerials, explicit: number | undefined, note: (line: string) => void): number {
  const [top] = floors(s);
  if (explicit !== undefined) {
    if (top !== undefined && explicit <= top.serial) {
      throw new UsageError(`serial ${explicit} is not above ${top.serial}, ${top.why}; it would be rejected as a replay (leave out --serial to take ${top.serial + 1})`);
    }
    return explicit;
  }
  if (top === undefined) {
    const why = s.followsOther === undefined
      ? 'pass --serial if its devices applied higher serials before'
      : `the device goes by ${s.followsOther} now: if it had a document of its own before, pass --serial above the one 'deploy --clear' printed`;
    note(`no desired state retained on ${s.topic} and no device reports one from it; starting at serial 1 (${why})`);
    return 1;
  }
  return top.serial + 1;
}

function retainedSerial(payload: Buffer): number | undefined {
  try {
    const envelope = JSON.parse(payload.toString('utf8')) as Envelope;
    const doc = JSON.parse(openEnvelope(envelope, PAYLOAD_TYPES.desired).payload.toString('utf8')) as { serial?: unknown };
    return Number.isSafeInteger(doc.serial) && (doc.serial as number) >= 0 ? (doc.serial as number) : undefined;
  } catch {
    return undefined;
  }
}
