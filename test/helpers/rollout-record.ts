import { newRollout, parseWaves, type Rollout, type RolloutSpec } from '../../fleet/rollout/planner.js';

/** A manifest envelope no one verifies: the records only carry it. */
const envelope = { payloadType: 't', payload: '', signatures: [] };

/**
 * A rollout record as `edgefleet rollout start` writes it (waves 1,100%,
 * gates at their usual values), rolling out `models` (name and version) to
 * `devices` of `group`; the spec's other fields can be given.
 */
export function rolloutRecord(id: string, group: string, models: [string, number][], devices: readonly string[], spec: Partial<RolloutSpec> = {}, now = Date.now()): Rollout {
  return newRollout(id, {
    group, models: models.map(([name, version]) => ({ name, version, labels: [], manifest: envelope })), waves: parseWaves('1,100%'), canary: [],
    minApplied: 1, applyTimeoutMs: 60_000, soakMs: 0, maxErrorRate: 0.01, maxP99Increase: 0.25, p99SlackMs: 1, minRequests: 10,
    shadow: null, onFailure: 'pause', documentTtlMs: 86_400_000, ...spec,
  }, devices, now);
}
