/**
 * The rollout planner: a pure function from (desired, current) to the typed
 * steps that take the device from one to the other. No I/O, no clock; the
 * executor applies the steps. docs/protocol.md section 6 gives the order: every
 * version is fetched and verified before anything switches, new versions
 * switch in before old ones go, and files of the version served before are
 * kept on disk so a rollback needs no download.
 */

export interface VersionRef {
  name: string;
  version: number;
}

export interface DesiredVersion extends VersionRef {
  sha256: string;
  labels: readonly string[];
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
  | { kind: 'activate'; name: string; version: number; sha256: string; makeDefault: boolean }
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
    if (!now || (makeDefault && !now.isDefault)) steps.push({ kind: 'activate', name: d.name, version: d.version, sha256: d.sha256, makeDefault });
  }
  for (const name of new Set([...wanted.map((d) => d.name), ...Object.keys(current.labels)])) {
    const labels: Record<string, number> = {};
    for (const d of wanted) if (d.name === name) for (const l of d.labels) labels[l] = d.version;
    if (!sameLabels(labels, current.labels[name] ?? {})) steps.push({ kind: 'label', name, labels });
  }
  const wantedKeys = new Set(wanted.map(key));
  const listed = new Set(desired.map((d) => d.name));
  const replaceable = new Set(wanted.map((d) => d.name));
  for (const s of current.serving) {
    // A model whose every listed version is blocked keeps serving what it has: a bad update never takes serving down.
    if (wantedKeys.has(key(s)) || (listed.has(s.name) && !replaceable.has(s.name))) continue;
    steps.push({ kind: 'unload', name: s.name, version: s.version });
  }
  for (const name of new Set([...current.onDisk.map((r) => r.name), ...wanted.map((d) => d.name)])) {
    const keep = pruneKeep(name, wanted, current);
    const disk = current.onDisk.filter((r) => r.name === name).map((r) => r.version);
    if (disk.some((v) => !keep.includes(v))) steps.push({ kind: 'prune', name, keep });
  }
  return steps;
}

/** Keep what is desired plus the version served before the last switch, for rollback. */
function pruneKeep(name: string, wanted: readonly DesiredVersion[], current: CurrentState): number[] {
  const keep = new Set(wanted.filter((d) => d.name === name).map((d) => d.version));
  const servingOthers = current.serving.filter((s) => s.name === name && !keep.has(s.version)).map((s) => s.version);
  const onDiskOthers = current.onDisk.filter((r) => r.name === name && !keep.has(r.version)).map((r) => r.version);
  const previous = current.previous?.[name];
  if (servingOthers.length > 0) keep.add(Math.max(...servingOthers));
  else if (previous !== undefined && onDiskOthers.includes(previous)) keep.add(previous);
  else if (onDiskOthers.length > 0) keep.add(Math.max(...onDiskOthers));
  return [...keep].sort((a, b) => a - b);
}

function sameLabels(a: Readonly<Record<string, number>>, b: Readonly<Record<string, number>>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}
