import { createHash } from 'node:crypto';
import type { Target } from '../../protocol/names.js';

export interface Candidate {
  target: Target;
  /** `device` or `group:{name}`: the key serials are tracked under. */
  key: string;
  payload: Buffer;
  hash: string;
}

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

  /** Whether a zero-length message removed this target's document since this agent started. */
  removed(key: string): boolean {
    return this.removedKeys.has(key);
  }

  /** Precedence of a target: 0 for the device, then its groups in configuration order; a group no longer configured comes last. */
  rank(key: string): number {
    if (key === 'device') return 0;
    const i = this.groups.findIndex((g) => `group:${g}` === key);
    return i < 0 ? Infinity : i + 1;
  }
}
