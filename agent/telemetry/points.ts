import type { HealthPoint, InferencePoint } from '../../protocol/index.js';

/**
 * Telemetry points as the agent builds them (docs/protocol.md section 7). The
 * outbox gives each its `seq` when it stores it, so producers build points
 * without one.
 */

/**
 * Points the outbox had to discard to stay within its bounds while the broker
 * was away. Not in protocol/reported.ts: readers skip unknown kinds, and a
 * collector that knows this one can tell a gap in `seq` from a lost batch.
 */
export interface DroppedPoint {
  seq: number;
  ts: string;
  kind: 'dropped';
  /** Points discarded since the previous "dropped" point. */
  count: number;
  /** Lowest and highest seq discarded in that period (every discarded seq lies in between). */
  fromSeq: number;
  toSeq: number;
  /** Points this device has ever discarded, this report included. */
  totalDropped: number;
}

/** Extra inference field: 4xx answers, kept out of `errors` (see recorder.ts). */
export type AgentInferencePoint = InferencePoint & { clientErrors: number };

/** Extra health fields: the host's uptime (uptimeS is the agent's), and what timed out. */
export type AgentHealthPoint = HealthPoint & { systemUptimeS: number; timedOut?: string[] };

export type AgentPoint = AgentInferencePoint | AgentHealthPoint | DroppedPoint;

type WithoutSeq<T> = T extends unknown ? Omit<T, 'seq'> : never;
/** A point before the outbox has numbered it. */
export type NewPoint = WithoutSeq<AgentPoint>;

/** Where producers hand their points; the outbox in the agent, an array in some tests. */
export interface PointSink {
  /** Stores the points durably (committed when this returns) and numbers them; with no room on the state filesystem the outbox counts them as dropped instead. */
  append(points: readonly NewPoint[]): void;
}
