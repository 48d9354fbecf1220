import { notFound, unavailable } from '../errors.js';
import type { Servable } from './servable.js';

/** TensorFlow Serving's ModelVersionStatus states. */
export type VersionState = 'START' | 'LOADING' | 'AVAILABLE' | 'UNLOADING' | 'END';

export interface VersionStatus {
  version: number;
  state: VersionState;
  /** Why the version failed to load or was unloaded with an error; null when fine. */
  error: string | null;
  servable: Servable | undefined;
}

export interface Selector {
  version?: number;
  label?: string;
}

interface ModelEntry {
  versions: Map<number, VersionStatus>;
  labels: Map<string, number>;
  /** The version unqualified requests get; when unset, the highest available (TensorFlow Serving's rule). */
  defaultVersion: number | undefined;
}

/**
 * What is served, by name and version, and the labels that point at versions.
 * Routing reads it synchronously, so switching a version in or out is atomic
 * for requests: each one resolves and acquires a servable in one step.
 */
export class ModelRegistry {
  private readonly models = new Map<string, ModelEntry>();

  names(): string[] {
    return [...this.models.keys()].sort();
  }

  /** Whether the model has a version here in any state (loading, serving, failed, unloaded). Requests never add one. */
  has(name: string): boolean {
    return (this.models.get(name)?.versions.size ?? 0) > 0;
  }

  private entry(name: string): ModelEntry {
    let e = this.models.get(name);
    if (!e) {
      e = { versions: new Map(), labels: new Map(), defaultVersion: undefined };
      this.models.set(name, e);
    }
    return e;
  }

  /** All known versions of a model, newest first; throws 404 for an unknown model. */
  statuses(name: string): VersionStatus[] {
    const e = this.models.get(name);
    if (!e || e.versions.size === 0) throw notFound(`model "${name}" is not known to this server`);
    return [...e.versions.values()].sort((a, b) => b.version - a.version);
  }

  /** The version a selector means: explicit version, label, or the highest available. */
  resolveVersion(name: string, selector: Selector): number {
    const versions = this.statuses(name);
    if (selector.version !== undefined) {
      if (!versions.some((v) => v.version === selector.version)) throw notFound(`model "${name}" has no version ${selector.version}`);
      return selector.version;
    }
    if (selector.label !== undefined) {
      const v = this.models.get(name)?.labels.get(selector.label);
      if (v === undefined) throw notFound(`model "${name}" has no label "${selector.label}"`);
      return v;
    }
    const preferred = this.models.get(name)?.defaultVersion;
    if (preferred !== undefined && versions.some((v) => v.version === preferred && v.state === 'AVAILABLE')) return preferred;
    const serving = versions.find((v) => v.state === 'AVAILABLE');
    if (!serving) throw unavailable(`model "${name}" has no version ready to serve yet`);
    return serving.version;
  }

  isAvailable(name: string, version: number): boolean {
    return this.models.get(name)?.versions.get(version)?.state === 'AVAILABLE';
  }

  /** The version unqualified requests get now, if any. */
  defaultOf(name: string): number | undefined {
    try {
      return this.resolveVersion(name, {});
    } catch {
      return undefined;
    }
  }

  /** Whether a default is pinned, rather than following the highest available version. */
  pinnedDefault(name: string): number | undefined {
    return this.models.get(name)?.defaultVersion;
  }

  availableVersions(name: string): number[] {
    return [...(this.models.get(name)?.versions.values() ?? [])].filter((s) => s.state === 'AVAILABLE').map((s) => s.version).sort((a, b) => a - b);
  }

  servableOf(name: string, version: number): Servable | undefined {
    const s = this.models.get(name)?.versions.get(version);
    return s?.state === 'AVAILABLE' ? s.servable : undefined;
  }

  /** Resolves a selector and acquires the servable; the caller must release() it. */
  acquire(name: string, selector: Selector): Servable {
    const version = this.resolveVersion(name, selector);
    const status = this.models.get(name)?.versions.get(version);
    if (!status?.servable || status.state !== 'AVAILABLE') {
      throw unavailable(`model "${name}" version ${version} is not available (state ${status?.state ?? 'END'}${status?.error ? `: ${status.error}` : ''})`);
    }
    status.servable.acquire();
    return status.servable;
  }

  setState(name: string, version: number, state: VersionState, error: string | null = null): void {
    const e = this.entry(name);
    const prev = e.versions.get(version);
    e.versions.set(version, { version, state, error, servable: state === 'AVAILABLE' || state === 'UNLOADING' ? prev?.servable : undefined });
  }

  /** Makes a loaded, warmed servable the one requests get for its version. */
  activate(servable: Servable): void {
    const e = this.entry(servable.name);
    e.versions.set(servable.version, { version: servable.version, state: 'AVAILABLE', error: null, servable });
  }

  /**
   * Takes a version out of routing at once, then waits for its requests in
   * flight before releasing it. `keepStatus` leaves an END entry (as TensorFlow
   * Serving reports unloaded versions); otherwise the version is forgotten.
   */
  async retire(name: string, version: number, options: { keepStatus?: boolean; error?: string } = {}): Promise<void> {
    const e = this.models.get(name);
    const status = e?.versions.get(version);
    if (!e || !status) return;
    const servable = status.servable;
    e.versions.set(version, { version, state: 'UNLOADING', error: options.error ?? null, servable });
    for (const [label, v] of e.labels) if (v === version) e.labels.delete(label);
    if (e.defaultVersion === version) e.defaultVersion = undefined;
    try {
      await servable?.retire();
    } finally {
      if (options.keepStatus) e.versions.set(version, { version, state: 'END', error: options.error ?? null, servable: undefined });
      else e.versions.delete(version);
      if (e.versions.size === 0) this.models.delete(name);
    }
  }

  /**
   * Pins the version unqualified requests get (undefined: highest available).
   * A rollout switches with this, so a rollback to a lower version is as atomic
   * as an upgrade and the version it replaces can stay loaded for a fast undo.
   */
  setDefault(name: string, version: number | undefined): void {
    this.entry(name).defaultVersion = version;
  }

  /** Replaces a model's labels; each must point at a known version. */
  setLabels(name: string, labels: Record<string, number>): string[] {
    const e = this.entry(name);
    const problems: string[] = [];
    e.labels.clear();
    for (const [label, version] of Object.entries(labels)) {
      if (e.versions.get(version)?.state === 'AVAILABLE') e.labels.set(label, version);
      else problems.push(`label "${label}" of model "${name}" points at version ${version}, which is not available`);
    }
    return problems;
  }

  labelsOf(name: string): Record<string, number> {
    return Object.fromEntries(this.models.get(name)?.labels ?? []);
  }

  /** Every servable currently loaded, for shutdown. */
  servables(): Servable[] {
    const out: Servable[] = [];
    for (const e of this.models.values()) for (const s of e.versions.values()) if (s.servable) out.push(s.servable);
    return out;
  }
}
