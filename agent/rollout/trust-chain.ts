import type { Logger } from 'pino';
import { claimedTrustVersion, topics } from '../../protocol/index.js';
import { errorMessage } from '../errors.js';
import type { RolloutEvents, TrustRef } from './events.js';
import type { RotationResult, TrustStore } from './trust-store.js';

/**
 * Catching up on trust (docs/protocol.md section 3, revision 2): every version
 * stays retained on `{root}/trust/{version}`, so a device that was away through
 * several rotations walks from its current version: it accepts current+1 (exactly
 * that version, signed by the current and the new root thresholds, persisted
 * before use: TrustStore does both), then the next, until none is left. A
 * version is never accepted out of order, and a refused link stops the walk
 * there, reported with its cause, until a good copy of it arrives.
 *
 * How the walk knows there is no next version: it never waits for one. The
 * rollout subscribes to `{root}/trust/+` once, the broker replays every retained
 * version on each subscription (and a persistent session queues new ones while
 * the device is away), and the versions are kept here as they arrive, in any
 * order. The walk takes current+1 whenever it is at hand and otherwise simply
 * stops; a version that arrives later starts it again. Asking for one
 * `{root}/trust/{n}` at a time would have to conclude from a timeout that
 * nothing is retained there, and on a slow link (cellular boards) that guess
 * would stop the walk early and leave the device refusing every rollout. Nothing
 * here blocks start-up or serving: it all runs as messages come.
 *
 * The one wait is for a `{root}/trust` message that skips ahead: it is reported
 * as refused only after `skipGraceMs` without the versions between, because a
 * broker need not deliver the retained messages of two filters in order.
 */

export interface TrustChainOptions {
  store: TrustStore;
  events: RolloutEvents;
  topicRoot: string;
  logger: Logger;
  /** After each walk: `accepted` says whether a newer trust is now in force. */
  onWalked: (accepted: boolean) => void;
  /** How long a `{root}/trust` message that skips ahead waits for the versions between it and the current one. */
  skipGraceMs?: number;
  /**
   * Bounds on what is kept ahead of the current version, so a flood cannot eat
   * memory: versions up to current+maxAhead, and maxPendingBytes in all. Beyond
   * them a version is dropped (and logged); the next subscription (a restart)
   * brings it again, once the walk has moved on.
   */
  maxAhead?: number;
  maxPendingBytes?: number;
}

interface Candidate {
  /** Where it came from, for the report. */
  topic: string;
  payload: Buffer;
  /** The version the walk needs it to be. */
  version: number;
  /** Set for `{root}/trust/{version}`, whose document must be that version. */
  topicVersion?: number;
}

interface Head {
  payload: Buffer;
  /** The version it claims, unverified; undefined when unreadable (TrustStore then says why). */
  claimed: number | undefined;
  reported: boolean;
}

type Outcome = 'accepted' | 'refused' | 'ignored' | 'failed';

export const DEFAULT_SKIP_GRACE_MS = 2000;
const DEFAULT_MAX_AHEAD = 100;
const DEFAULT_MAX_PENDING_BYTES = 8 * 1024 * 1024;

export class TrustChain {
  private readonly o: TrustChainOptions;
  private readonly log: Logger;
  /** Envelopes from `{root}/trust/{version}` for versions above the current one. */
  private readonly pending = new Map<number, Buffer>();
  private pendingBytes = 0;
  /** The latest `{root}/trust` message newer than the current trust. */
  private head: Head | undefined;
  /** The version whose `{root}/trust/{version}` was refused last: a head beyond it is not blamed on a missing link. */
  private refusedVersion: number | undefined;
  private walk: Promise<void> | undefined;
  private again = false;
  private graceTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(options: TrustChainOptions) {
    this.o = options;
    this.log = options.logger;
  }

  /** True while versions are being checked and persisted; a desired document waits for it. */
  get walking(): boolean {
    return this.walk !== undefined;
  }

  /** Reports the trust in force; call before subscribing. */
  start(): void {
    this.stopped = false;
    this.o.events.emit({ type: 'trust.loaded', ...this.current() });
  }

  /** Stops walking after the version in hand (bounded: a local check and an fsync'd write). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
    await this.walk;
  }

  /** A message on `{root}/trust`. The same or an older version (every re-subscription replays it) is a no-op. */
  offerHead(payload: Buffer): void {
    if (payload.length === 0) return; // cleared: nothing to rotate to
    const claimed = claimedTrustVersion(parseJson(payload));
    if (claimed !== undefined && claimed <= this.o.store.current.version) return;
    this.head = { payload, claimed, reported: false };
    this.kick();
  }

  /** A message on `{root}/trust/{version}`: one link of the chain. */
  offerVersion(version: number, payload: Buffer): void {
    if (version <= this.o.store.current.version) return; // walked past already
    if (payload.length === 0) {
      this.unpend(version); // cleared
      return;
    }
    if (!this.keep(version, payload)) return;
    // A republished link gets a fresh try.
    if (this.refusedVersion === version) this.refusedVersion = undefined;
    this.kick();
  }

  /**
   * Keeps a link for later, within maxAhead and maxPendingBytes; false when it
   * is dropped. Over the byte bound the highest versions give way to lower
   * ones: those are needed first.
   */
  private keep(version: number, payload: Buffer): boolean {
    this.unpend(version);
    const current = this.o.store.current.version;
    const maxAhead = this.o.maxAhead ?? DEFAULT_MAX_AHEAD;
    const maxBytes = this.o.maxPendingBytes ?? DEFAULT_MAX_PENDING_BYTES;
    for (let highest = Math.max(...this.pending.keys()); this.pendingBytes + payload.length > maxBytes && highest > version; highest = Math.max(...this.pending.keys())) {
      this.unpend(highest);
      this.log.warn({ version: highest, current, maxBytes }, 'trust version dropped to keep a lower one; it comes again with the next subscription');
    }
    if (version > current + maxAhead || this.pendingBytes + payload.length > maxBytes) {
      this.log.warn({ version, current, maxAhead, maxBytes }, 'trust version too far ahead of the current one to keep; it comes again with the next subscription');
      return false;
    }
    this.pending.set(version, payload);
    this.pendingBytes += payload.length;
    return true;
  }

