import { watch, type FSWatcher } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { CoalescedPass } from '../coalesce.js';
import type { AgentConfig } from '../config/schema.js';
import type { VersionLoader } from './loader.js';
import type { ModelRegistry } from './registry.js';
import { sameFile, sameFiles, scanRepository, type FileSignature } from './repository-scan.js';
import { WARMUP_FILE } from './warmup-file.js';
import { selectVersions } from './version-policy.js';

type ModelsConfig = AgentConfig['models'];

/**
 * Serves a TensorFlow Serving style model repository (`models.dir`) and keeps
 * watching it. A file is loaded only after its size and mtime have held still
 * for `settleMs` (a half-copied file is never loaded); a version that fails to
 * load is remembered and retried only when its file changes, while the
 * versions already serving keep serving.
 */
export class ModelRepository {
  private readonly firstSeen = new Map<string, { sig: FileSignature; at: number }>();
  /** Versions that failed to load, per model, with the file that failed. */
  private readonly failed = new Map<string, Map<number, FileSignature>>();
  private readonly loaded = new Map<string, Map<number, FileSignature>>();
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly syncs = new CoalescedPass(
    () => this.reconcile(),
    () => !this.stopped,
  );
  private stopped = false;

  constructor(
    private readonly deps: { dir: string; config: ModelsConfig; loader: VersionLoader; registry: ModelRegistry; logger: Logger },
  ) {}

  /** Scans once and loads what is there, so the agent is ready with the models in hand. */
  async start(): Promise<void> {
    await this.sync();
    try {
      this.watcher = watch(this.deps.dir, { recursive: true }, () => this.kick(200));
      this.watcher.on('error', (err) => this.deps.logger.warn({ err: err.message }, 'models.dir watch failed; polling only'));
    } catch (err) {
      this.deps.logger.warn({ err: String(err) }, 'models.dir cannot be watched; polling only');
    }
    this.kick(this.deps.config.pollIntervalMs);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.watcher?.close();
    await this.syncs.running;
  }

  private kick(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      void this.sync().finally(() => this.kick(this.deps.config.pollIntervalMs));
    }, delayMs);
  }

  /** One reconcile pass; concurrent calls coalesce into one more pass. */
  sync(): Promise<void> {
    return this.syncs.run();
  }

  private async reconcile(): Promise<void> {
    const found = await scanRepository(this.deps.dir);
    const now = Date.now();
    const names = new Set([...found.keys(), ...this.loaded.keys()]);
    for (const name of names) {
      if (this.stopped) return;
      await this.reconcileModel(name, found.get(name) ?? new Map(), now);
    }
  }

  private isSettled(sig: FileSignature, now: number): boolean {
    const seen = this.firstSeen.get(sig.path);
    if (!seen || !sameFile(seen.sig, sig)) {
      this.firstSeen.set(sig.path, { sig, at: now });
      // A file untouched for settleMs before we first saw it is complete already.
      return now - sig.mtimeMs >= this.deps.config.settleMs;
    }
    return now - seen.at >= this.deps.config.settleMs || now - sig.mtimeMs >= this.deps.config.settleMs;
  }

  private async reconcileModel(name: string, onDisk: Map<number, FileSignature>, now: number): Promise<void> {
    const options = this.deps.config.config[name];
    const policy = options?.versionPolicy ?? this.deps.config.versionPolicy;
    const loaded = this.loaded.get(name) ?? new Map<number, FileSignature>();
    this.loaded.set(name, loaded);
    const failed = this.failed.get(name) ?? new Map<number, FileSignature>();
    this.failed.set(name, failed);
    const settled = new Map([...onDisk].filter(([, sig]) => this.isSettled(sig, now)));
    // A failed version is retried once its model or its warm-up file changes.
    const loadable = (): number[] => [...settled].filter(([v, sig]) => !sameFiles(failed.get(v), sig)).map(([v]) => v);
    const wanted = selectVersions(policy, loadable());

    // Load new or changed versions, oldest first so the newest ends up as the default last.
    for (const version of [...wanted].sort((a, b) => a - b)) {
      const sig = settled.get(version) as FileSignature;
      // Versions are immutable, as in TensorFlow Serving: a loaded one is not reloaded in place.
      if (loaded.has(version)) continue;
      await this.loadVersion(name, version, sig, loaded, failed);
    }
    // Unload only after the new set serves; a version that just failed does not push out the one it was to replace.
    const desired = selectVersions(policy, loadable());
    for (const version of [...loaded.keys()]) {
      if (desired.includes(version) && onDisk.has(version)) continue;
      loaded.delete(version);
      await this.deps.loader.unload(name, version);
    }
    if (loaded.size === 0) this.loaded.delete(name);
    for (const problem of this.deps.registry.setLabels(name, options?.labels ?? {})) this.deps.logger.warn({ model: name }, problem);
    await this.forgetVanishedFailures(name, onDisk, failed);
  }

  private async loadVersion(name: string, version: number, sig: FileSignature, loaded: Map<number, FileSignature>, failed: Map<number, FileSignature>): Promise<void> {
    const bytes = await readFile(sig.path);
    // The file changed while it was read: it is still being written; try on a later pass.
    const after = await stat(sig.path).catch(() => undefined);
    if (!after || after.size !== sig.size || after.mtimeMs !== sig.mtimeMs || bytes.length !== sig.size) return;
    try {
      await this.deps.loader.load(name, version, bytes, {
        batching: this.deps.config.config[name]?.batching,
        warmup: { from: 'file', path: join(dirname(sig.path), WARMUP_FILE) },
      });
      loaded.set(version, sig);
      failed.delete(version);
    } catch {
      // The loader recorded and logged why; remember the file so it is not retried until it changes.
      failed.set(version, sig);
    }
  }

  /** A failed version whose file is gone stops being reported. */
  private async forgetVanishedFailures(name: string, onDisk: Map<number, FileSignature>, failed: Map<number, FileSignature>): Promise<void> {
    for (const version of [...failed.keys()]) {
      if (onDisk.has(version)) continue;
      failed.delete(version);
      await this.deps.registry.retire(name, version);
    }
    if (failed.size === 0) this.failed.delete(name);
  }
}
