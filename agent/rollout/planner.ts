/**
 * The rollout planner: a pure function from (desired, current) to the typed
 * steps that take the device from one to the other. No I/O, no clock; the
 * executor applies the steps. docs/protocol.md section 6 gives the order: every
 * version is fetched and verified before anything switches, new versions
 * switch in before old ones go, and files of the version served before are
 * kept on disk so a rollback needs no download.
 *
 * Nothing that serves is taken away until the new set serves: versions (and
 * labels) no longer listed are unloaded only once every listed version serves,
 * with nothing left to fetch or switch. A document that fails (a listed
 * version blocked) therefore unloads nothing.
 */
import type { Shadow } from '../../protocol/desired.js';

export interface VersionRef {
  name: string;
  version: number;
}

export interface DesiredVersion extends VersionRef {
  sha256: string;
  labels: readonly string[];
  /** Section 11: evaluate beside the version it replaces before switching. */
  shadow?: Shadow | undefined;
}

export interface CurrentState {
  /** Versions of fleet models serving now, with the default one per name marked. */
  serving: readonly (VersionRef & { isDefault: boolean })[];
  /** Verified artifacts in the model store (name, version → sha256). */
  onDisk: readonly (VersionRef & { sha256: string })[];
  /** Versions that must not be tried again for this document (rejected, rolled back). */
  blocked: readonly VersionRef[];
  /** Labels in force per model name. */
  labels: Readonly<Record<string, Readonly<Record<string, number>>>>;
  /** Per model name, the default version before the last switch: the rollback target kept on disk. */
  previous?: Readonly<Record<string, number>>;
}

export type Step =
  | { kind: 'fetch'; name: string; version: number; sha256: string }
  /** `shadow`: a shadow evaluation against the version serving now comes before the switch. */
  | { kind: 'activate'; name: string; version: number; sha256: string; makeDefault: boolean; shadow?: Shadow }
  | { kind: 'label'; name: string; labels: Record<string, number> }
  | { kind: 'unload'; name: string; version: number }
  | { kind: 'prune'; name: string; keep: number[] };

const key = (r: VersionRef): string => `${r.name}@${r.version}`;

/** The version unqualified requests should get: the highest listed, as TensorFlow Serving does. */
function defaultVersions(desired: readonly DesiredVersion[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const d of desired) out.set(d.name, Math.max(out.get(d.name) ?? 0, d.version));
  return out;
}

export function plan(desired: readonly DesiredVersion[], current: CurrentState): Step[] {
  const blocked = new Set(current.blocked.map(key));
  const wanted = desired.filter((d) => !blocked.has(key(d)));
  const onDisk = new Map(current.onDisk.map((r) => [key(r), r.sha256]));
  const serving = new Map(current.serving.map((r) => [key(r), r]));
  const defaults = defaultVersions(wanted);
  const steps: Step[] = [];

  for (const d of wanted) {
    if (!serving.has(key(d)) && onDisk.get(key(d)) !== d.sha256) steps.push({ kind: 'fetch', name: d.name, version: d.version, sha256: d.sha256 });
  }
  // Lower versions first, so the default is switched last and once.
  for (const d of [...wanted].sort((a, b) => a.version - b.version)) {
    const makeDefault = defaults.get(d.name) === d.version;
    const now = serving.get(key(d));
    if (now && (!makeDefault || now.isDefault)) continue;
    // Shadowing needs something to compare with: a first install, or a version already loaded, switches directly.
    const replaces = current.serving.some((s) => s.name === d.name && s.version !== d.version);
    const shadow = d.shadow && makeDefault && !now && replaces ? { shadow: d.shadow } : {};
    steps.push({ kind: 'activate', name: d.name, version: d.version, sha256: d.sha256, makeDefault, ...shadow });
  }
  // The new set serves: nothing listed is blocked, nothing is left to fetch or switch.
  const newSetServes = steps.length === 0 && !desired.some((d) => blocked.has(key(d)));
  const wantedNames = new Set(wanted.map((d) => d.name));
  for (const name of new Set([...wantedNames, ...Object.keys(current.labels)])) {
    // Taking every label off a model that is not wanted is part of unloading it.
    if (!wantedNames.has(name) && !newSetServes) continue;
    const labels: Record<string, number> = {};
    for (const d of wanted) if (d.name === name) for (const l of d.labels) labels[l] = d.version;
    if (!sameLabels(labels, current.labels[name] ?? {})) steps.push({ kind: 'label', name, labels });
  }
  const wantedKeys = new Set(wanted.map(key));
  // A failed fetch or switch, or one still to come, never takes away what serves.
  if (newSetServes) for (const s of current.serving) if (!wantedKeys.has(key(s))) steps.push({ kind: 'unload', name: s.name, version: s.version });
  for (const name of new Set([...current.onDisk.map((r) => r.name), ...wanted.map((d) => d.name)])) {
    const keep = pruneKeep(name, wanted, current);
    const disk = current.onDisk.filter((r) => r.name === name).map((r) => r.version);
    if (disk.some((v) => !keep.includes(v))) steps.push({ kind: 'prune', name, keep });
  }
  return steps;
}

/**
 * Keep what is desired and what still serves (so a restart serves it again),
 * else the version served before the last switch, for rollback.
 */
function pruneKeep(name: string, wanted: readonly DesiredVersion[], current: CurrentState): number[] {
  const keep = new Set(wanted.filter((d) => d.name === name).map((d) => d.version));
  const servingOthers = current.serving.filter((s) => s.name === name && !keep.has(s.version)).map((s) => s.version);
  const onDiskOthers = current.onDisk.filter((r) => r.name === name && !keep.has(r.version)).map((r) => r.version);
  const previous = current.previous?.[name];
  if (servingOthers.length > 0) for (const v of servingOthers) keep.add(v);
  else if (previous !== undefined && onDiskOthers.includes(previous)) keep.add(previous);
  else if (onDiskOthers.length > 0) keep.add(Math.max(...onDiskOthers));
  return [...keep].sort((a, b) => a - b);
}

function sameLabels(a: Readonly<Record<string, number>>, b: Readonly<Record<string, number>>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

/**
 * Whether a step planned for an earlier document is still on the way to
 * `desired` (a newly accepted document, nothing blocked yet): a download or a
 * switch of a version it no longer lists, lists with another artifact, or no
 * longer makes the default is not, and is abandoned. Label, unload and prune
 * steps are quick and always finish.
 */
export function stillNeeded(step: Step, desired: readonly DesiredVersion[]): boolean {
  switch (step.kind) {
    case 'fetch':
    case 'activate': {
      const listed = desired.find((d) => d.name === step.name && d.version === step.version && d.sha256 === step.sha256);
      if (!listed || step.kind === 'fetch') return listed !== undefined;
      // A shadow evaluation under other settings starts again under the new ones.
      if (step.shadow && !sameShadow(step.shadow, listed.shadow)) return false;
      return (defaultVersions(desired).get(step.name) === step.version) === step.makeDefault;
    }
    case 'label':
    case 'unload':
    case 'prune':
      return true;
  }
}

function sameShadow(a: Shadow, b: Shadow | undefined): boolean {
  return b !== undefined && (Object.keys(a) as (keyof Shadow)[]).every((k) => a[k] === b[k]);
}