  private unpend(version: number): Buffer | undefined {
    const payload = this.pending.get(version);
    if (payload === undefined) return undefined;
    this.pending.delete(version);
    this.pendingBytes -= payload.length;
    return payload;
  }

  private current(): TrustRef {
    const { version, document } = this.o.store.current;
    return { version, expiresAt: document.expiresAt };
  }

  private kick(): void {
    if (this.stopped) return;
    this.again = true;
    // walkAll always reaches an await first (again is set), so this assignment precedes its finally.
    this.walk ??= this.walkAll();
  }

  private async walkAll(): Promise<void> {
    const from = this.o.store.current.version;
    let accepted = false;
    try {
      while (this.again && !this.stopped) {
        this.again = false;
        if (await this.walkOnce()) accepted = true;
      }
    } finally {
      // Cleared before anyone hears of the end, so a message that comes from here on starts a new walk.
      this.walk = undefined;
    }
    for (const version of [...this.pending.keys()]) if (version <= this.o.store.current.version) this.unpend(version);
    if (accepted) this.log.info({ from, to: this.o.store.current.version }, 'trust chain walked');
    this.watchHead();
    if (this.stopped) return;
    try {
      this.o.onWalked(accepted);
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, 'after the trust walk, the desired state could not be evaluated');
    }
  }

  /** Takes current+1 while one is at hand; true when at least one was accepted. */
  private async walkOnce(): Promise<boolean> {
    let accepted = false;
    for (let next = this.nextCandidate(); next !== undefined && !this.stopped; next = this.nextCandidate()) {
      const outcome = await this.apply(next);
      if (outcome === 'accepted') accepted = true;
      if (outcome === 'failed') break;
    }
    return accepted;
  }

  /** The next candidate for current+1: its link first, else `{root}/trust` when it claims that version. */
  private nextCandidate(): Candidate | undefined {
    const version = this.o.store.current.version + 1;
    const { topicRoot } = this.o;
    const link = this.unpend(version);
    if (link !== undefined) {
      return { topic: topics.trustVersion(topicRoot, version), payload: link, version, topicVersion: version };
    }
    const head = this.head;
    if (head && (head.claimed === undefined || head.claimed === version)) {
      this.head = undefined;
      return { topic: topics.trust(topicRoot), payload: head.payload, version };
    }
    return undefined;
  }

  private async apply(candidate: Candidate): Promise<Outcome> {
    const before = this.current();
    let result: RotationResult;
    try {
      result = await this.o.store.handleRotation(candidate.payload, candidate.topicVersion === undefined ? {} : { topicVersion: candidate.topicVersion });
    } catch (err) {
      // Not persisted (disk full, read-only): the trust in force stays, and the next message tries again.
      if (candidate.topicVersion === undefined) this.head ??= { payload: candidate.payload, claimed: candidate.version, reported: false };
      else if (!this.pending.has(candidate.topicVersion)) this.keep(candidate.topicVersion, candidate.payload);
      this.reject(before, `${candidate.topic}: trust version ${candidate.version} could not be saved: ${errorMessage(err)}`);
      return 'failed';
    }
    if (result.accepted) {
      this.refusedVersion = undefined;
      this.o.events.emit({ type: 'trust.updated', topic: candidate.topic, ...this.current() });
      return 'accepted';
    }
    if (!result.error) return 'ignored';
    if (candidate.topicVersion !== undefined) this.refusedVersion = candidate.version;
    this.reject(before, `${candidate.topic}: ${result.error.message}`);
    return 'refused';
  }

  private reject(current: TrustRef, error: string): void {
    this.log.warn({ current: current.version, err: error }, 'trust not updated');
    this.o.events.emit({ type: 'trust.rejected', current, error });
  }

  /** A `{root}/trust` still ahead after the walk is reported once skipGraceMs has passed without the versions between. */
  private watchHead(): void {
    const head = this.head;
    if (head?.claimed !== undefined && head.claimed <= this.o.store.current.version) this.head = undefined; // walked to it
    if (!this.head || this.head.reported || this.graceTimer !== undefined || this.stopped) return;
    this.graceTimer = setTimeout(() => {
      this.graceTimer = undefined;
      this.reportSkip();
    }, this.o.skipGraceMs ?? DEFAULT_SKIP_GRACE_MS);
    this.graceTimer.unref();
  }

  private reportSkip(): void {
    const head = this.head;
    // A walk in progress calls watchHead again when it ends.
    if (this.stopped || this.walk !== undefined || !head || head.reported || head.claimed === undefined) return;
    const current = this.o.store.current.version;
    if (head.claimed <= current + 1) return;
    head.reported = true;
    // A refused link already says why the chain stops here.
    if (this.refusedVersion === current + 1) return;
    const { topicRoot } = this.o;
    this.reject(
      this.current(),
      `${topics.trust(topicRoot)}: trust version ${head.claimed} skips past the current version ${current}; only version ${current + 1} is accepted, ` +
        `and nothing arrived on ${topics.trustVersion(topicRoot, current + 1)} to walk the chain (publish every version with \`edgefleet trust rotate --publish\`)`,
    );
  }
}

function parseJson(payload: Buffer): unknown {
  try {
    return JSON.parse(payload.toString('utf8'));
  } catch {
    return undefined;
  }
}
