import type { HealthPoint, InferencePoint, ShadowPoint } from '../../protocol/index.js';

/**
 * Telemetry points as the agent builds them (docs/protocol.md section 7). The
 * outbox gives each its `seq` when it stores it, so producers build points
 * without one.
 */

/** Why points were dropped: the outbox bound, or no room on the state filesystem. */
export type DropReason = 'buffer full' | 'no space';

/**
 * Points the device had to drop (PROTOCOL.md section 13). `oldestSeq`..`newestSeq`
 * are the seqs lost for 'buffer full'; points refused on a full disk ('no space')
 * were never numbered, so lost no seq: both are 0 there.
 */
export interface DroppedPoint {
  seq: number;
  ts: string;
  kind: 'dropped';
  /** Points dropped for this reason since the previous report of it. */
  count: number;
  oldestSeq: number;
  newestSeq: number;
  reason: DropReason;
  /** Points this device has ever dropped, for any reason, this report included (an extra field). */
  totalDropped: number;
}

/** Extra inference field: 4xx answers, kept out of `errors` (see recorder.ts). */
export type AgentInferencePoint = InferencePoint & { clientErrors: number };

/** Extra health fields: the host's uptime (uptimeS is the agent's), and what timed out. outboxRows/outboxBytes are section 13's. */
export type AgentHealthPoint = HealthPoint & { systemUptimeS: number; timedOut?: string[] };

/**
 * Extra shadow fields (PROTOCOL.md section 11 is the rest): sampled requests not run because
 * the candidate was busy, and candidate runs that failed (each a disagreement).
 */
export type AgentShadowPoint = ShadowPoint & { skipped: number; candidateErrors: number };

export type AgentPoint = AgentInferencePoint | AgentHealthPoint | DroppedPoint | AgentShadowPoint;

type WithoutSeq<T> = T extends unknown ? Omit<T, 'seq'> : never;
/** A point before the outbox has numbered it. */
export type NewPoint = WithoutSeq<AgentPoint>;

/** Where producers hand their points; the outbox in the agent, an array in some tests. */
export interface PointSink {
  /** Stores the points durably (committed when this returns) and numbers them; with no room on the state filesystem the outbox counts them as dropped instead. */
  append(points: readonly NewPoint[]): void;
}
