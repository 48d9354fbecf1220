/**
 * The staged-rollout planner: pure functions from a rollout's record and
 * what the fleet reports to the next record and the documents to publish.
 * No I/O and no clock of its own (`now` comes in), so every decision (which
 * device is in which wave, when a wave has applied, whether its gates hold,
 * what a failure does) is unit-tested without a broker or a store, as the
 * agent's own planner is. The controller (controller.ts) runs it.
 *
 * A rollout moves its group's devices from the versions they serve to new
 * ones in waves: each wave's devices get a device document listing the new
 * versions (section 6; with a shadow block when asked, section 11), the
 * wave must apply, soak, and pass its gates before the next starts. The
 * last wave publishes the group document and then removes the device
 * documents (section 10), so every device, also one offline all along,
 * ends on the group document.
 */
import { createHash } from 'node:crypto';
import type { Envelope, ReportedState } from '../../protocol/index.js';

export interface RolloutModel {
  name: string;
  version: number;
  labels: string[];
  manifest: Envelope;
}

/** Section 11's shadow block, as the wave documents carry it. */
export interface ShadowSpec {
  sampleRate: number;
  minSamples: number;
  maxDurationS: number;
  compare: 'argmax' | 'allclose';
  atol: number;
  rtol: number;
  minAgreement: number;
  onTimeout: 'activate' | 'reject';
}

/** A wave's size: devices in all waves up to this one, as a count or a share of the group. */
export type WaveSize = { count: number } | { percent: number };

export interface RolloutSpec {
  group: string;
  /** Exactly what the devices serve afterwards (as `deploy` lists it). */
  models: RolloutModel[];
  waves: WaveSize[];
  /** Devices that make up the first wave, whatever its size. */
  canary: string[];
  /** Share of a wave's devices (0..1] that must report the new versions applied. */
  minApplied: number;
  applyTimeoutMs: number;
  soakMs: number;
  /** Highest error rate (errors / requests, 0..1) the wave's devices may show on the new versions. */
  maxErrorRate: number;
  /** Highest p99 increase (0.25 = 25 %) over the same devices on the old version, corrected by the devices still on it. */
  maxP99Increase: number;
  /** A p99 increase of at most this many milliseconds passes whatever its ratio (absent in records from before it: 0). */
  p99SlackMs?: number;
  /** Requests a wave must serve on the new versions before its gates are judged. */
  minRequests: number;
  shadow: ShadowSpec | null;
  onFailure: 'rollback' | 'pause';
  /** Lifetime of each document published. */
  documentTtlMs: number;
}

export type RolloutStatus = 'running' | 'paused' | 'succeeded' | 'failed' | 'aborted';
/** Where a running rollout is: its current wave's step, then the group document and the clean-up. */
export type RolloutPhase = 'publish' | 'apply' | 'soak' | 'finalize' | 'clear' | 'done';
export type RolloutRequest = 'pause' | 'resume' | 'abort' | 'abort-rollback';

export interface GateResult {
  name: 'applied' | 'devices' | 'requests' | 'error-rate' | 'p99' | 'shadow';
  /** The measured figure; null when there was nothing to measure. */
  value: number | null;
  threshold: number;
  /** null: not judged yet (waiting for data). */
  ok: boolean | null;
  detail: string;
}

export interface WaveRecord {
  devices: string[];
  startedAt: number | null;
  appliedAt: number | null;
  gates: GateResult[];
  outcome: 'pending' | 'running' | 'passed' | 'failed' | 'rolled_back';
}

export interface Rollout {
  id: string;
  createdAt: number;
  spec: RolloutSpec;
  status: RolloutStatus;
  phase: RolloutPhase;
  /** Index of the current wave. */
  wave: number;
  phaseSince: number;
  /** Why it stopped, paused or failed; null while all is well. */
  reason: string | null;
  /** What the group served before (the group document's models), read when the rollout starts; null until then. */
  previous: RolloutModel[] | null;
  waves: WaveRecord[];
  /** Asked for from the command line, taken at the next tick. */
  requested: RolloutRequest | null;
  /** Bumped on every write: writers compare it (optimistic concurrency). */
  revision: number;
  updatedAt: number;
}

