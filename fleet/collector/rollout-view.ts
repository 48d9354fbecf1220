/**
 * What the dashboard (and `rollout status --json`) shows of staged rollouts:
 * the records without the manifests' bytes (the browser never gets a
 * manifest), a compact line per rollout for the list, and per wave device
 * what it reports: its desired-state status, whether it applied this
 * rollout's document, whether it serves the new versions. Pure: the HTTP
 * server reads the store and hands the states in.
 */
import type { ReportedState } from '../../protocol/index.js';
import type { Rollout, RolloutModel, RolloutPhase, RolloutSpec, RolloutStatus, WaveRecord } from '../rollout/planner.js';
import type { DeviceState } from './store.js';

/** A rollout id (`rollout start --name`). */
export const ROLLOUT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export const DEFAULT_ROLLOUT_LIMIT = 20;
export const MAX_ROLLOUT_LIMIT = 100;
/** Device rows sent per wave; the tally covers all of them. */
export const MAX_WAVE_DEVICES = 500;

export type ModelRef = Omit<RolloutModel, 'manifest'>;

const refOf = ({ name, version, labels }: RolloutModel): ModelRef => ({ name, version, labels });

export type RolloutSummary = Omit<Rollout, 'spec' | 'previous'> & {
  spec: Omit<RolloutSpec, 'models'> & { models: ModelRef[] };
  previous: ModelRef[] | null;
};

/** The record without the manifests' bytes. */
export function rolloutSummary(r: Rollout): RolloutSummary {
  return { ...r, spec: { ...r.spec, models: r.spec.models.map(refOf) }, previous: r.previous?.map(refOf) ?? null };
}

/** One line of the dashboard's rollout list. */
export interface RolloutListItem {
  id: string;
  createdAt: number;
  updatedAt: number;
  group: string;
  models: ModelRef[];
  previous: ModelRef[] | null;
  status: RolloutStatus;
  phase: RolloutPhase;
  /** Index of the current wave, and how many there are. */
  wave: number;
  waveCount: number;
  reason: string | null;
}

export function rolloutListItem(r: Rollout): RolloutListItem {
  return {
    id: r.id, createdAt: r.createdAt, updatedAt: r.updatedAt, group: r.spec.group, models: r.spec.models.map(refOf),
    previous: r.previous?.map(refOf) ?? null, status: r.status, phase: r.phase, wave: r.wave, waveCount: r.waves.length, reason: r.reason,
  };
}

/** A wave device as the collector last heard of it. */
export interface WaveDevice {
  device: string;
  /** Whether the collector has its status or reported state; false: nothing below is known. */
  reported: boolean;
  /** Whether its reported state lists the rollout's group (the devices the controller judges). */
  inGroup: boolean;
  online: boolean | null;
  desired: ReportedState['desired'];
  /** The serial of the last device document this rollout published for it; null before its wave started. */
  documentSerial: number | null;
  /** It reports that document (or a later device document) applied and serves every new version: what the planner counts. */
  applied: boolean;
  /** It serves every version the rollout brings, whichever document it got them from. */
  servesNew: boolean;
  /** The rollout's models as the device reports them (other models left out). */
  models: ReportedState['models'];
}

export interface WaveTally {
  devices: number;
  applied: number;
  servesNew: number;
  offline: number;
  /** Its document failed or was rejected, or a new version was rejected, failed or rolled back. */
  failed: number;
}

export interface WaveView extends WaveRecord {
  tally: WaveTally;
  /** The first MAX_WAVE_DEVICES devices of the wave, in its order. */
  states: WaveDevice[];
}

export type RolloutDetail = Omit<RolloutSummary, 'waves'> & { waves: WaveView[] };

const BAD_MODEL_STATES = new Set(['rejected', 'failed', 'rolled_back']);

function waveDevice(r: Rollout, device: string, row: DeviceState | undefined, serial: number | undefined): WaveDevice {
  const models = (row?.models ?? []).filter((m) => r.spec.models.some((n) => n.name === m.name));
  const servesNew = row !== undefined && r.spec.models.every((n) => models.some((m) => m.version === n.version && m.name === n.name && m.state === 'serving'));
  const d = row?.desired ?? null;
  const applied = servesNew && serial !== undefined && d !== null && d.source === 'device' && d.serial >= serial && d.status === 'applied';
  return { device, reported: row !== undefined, inGroup: row?.groups.includes(r.spec.group) ?? false, online: row?.online ?? null, desired: d, documentSerial: serial ?? null, applied, servesNew, models };
}

function failed(r: Rollout, s: WaveDevice): boolean {
  const d = s.desired;
  if (d?.source === 'device' && d.serial === s.documentSerial && (d.status === 'failed' || d.status === 'rejected')) return true;
  return s.models.some((m) => BAD_MODEL_STATES.has(m.state) && r.spec.models.some((n) => n.name === m.name && n.version === m.version));
}

/**
 * The record with, per wave, its devices' reported states. `rows`: the
 * plan's devices as the store has them; `serials`: the device documents
 * this rollout published, per device.
 */
export function rolloutDetail(r: Rollout, rows: readonly DeviceState[], serials: ReadonlyMap<string, number>): RolloutDetail {
  const byDevice = new Map(rows.map((row) => [row.device, row]));
  const summary = rolloutSummary(r);
  return {
    ...summary,
    waves: r.waves.map((w) => {
      const all = w.devices.map((d) => waveDevice(r, d, byDevice.get(d), serials.get(d)));
      const tally: WaveTally = {
        devices: all.length,
        applied: all.filter((s) => s.applied).length,
        servesNew: all.filter((s) => s.servesNew).length,
        offline: all.filter((s) => s.online === false).length,
        failed: all.filter((s) => failed(r, s)).length,
      };
      return { ...w, tally, states: all.slice(0, MAX_WAVE_DEVICES) };
    }),
  };
}

export class RolloutQueryError extends Error {}

/** `/api/rollouts`' query: `limit` (1 to MAX_ROLLOUT_LIMIT) and `active` (true: running or paused only); every problem named at once. */
export function parseRolloutQuery(q: URLSearchParams): { limit: number; active: boolean } {
  const problems: string[] = [];
  for (const key of q.keys()) if (key !== 'limit' && key !== 'active') problems.push(`unknown parameter "${key}" (known: limit, active)`);
  const limitText = q.get('limit') ?? '';
  const limit = limitText === '' ? DEFAULT_ROLLOUT_LIMIT : /^\d+$/.test(limitText) ? Number(limitText) : NaN;
  if (!(limit >= 1 && limit <= MAX_ROLLOUT_LIMIT)) problems.push(`limit must be an integer from 1 to ${MAX_ROLLOUT_LIMIT}, got "${limitText}"`);
  const activeText = q.get('active') ?? '';
  if (!['', 'true', 'false', '1', '0'].includes(activeText)) problems.push(`active must be true or false, got "${activeText}"`);
  if (problems.length > 0) throw new RolloutQueryError(problems.join('; '));
  return { limit, active: activeText === 'true' || activeText === '1' };
}
