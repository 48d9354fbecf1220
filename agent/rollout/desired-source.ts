import { createHash } from 'node:crypto';
import type { Target } from '../../protocol/names.js';

export interface Candidate {
  target: Target;
  /** `device` or `group:{name}`: the key serials are tracked under. */
  key: string;
  payload: Buffer;
  hash: string;
}

/** How long a fallback document waits for the absent document in force to arrive (DesiredSource.fallbackWaitMs). */
export const FALLBACK_GRACE_MS = 2000;

export const targetKey = (target: Target): string => ('device' in target && target.device !== undefined ? 'device' : `group:${target.group}`);

/**
 * The latest retained desired document per target. Which one counts: the
 * device's own if there is one, else the first of its groups, in configuration
 * order, that has one (docs/protocol.md section 6). An empty retained message
 * clears a target.
 */
export class DesiredSource {
  private readonly latest = new Map<string, Candidate>();
  /** Targets whose document a zero-length message removed (section 10), until a new one comes. */
  private readonly removedKeys = new Set<string>();
  /** A fallback document waiting since when (fallbackWaitMs). */
  private waiting: { key: string; since: number } | undefined;

  constructor(private readonly groups: readonly string[]) {}

  offer(target: Target, payload: Buffer): void {
    const key = targetKey(target);
    if (payload.length === 0) {
      this.latest.delete(key);
      this.removedKeys.add(key);
    } else {
      this.latest.set(key, { target, key, payload, hash: createHash('sha256').update(payload).digest('hex') });
      this.removedKeys.delete(key);
    }
  }

  counting(): Candidate | undefined {
    return this.latest.get('device') ?? this.groups.map((g) => this.latest.get(`group:${g}`)).find((c) => c !== undefined);
  }

  /**
   * How long `candidate` must still wait before it counts in place of the
   * document in force (of target `inForce`); 0: it counts now. A document of
   * lower precedence than the one in force is a fallback (section 10): it
   * counts at once when that one was seen removed (a zero-length message),
   * else only after FALLBACK_GRACE_MS without it. A broker need not deliver
   * the retained documents of several topic filters in order, so after a
   * (re)subscribe a group's may come before the device's; without the wait
   * the device would switch to the group's set and back. A document removed
   * while the agent was away sends nothing to see: the wait ends it.
   */
  fallbackWaitMs(candidate: Candidate, inForce: string | undefined, now = Date.now()): number {
    const fallback = inForce !== undefined && this.rank(candidate.key) > this.rank(inForce) && !this.removedKeys.has(inForce);
    if (!fallback) {
      this.waiting = undefined;
      return 0;
    }
    if (this.waiting?.key !== candidate.key) this.waiting = { key: candidate.key, since: now };
    return Math.max(0, this.waiting.since + FALLBACK_GRACE_MS - now);
  }

  /** Precedence of a target: 0 for the device, then its groups in configuration order; a group no longer configured comes last. */
  private rank(key: string): number {
    if (key === 'device') return 0;
    const i = this.groups.findIndex((g) => `group:${g}` === key);
    return i < 0 ? Infinity : i + 1;
  }
}