/** The reason of a rollout an operator paused (a gate's pause names the wave and the gate instead). */
export const PAUSED_BY_OPERATOR = 'paused from the command line';

/**
 * Whether a rollout stopped on a gate: failed, or paused by the controller
 * (a pause from the command line is the operator's, not a halt). The fleet
 * metrics' `edgefleet_rollout_halted` and the built-in EdgefleetRolloutHalted
 * alert both read it.
 */
export function rolloutHalted(r: Rollout): boolean {
  return r.status === 'failed' || (r.status === 'paused' && r.reason !== null && r.reason !== PAUSED_BY_OPERATOR);
}

/**
 * The rollouts an alert or a metric looks at, of a newest-first list: every
 * running or paused one, and each group's newest (whatever its status), so a
 * failed rollout stays halted until the next rollout of its group starts, and
 * old ones drop out.
 */
export function currentRollouts(rollouts: readonly Rollout[]): Rollout[] {
  const groups = new Set<string>();
  const out: Rollout[] = [];
  for (const r of rollouts) {
    const newestOfGroup = !groups.has(r.spec.group);
    groups.add(r.spec.group);
    if (newestOfGroup || r.status === 'running' || r.status === 'paused') out.push(r);
  }
  return out;
}

export const PERCENT_RE = /^(\d+(?:\.\d+)?)%$/;

/** `1,10%,50%,100%`: device counts and shares of the group, cumulative, growing. */
export function parseWaves(text: string): WaveSize[] {
  const sizes = text.split(',').map((part): WaveSize => {
    const p = PERCENT_RE.exec(part.trim());
    if (p) {
      const percent = Number(p[1]);
      if (!(percent > 0 && percent <= 100)) throw new Error(`wave "${part}" must be a share above 0% and at most 100%`);
      return { percent };
    }
    if (!/^\d+$/.test(part.trim()) || Number(part) < 1) throw new Error(`wave "${part}" must be a device count (1 or more) or a share such as 10%`);
    return { count: Number(part) };
  });
  if (sizes.length === 0) throw new Error('name at least one wave');
  return sizes;
}

/** How many devices of `total` the waves up to and including each one hold. */
export function waveTargets(sizes: readonly WaveSize[], total: number): number[] {
  let reached = 0;
  return sizes.map((s, i) => {
    const wanted = 'count' in s ? s.count : Math.ceil((s.percent / 100) * total);
    // The last wave takes everyone; the others at least one more than the wave before, while devices remain.
    reached = i === sizes.length - 1 ? total : Math.min(total, Math.max(wanted, reached + 1));
    return reached;
  });
}

/**
 * Which devices are in which wave. The canaries come first (their own wave
 * when there are any), then the rest in an order drawn from the rollout id:
 * stable for a given id, different between rollouts, so the same boards do
 * not always go first. Empty waves are left out.
 */
export function planWaves(id: string, devices: readonly string[], sizes: readonly WaveSize[], canary: readonly string[] = []): string[][] {
  const canaries = canary.filter((d) => devices.includes(d));
  const rank = (d: string): string => createHash('sha256').update(`${id}\0${d}`).digest('hex');
  const rest = devices.filter((d) => !canaries.includes(d)).sort((a, b) => (rank(a) < rank(b) ? -1 : rank(a) > rank(b) ? 1 : 0));
  const waves: string[][] = [];
  if (canaries.length > 0) waves.push(canaries);
  let from = 0;
  for (const upTo of waveTargets(sizes, rest.length)) {
    if (upTo > from) waves.push(rest.slice(from, upTo));
    from = upTo;
  }
  return waves;
}

// ---------------------------------------------------------------------------
// What a tick sees

/** A device's reported state and status, as the collector stored them. */
export interface DeviceView {
  online: boolean | null;
  desired: ReportedState['desired'];
  models: ReportedState['models'];
}

/** One stored inference interval (a telemetry point). */
export interface Interval {
  device: string;
  model: string;
  version: number;
  /** Interval end, epoch ms. */
  ts: number;
  count: number;
  errors: number;
  p99: number | null;
}

