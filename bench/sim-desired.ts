/**
 * What a simulated device (bench/fleet-sim.ts) does with desired documents,
 * as the agent does it (docs/protocol.md sections 6 and 10, docs/rollout.md):
 * the latest retained document per target, an empty message removing one;
 * the device's own document counts, else its group's; a document counts only
 * if its target is this device or its group, it has not expired, and its
 * serial is not below the last one applied from that target. Applying is
 * instant: the device then serves exactly the listed versions.
 *
 * Signatures are NOT verified: the simulator stands in for thousands of
 * devices on one core and measures the fleet side, so it trusts the
 * controller's documents. It does open the DSSE envelope and parse the
 * payload with the protocol's own schema, so a malformed document still
 * fails here.
 */
import type { Desired, Target } from '../protocol/index.js';
import { PAYLOAD_TYPES, desiredSchema, openEnvelope, parseTime } from '../protocol/index.js';

export interface SimServed {
  name: string;
  version: number;
  labels: string[];
}

export interface SimReportedDesired {
  source: 'device' | 'group';
  group?: string;
  serial: number;
  status: 'applied' | 'rejected';
  error: string | null;
}

/** What an offered message changed: nothing, a new set applied, or a document rejected. */
export type SimDesiredOutcome = 'none' | 'applied' | 'rejected';

interface Held {
  key: string;
  doc: Desired;
}

export class SimDesiredState {
  /** null until a document has been received, as in the reported state. */
  desired: SimReportedDesired | null = null;
  served: SimServed[] = [];
  private readonly docs = new Map<string, Held>();
  /** Last serial applied per target key (kept after a removal, section 10). */
  private readonly lastApplied = new Map<string, number>();
  /** The document in force: its target key and serial. */
  private inForce: { key: string; serial: number } | undefined;
  /** The document last rejected (key@serial), reported once. */
  private rejected = '';

  constructor(
    readonly device: string,
    readonly group: string,
  ) {}

  /** A message on this device's or its group's desired topic. */
  offer(target: Target, payload: Buffer, now = Date.now()): SimDesiredOutcome {
    const key = target.device !== undefined ? 'device' : `group:${target.group}`;
    if (payload.length === 0) {
      this.docs.delete(key);
      return this.evaluate(now);
    }
    let doc: Desired;
    try {
      const opened = openEnvelope(JSON.parse(payload.toString('utf8')), PAYLOAD_TYPES.desired);
      doc = desiredSchema.parse(JSON.parse(opened.payload.toString('utf8')));
    } catch (err) {
      return this.reject(target, 0, `not a desired document: ${(err as Error).message}`);
    }
    const mine = doc.target.device !== undefined ? doc.target.device === this.device && target.device === this.device : doc.target.group === this.group && target.group === this.group;
    if (!mine) return this.reject(target, doc.serial, 'the document is for another target');
    this.docs.set(key, { key, doc });
    return this.evaluate(now);
  }

  /** Applies the document that counts, if it is not already in force. */
  private evaluate(now: number): SimDesiredOutcome {
    const held = this.docs.get('device') ?? this.docs.get(`group:${this.group}`);
    if (held === undefined) return 'none'; // nothing left: keep serving what serves
    const { key, doc } = held;
    if (this.inForce?.key === key && this.inForce.serial === doc.serial) return 'none';
    const target = doc.target;
    if (this.rejected === `${key}@${doc.serial}`) return 'none';
    const last = this.lastApplied.get(key);
    // An equal serial is the document accepted before from that target, back in force (the agent compares hashes; the controller never reuses a serial).
    let why: string | undefined;
    if (last !== undefined && doc.serial < last) why = `serial ${doc.serial} is not above ${last}, the last applied from this target`;
    else if ((parseTime(doc.expiresAt) ?? 0) <= now) why = `expired at ${doc.expiresAt}`;
    if (why !== undefined) {
      this.rejected = `${key}@${doc.serial}`;
      return this.reject(target, doc.serial, why);
    }
    this.lastApplied.set(key, doc.serial);
    this.inForce = { key, serial: doc.serial };
    this.desired = { ...sourceOf(target), serial: doc.serial, status: 'applied', error: null };
    this.served = doc.models.map((m) => ({ name: m.name, version: m.version, labels: m.labels }));
    return 'applied';
  }

  private reject(target: Target, serial: number, error: string): SimDesiredOutcome {
    this.desired = { ...sourceOf(target), serial, status: 'rejected', error };
    return 'rejected';
  }
}

const sourceOf = (t: Target): { source: 'device' | 'group'; group?: string } => (t.device !== undefined ? { source: 'device' } : { source: 'group', group: t.group });