/** A device's shadow-evaluation figures at one time (a stored `shadow` point, section 11). */
export interface ShadowSample {
  device: string;
  model: string;
  version: number;
  ts: number;
  samples: number;
  agreed: number;
  verdict: 'activated' | 'rejected' | null;
}

export interface Observation {
  now: number;
  /** Reported state of the group's devices (and of every device in the plan). */
  devices: ReadonlyMap<string, DeviceView>;
  /** The serial of the last device document this rollout published per device. */
  published: ReadonlyMap<string, number>;
  /** Inference intervals of the plan's devices from `windowFrom` on, for the gates. */
  intervals: readonly Interval[];
  /** Shadow points of the wave's devices since it started (with a shadow block only). */
  shadows?: readonly ShadowSample[];
}

/** What the controller must publish for a step; it signs, records and publishes them before the step counts. */
export type Action =
  | { kind: 'devices'; devices: string[]; models: 'new' | 'previous' }
  | { kind: 'group' }
  | { kind: 'clear'; devices: string[] };

export interface Step {
  rollout: Rollout;
  actions: Action[];
}

/** How far back the gates look: the wave's soak, and as long again before the wave started. */
export function windowFrom(r: Rollout): number {
  const wave = r.waves[r.wave];
  const start = wave?.startedAt ?? r.phaseSince;
  const soakFrom = wave?.appliedAt ?? r.phaseSince;
  return start - Math.max(r.spec.soakMs, 60_000) - Math.max(0, soakFrom - start);
}

/** Time after the group document before the device documents go, so it reaches the devices first. */
export const CLEAR_SETTLE_MS = 5_000;

/** Every device this rollout has given a device document so far (waves started). */
export function devicesGiven(r: Rollout): string[] {
  return r.waves.filter((w) => w.startedAt !== null).flatMap((w) => w.devices);
}

/** The next record and its actions. Pure: the same record and observation give the same step. */
export function step(current: Rollout, obs: Observation): Step {
  const r: Rollout = structuredClone(current);
  const { now } = obs;
  const actions: Action[] = [];
  const touch = (): Step => {
    r.revision = current.revision + 1;
    r.updatedAt = now;
    return { rollout: r, actions };
  };
  const moveTo = (phase: RolloutPhase): void => {
    r.phase = phase;
    r.phaseSince = now;
  };

  // Requests from the command line come first.
  const asked = r.requested;
  if (asked !== null) {
    r.requested = null;
    if ((asked === 'abort' || asked === 'abort-rollback') && (r.status === 'running' || r.status === 'paused')) {
      r.status = 'aborted';
      r.reason = asked === 'abort-rollback' ? 'aborted from the command line; devices put back' : 'aborted from the command line';
      const given = devicesGiven(r);
      if (asked === 'abort-rollback' && given.length > 0) {
        actions.push({ kind: 'devices', devices: given, models: 'previous' });
        for (const w of r.waves) if (w.startedAt !== null) w.outcome = 'rolled_back';
      }
      return touch();
    }
    if (asked === 'pause' && r.status === 'running') {
      r.status = 'paused';
      r.reason = PAUSED_BY_OPERATOR;
      return touch();
    }
    if (asked === 'resume' && r.status === 'paused') {
      r.status = 'running';
      r.reason = null;
      // Deadlines start again; a wave paused on a failed gate soaks again before it is judged.
      if (r.phase === 'soak' || r.phase === 'apply') {
        const wave = r.waves[r.wave];
        if (wave && r.phase === 'soak') wave.appliedAt = now;
        if (wave) wave.outcome = 'running';
      }
      r.phaseSince = now;
      return touch();
    }
    if (asked !== null) return touch(); // a request that does not apply in this state is dropped
  }
  if (r.status !== 'running') return { rollout: current, actions };

  const wave = r.waves[r.wave];
  switch (r.phase) {
    case 'publish': {
      if (wave === undefined) {
        moveTo('finalize');
        return touch();
      }
      wave.startedAt = now;
      wave.outcome = 'running';
      actions.push({ kind: 'devices', devices: wave.devices, models: 'new' });
      moveTo('apply');
      return touch();
    }
    case 'apply': {
      if (wave === undefined) throw new Error(`rollout ${r.id}: apply with no wave ${r.wave}`);
      const progress = applyProgress(r, wave, obs);
      wave.gates = [progress.applied, progress.devices];
      if (progress.devices.ok === false) return fail(r, wave, progress.devices.detail, actions, touch);
      if (progress.applied.ok === true) {
        wave.appliedAt = now;
        moveTo('soak');
        return touch();
      }
      if (now - r.phaseSince >= r.spec.applyTimeoutMs) {
        return fail(r, wave, `${progress.applied.detail} within ${formatDuration(r.spec.applyTimeoutMs)}`, actions, touch);
      }
      return changed(current, r) ? touch() : { rollout: current, actions };
    }
    case 'soak': {
      if (wave === undefined) throw new Error(`rollout ${r.id}: soak with no wave ${r.wave}`);
      const progress = applyProgress(r, wave, obs);
      if (progress.devices.ok === false) {
        wave.gates = [progress.applied, progress.devices];
        return fail(r, wave, progress.devices.detail, actions, touch);
      }
      if (now - r.phaseSince < r.spec.soakMs) return { rollout: current, actions };
      const verdict = evaluateGates(r, wave, obs);
      wave.gates = [progress.applied, progress.devices, ...verdict.gates];
      if (verdict.verdict === 'pass') {
        wave.outcome = 'passed';
        r.wave += 1;
        moveTo(r.wave < r.waves.length ? 'publish' : 'finalize');
        return touch();
      }
      if (verdict.verdict === 'fail') return fail(r, wave, verdict.reason, actions, touch);
      // Not enough requests yet: soak on, up to the apply timeout past the soak.
      if (now - r.phaseSince >= r.spec.soakMs + r.spec.applyTimeoutMs) return fail(r, wave, verdict.reason, actions, touch);
      return changed(current, r) ? touch() : { rollout: current, actions };
    }
    case 'finalize': {
      actions.push({ kind: 'group' });
      moveTo('clear');
      return touch();
    }
    case 'clear': {
      if (now - r.phaseSince < CLEAR_SETTLE_MS) return { rollout: current, actions };
      const given = devicesGiven(r);
      if (given.length > 0) actions.push({ kind: 'clear', devices: given });
      r.status = 'succeeded';
      r.reason = null;
      moveTo('done');
      return touch();
    }
    case 'done':
      return { rollout: current, actions };
  }
}

const changed = (a: Rollout, b: Rollout): boolean => JSON.stringify(a) !== JSON.stringify(b);

function fail(r: Rollout, wave: WaveRecord, why: string, actions: Action[], done: () => Step): Step {
  r.reason = `wave ${r.wave + 1}: ${why}`;
  if (r.spec.onFailure === 'pause') {
    r.status = 'paused';
    wave.outcome = 'failed';
    return done();
  }
  r.status = 'failed';
  wave.outcome = 'rolled_back';
  actions.push({ kind: 'devices', devices: wave.devices, models: 'previous' });
  return done();
}

/** A device serves the new versions from its own document (this rollout's serial or a later one). */
function hasApplied(spec: RolloutSpec, view: DeviceView | undefined, serial: number | undefined): boolean {
  if (view?.desired == null || serial === undefined) return false;
  const d = view.desired;
  if (d.source !== 'device' || d.serial < serial || d.status !== 'applied') return false;
  return spec.models.every((m) => view.models.some((x) => x.name === m.name && x.version === m.version && x.state === 'serving'));
}

/** Why a device of the wave failed the new versions, if it did: its document failed or was rejected, a version was rejected or rolled back. */
function deviceProblem(spec: RolloutSpec, view: DeviceView | undefined, serial: number | undefined): string | undefined {
  if (view === undefined || serial === undefined) return undefined;
  const d = view.desired;
  if (d?.source === 'device' && d.serial === serial && (d.status === 'failed' || d.status === 'rejected')) {
    return `its document was ${d.status}${d.error ? `: ${d.error}` : ''}`;
  }
  for (const m of spec.models) {
    const x = view.models.find((v) => v.name === m.name && v.version === m.version);
    if (x && (x.state === 'rejected' || x.state === 'failed' || x.state === 'rolled_back')) {
      return `${m.name}:${m.version} ${x.state.replace('_', ' ')}${x.error ? `: ${x.error}` : ''}`;
    }
  }
  return undefined;
}

function applyProgress(r: Rollout, wave: WaveRecord, obs: Observation): { applied: GateResult; devices: GateResult } {
  const n = wave.devices.length;
  const applied = wave.devices.filter((d) => hasApplied(r.spec, obs.devices.get(d), obs.published.get(d))).length;
  const share = n === 0 ? 1 : applied / n;
  const problems: string[] = [];
  for (const d of wave.devices) {
    const why = deviceProblem(r.spec, obs.devices.get(d), obs.published.get(d));
    if (why !== undefined) problems.push(`${d}: ${why}`);
    // Offline counts once the device had applied: it went away on the new version.
    else if (obs.devices.get(d)?.online === false && hasApplied(r.spec, obs.devices.get(d), obs.published.get(d))) problems.push(`${d}: went offline`);
  }
  return {
    applied: {
      name: 'applied', value: share, threshold: r.spec.minApplied, ok: share >= r.spec.minApplied,
      detail: `${applied}/${n} devices applied (need ${formatPercent(r.spec.minApplied)})`,
    },
    devices: {
      name: 'devices', value: problems.length, threshold: 0, ok: problems.length === 0 ? null : false,
      detail: problems.length === 0 ? 'no device rejected, rolled back or went offline' : problems.slice(0, 5).join('; ') + (problems.length > 5 ? ` (and ${problems.length - 5} more)` : ''),
    },
  };
}

// ---------------------------------------------------------------------------
// Gates

/**
 * The request-weighted median of intervals' p99: what a device's latency
 * was over a window, robust to single intervals that swing (a loaded board
 * was seen to show 11x on an unchanged model for one interval).
 */
export function weightedMedianP99(intervals: readonly Interval[]): number | null {
  const xs = intervals.filter((i) => i.p99 !== null && i.count > 0).sort((a, b) => (a.p99 as number) - (b.p99 as number));
  const total = xs.reduce((n, i) => n + i.count, 0);
  if (total === 0) return null;
  let seen = 0;
  for (const i of xs) {
    seen += i.count;
    if (seen * 2 >= total) return i.p99;
  }
  return null;
}

const median = (values: readonly number[]): number | null => {
  if (values.length === 0) return null;
  const xs = [...values].sort((a, b) => a - b);
  const mid = Math.floor(xs.length / 2);
  return xs.length % 2 === 1 ? (xs[mid] as number) : ((xs[mid - 1] as number) + (xs[mid] as number)) / 2;
};

/**
 * Per device, the request-weighted median p99 before and after; the median
 * ratio after/before and the median p99 before, over the devices with both.
 */
function ratioOf(devices: readonly string[], before: (d: string) => Interval[], after: (d: string) => Interval[]): { ratio: number | null; base: number | null; devices: number } {
  const ratios: number[] = [];
  const bases: number[] = [];
  for (const d of devices) {
    const b = weightedMedianP99(before(d));
    const a = weightedMedianP99(after(d));
    if (a !== null && b !== null && b > 0) {
      ratios.push(a / b);
      bases.push(b);
    }
  }
  return { ratio: median(ratios), base: median(bases), devices: ratios.length };
}

/** Devices on the old version whose median movement is trusted both ways (below it, only a slowdown is). */
export const CONTROL_MIN_DEVICES = 3;

export interface GateVerdict {
  verdict: 'pass' | 'fail' | 'wait';
  gates: GateResult[];
  reason: string;
}

/**
 * The wave's health gates on the collector's data, over its soak (from
 * `appliedAt` to now) against as long a window before the wave started:
 * - requests: at least minRequests on the new versions, or nothing is judged;
 * - error rate of the new versions on the wave's devices;
 * - p99, per changed model: the wave's devices on the new version against
 *   themselves on the old one before the wave (median of per-device ratios
 *   of request-weighted median p99), divided by the same ratio of the
 *   devices still on the old version over the same two windows, so a load
 *   that moves the whole fleet moves the baseline too (with fewer than
 *   CONTROL_MIN_DEVICES of them, only their slowing is taken). An increase of at
 *   most `p99SlackMs` milliseconds passes whatever its ratio: sub-millisecond
 *   latencies swing by multiples on scheduling alone. With no device to
 *   compare against itself, the wave's p99 is compared with the devices on
 *   the old version over the soak.
 */
export function evaluateGates(r: Rollout, wave: WaveRecord, obs: Observation): GateVerdict {
  const spec = r.spec;
  const soakFrom = wave.appliedAt ?? r.phaseSince;
  const start = wave.startedAt ?? soakFrom;
  const length = Math.max(obs.now - soakFrom, 1);
  const inWave = new Set(wave.devices);
  const given = new Set(devicesGiven(r));
  const control = [...obs.devices.keys()].filter((d) => !given.has(d));
  const isNew = (i: Interval): boolean => spec.models.some((m) => m.name === i.model && m.version === i.version);
  const after = (i: Interval): boolean => i.ts > soakFrom && i.ts <= obs.now;
  const before = (i: Interval): boolean => i.ts > start - length && i.ts <= start;

  const fresh = obs.intervals.filter((i) => inWave.has(i.device) && isNew(i) && after(i));
  const requests = fresh.reduce((n, i) => n + i.count, 0);
  const errors = fresh.reduce((n, i) => n + i.errors, 0);
  const gates: GateResult[] = [];
  const enough = requests >= spec.minRequests;
  gates.push({
    name: 'requests', value: requests, threshold: spec.minRequests, ok: enough ? true : null,
    detail: `${requests} requests on the new versions during the soak (need ${spec.minRequests})`,
  });
  if (!enough) return { verdict: 'wait', gates, reason: `not enough requests to judge: ${requests} < ${spec.minRequests} on the new versions` };

  const rate = errors / requests;
  gates.push({
    name: 'error-rate', value: rate, threshold: spec.maxErrorRate, ok: rate <= spec.maxErrorRate,
    detail: `${errors} errors in ${requests} requests (${formatPercent(rate)}, at most ${formatPercent(spec.maxErrorRate)})`,
  });

  const previous = new Map((r.previous ?? []).map((m) => [m.name, m.version]));
  for (const m of spec.models) {
    const old = previous.get(m.name);
    if (old === undefined || old === m.version) continue;
    const of = (device: string, version: number, when: (i: Interval) => boolean): Interval[] =>
      obs.intervals.filter((i) => i.device === device && i.model === m.name && i.version === version && when(i));
    const wave_ = ratioOf(wave.devices, (d) => of(d, old, before), (d) => of(d, m.version, after));
    const ctrl = ratioOf(control, (d) => of(d, old, before), (d) => of(d, old, after));
    let increase: number | null = null;
    /** The increase in milliseconds: below the slack it is noise, whatever the ratio. */
    let addedMs: number | null = null;
    let how: string;
    if (wave_.ratio !== null) {
      // Corrected by how the devices still on the old version moved over the same two windows. With fewer
      // than CONTROL_MIN_DEVICES of them only a slowdown is forgiven: one or two devices' own swing would
      // otherwise turn into a false alarm whenever they happen to get faster.
      const drift = ctrl.ratio === null ? 1 : ctrl.devices >= CONTROL_MIN_DEVICES ? ctrl.ratio : Math.max(1, ctrl.ratio);
      increase = wave_.ratio / drift - 1;
      addedMs = increase * (wave_.base ?? 0) * drift;
      how = `p99 x${wave_.ratio.toFixed(2)} on ${wave_.devices} device(s) against themselves before the wave` +
        (ctrl.ratio !== null ? `, devices still on version ${old} x${ctrl.ratio.toFixed(2)} over the same windows` : ', no device left on the old version to correct by');
    } else {
      const newP99 = median(wave.devices.map((d) => weightedMedianP99(of(d, m.version, after))).filter((x): x is number => x !== null));
      const oldP99 = median(control.map((d) => weightedMedianP99(of(d, old, after))).filter((x): x is number => x !== null));
      if (newP99 !== null && oldP99 !== null && oldP99 > 0) {
        increase = newP99 / oldP99 - 1;
        addedMs = newP99 - oldP99;
        how = `p99 ${newP99.toFixed(2)} ms on the wave against ${oldP99.toFixed(2)} ms on devices still on version ${old} (no p99 from before the wave)`;
      } else {
        how = `no p99 of version ${old} to compare with: not judged`;
      }
    }
    const slack = spec.p99SlackMs ?? 0;
    const within = increase === null || increase <= spec.maxP99Increase || (addedMs !== null && addedMs <= slack);
    const figures = increase === null ? '' : `${increase >= 0 ? '+' : ''}${formatPercent(increase)}${addedMs === null ? '' : ` (${addedMs >= 0 ? '+' : ''}${addedMs.toFixed(2)} ms)`}, at most +${formatPercent(spec.maxP99Increase)} or +${slack} ms; `;
    gates.push({ name: 'p99', value: increase, threshold: spec.maxP99Increase, ok: within, detail: `${m.name}:${m.version}: ${figures}${how}` });
  }
  if (spec.shadow !== null) gates.push(shadowGate(spec.shadow.minAgreement, wave, start, obs.shadows ?? [], spec.models, previous));
  const failed = gates.filter((g) => g.ok === false);
  if (failed.length > 0) return { verdict: 'fail', gates, reason: failed.map((g) => `${g.name} gate: ${g.detail}`).join('; ') };
  return { verdict: 'pass', gates, reason: 'every gate holds' };
}

/**
 * Shadow agreement over the wave's devices, from the collector's data: each
 * device's last shadow point per replaced version since the wave started,
 * summed. Each device already switched only on its own agreement; this is the
 * wave's figure, and a verdict `rejected` anywhere fails it.
 */
function shadowGate(minAgreement: number, wave: WaveRecord, start: number, shadows: readonly ShadowSample[], models: readonly RolloutModel[], previous: ReadonlyMap<string, number>): GateResult {
  const last = new Map<string, ShadowSample>();
  for (const s of shadows) {
    const replaced = models.some((m) => m.name === s.model && m.version === s.version && previous.has(m.name) && previous.get(m.name) !== m.version);
    if (!replaced || !wave.devices.includes(s.device) || s.ts < start) continue;
    const key = `${s.device}/${s.model}`;
    if ((last.get(key)?.ts ?? -Infinity) <= s.ts) last.set(key, s);
  }
  const points = [...last.values()];
  const samples = points.reduce((n, s) => n + s.samples, 0);
  const agreed = points.reduce((n, s) => n + s.agreed, 0);
  const rejected = points.filter((s) => s.verdict === 'rejected').map((s) => s.device);
  if (samples === 0) return { name: 'shadow', value: null, threshold: minAgreement, ok: true, detail: 'no shadow comparisons reported: not judged' };
  const agreement = agreed / samples;
  return {
    name: 'shadow', value: agreement, threshold: minAgreement, ok: rejected.length === 0 && agreement >= minAgreement,
    detail: `agreement ${agreement.toFixed(4)} (${agreed} of ${samples} samples on ${points.length} device(s)), at least ${minAgreement}` +
      (rejected.length > 0 ? `; rejected on ${rejected.join(', ')}` : ''),
  };
}

export function formatPercent(x: number): string {
  const p = x * 100;
  return `${Number.isInteger(p) ? p : p.toFixed(Math.abs(p) < 1 ? 2 : 1)}%`;
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  return `${Math.round(ms / 1000)}s`;
}

/** A new rollout's record, its waves planned. */
export function newRollout(id: string, spec: RolloutSpec, devices: readonly string[], now: number): Rollout {
  const plan = planWaves(id, devices, spec.waves, spec.canary);
  return {
    id, createdAt: now, spec, status: 'running', phase: 'publish', wave: 0, phaseSince: now, reason: null, previous: null,
    waves: plan.map((d) => ({ devices: d, startedAt: null, appliedAt: null, gates: [], outcome: 'pending' })),
    requested: null, revision: 1, updatedAt: now,
  };
}
