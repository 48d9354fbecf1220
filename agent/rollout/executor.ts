import type { Logger } from 'pino';
import type { Shadow } from '../../protocol/desired.js';
import type { Manifest } from '../../protocol/manifest.js';
import type { AgentConfig } from '../config/schema.js';
import type { VersionLoader } from '../serving/loader.js';
import type { ModelRegistry } from '../serving/registry.js';
import type { Servable } from '../serving/servable.js';
import type { ShadowEvaluation } from '../serving/shadow/evaluation.js';
import type { ShadowTap } from '../serving/shadow/tap.js';
import type { AgentDatabase } from '../store/database.js';
import { BlockPuller, type MinimalMqtt } from './block-puller.js';
import { RolledBackError, RolloutError } from './errors.js';
import type { RolloutEvents } from './events.js';
import type { ModelStore } from './model-store.js';
import type { Step } from './planner.js';
import type { PendingActivation, RolloutState } from './rollout-state.js';
import { runSelfTest } from './self-test.js';

export interface ExecutorDeps {
  config: AgentConfig['rollout'];
  topicRoot: string;
  store: ModelStore;
  loader: VersionLoader;
  registry: ModelRegistry;
  /** Where shadow evaluations run (section 11); without it, `shadow` is ignored and versions switch directly. */
  shadows?: ShadowTap | undefined;
  /** Every step reports through these; report-projection.ts turns them into reported state. */
  events: RolloutEvents;
  database: AgentDatabase;
  state: RolloutState;
  logger: Logger;
  /** The MQTT client blocks are pulled with; undefined while there is none. */
  client: () => MinimalMqtt | undefined;
  /** Verifies a manifest envelope against the current trust, as before a download. */
  verifyManifest: (envelope: unknown, name: string, version: number) => Manifest;
  /** The same, for versions that served before a restart: expiry gates new rollouts only. */
  verifyManifestIgnoringExpiry: (envelope: unknown, name: string, version: number) => Manifest;
  /** Called once a version has switched in and passed its health window, or been rolled back. */
  onServingChanged: () => void;
}

/**
 * Applies one planned step. Each step is idempotent, so the caller can re-plan
 * and retry after any failure or restart.
 */
export class StepExecutor {
  private puller: BlockPuller | undefined;
  private shadowing: ShadowEvaluation | undefined;
  private stopped = false;

  constructor(private readonly deps: ExecutorDeps) {}

  stop(): void {
    this.stopped = true;
    this.puller?.abort();
    this.shadowing?.cancel('the agent is stopping');
  }

  /**
   * `signal` aborts the step when a newer document no longer needs it (rollout.ts):
   * a pull stops at once and keeps its durable progress, a switch not yet made is
   * not made, a health window ends early. The step then rejects with the
   * signal's reason, except a cut-short health window, which counts as passed.
   */
  async run(step: Step, envelopes: ReadonlyMap<string, unknown>, signal?: AbortSignal): Promise<void> {
    const envelope = (name: string, version: number): unknown => envelopes.get(`${name}@${version}`);
    switch (step.kind) {
      case 'fetch':
        return this.fetch(step.name, step.version, envelope(step.name, step.version), signal);
      case 'activate':
        return this.activate(step.name, step.version, step.sha256, step.makeDefault, step.shadow, signal);
      case 'label': {
        for (const problem of this.deps.registry.setLabels(step.name, step.labels)) this.deps.logger.warn({ model: step.name }, problem);
        return;
      }
      case 'unload':
        await this.deps.loader.unload(step.name, step.version);
        this.deps.events.emit({ type: 'unloaded', name: step.name, version: step.version });
        this.deps.onServingChanged();
        return;
      case 'prune': {
        const removed = await this.deps.store.prune(step.name, step.keep);
        if (removed.length > 0) this.deps.logger.info({ model: step.name, removed }, 'old model versions removed from disk');
        return;
      }
    }
  }

  private async fetch(name: string, version: number, envelope: unknown, signal: AbortSignal | undefined): Promise<void> {
    const { events, store, config } = this.deps;
    const manifest = this.deps.verifyManifest(envelope, name, version);
    const client = this.deps.client();
    if (!client) throw new RolloutError('NO_CONNECTION', `cannot download ${name} version ${version}: no MQTT connection configured`);
    const artifact = manifest.artifact;
    await store.ensureSpace(artifact.sha256, artifact.size);
    // Progress comes from the puller, which counts blocks already recorded before a restart.
    events.emit({ type: 'fetch.started', name, version, sha256: artifact.sha256, size: artifact.size, blocks: artifact.blockSha256.length });
    const puller = new BlockPuller({
      client,
      topicRoot: this.deps.topicRoot,
      artifact,
      stagingFile: store.stagingFile(artifact.sha256),
      db: this.deps.database,
      window: config.window,
      blockTimeoutMs: config.blockTimeoutMs,
      giveUpAfterMs: config.giveUpAfterS * 1000,
      logger: this.deps.logger.child({ model: name, version }),
      onProgress: (done, total) => events.emit({ type: 'fetch.progress', name, version, done, total }),
    });
    this.puller = puller;
    // The puller keeps what it has recorded, so a later return to this version resumes.
    const abandon = (): void => puller.abort();
    signal?.addEventListener('abort', abandon);
    try {
      if (this.stopped) throw new RolloutError('ABORTED', 'stopping');
      if (signal?.aborted) puller.abort();
      await puller.pull();
    } catch (err) {
      throw signal?.aborted ? abortReason(signal) : err;
    } finally {
      signal?.removeEventListener('abort', abandon);
      this.puller = undefined;
    }
    events.emit({ type: 'fetch.verifying', name, version });
    await store.install(name, version, artifact.sha256, envelope);
    events.emit({ type: 'fetch.completed', name, version });
  }

  /** Serves again, after a restart, a version that passed its health window before: no window, no events. */
  async restore(name: string, version: number, sha256: string, makeDefault: boolean): Promise<void> {
    await this.load(name, version, sha256, (envelope) => this.deps.verifyManifestIgnoringExpiry(envelope, name, version));
    if (makeDefault) this.deps.registry.setDefault(name, version);
    this.deps.events.emit({ type: 'restored', name, version });
  }

  /** Verify again → load → self-test → warm (in the loader) → [shadow evaluation] → switch → health window. */
  private async activate(name: string, version: number, sha256: string, makeDefault: boolean, shadow: Shadow | undefined, signal: AbortSignal | undefined): Promise<void> {
    const { events, registry, state } = this.deps;
    if (!registry.isAvailable(name, version)) {
      const verify = (envelope: unknown): Manifest => this.deps.verifyManifest(envelope, name, version);
      const base = registry.defaultOf(name);
      if (shadow && makeDefault && this.deps.shadows && base !== undefined && base !== version) {
        const candidate = await this.load(name, version, sha256, verify, true);
        await this.shadow(candidate, base, shadow, signal);
      } else await this.load(name, version, sha256, verify);
    }
    if (signal?.aborted) {
      // Loaded, not switched to: it serves beside the default until the newer plan unloads it.
      events.emit({ type: 'added', name, version });
      throw abortReason(signal);
    }
    if (!makeDefault) {
      events.emit({ type: 'added', name, version });
      return;
    }
    const previous = registry.defaultOf(name);
    const pending: PendingActivation = { name, version, previous, since: new Date().toISOString() };
    state.setActivation(pending);
    registry.setDefault(name, version);
    events.emit({ type: 'activated', name, version, previous });
    try {
      // With nothing served before there is nothing to fall back to: no window.
      if (previous !== undefined && previous !== version) await this.watchHealth(name, version, signal);
    } catch (err) {
      await this.rollBack(pending, (err as Error).message);
      throw err;
    } finally {
      state.clearActivation();
    }
    if (previous !== undefined && previous !== version) state.setPrevious(name, previous);
    this.deps.onServingChanged();
  }

  /**
   * Section 11: the candidate, loaded but out of the registry, answers a share
   * of the requests `base` has answered, and the answers are compared. On
   * `activated` it enters the registry (not yet the default: the switch
   * follows); otherwise it is released and the step fails or is abandoned.
   */
  private async shadow(candidate: Servable, base: number, spec: Shadow, signal: AbortSignal | undefined): Promise<void> {
    const { events, registry, loader } = this.deps;
    const shadows = this.deps.shadows as ShadowTap;
    const { name, version } = candidate;
    const evaluation = shadows.begin({
      name,
      version,
      baseVersion: base,
      candidate,
      spec,
      onProgress: (f) => events.emit({ type: 'shadow.progress', name, version, samples: f.samples, minSamples: spec.minSamples }),
    });
    this.shadowing = evaluation;
    events.emit({ type: 'shadow.started', name, version, baseVersion: base, spec });
    const abandon = (): void => evaluation.cancel('a newer desired document no longer needs it');
    signal?.addEventListener('abort', abandon);
    if (signal?.aborted || this.stopped) abandon();
    let outcome;
    try {
      outcome = await evaluation.done;
    } finally {
      signal?.removeEventListener('abort', abandon);
      this.shadowing = undefined;
    }
    if (outcome.verdict === 'activated') {
      events.emit({ type: 'shadow.completed', name, version, baseVersion: base, verdict: 'activated', reason: outcome.reason });
      registry.activate(candidate);
      return;
    }
    // The candidate's session goes now, not with the next plan: its memory is the board's.
    await loader.release(candidate);
    if (signal?.aborted) throw abortReason(signal);
    if (outcome.verdict === 'cancelled') throw new RolloutError('ABORTED', `shadow evaluation of ${name} version ${version} stopped: ${outcome.reason}`);
    events.emit({ type: 'shadow.completed', name, version, baseVersion: base, verdict: 'rejected', reason: outcome.reason });
    throw new RolloutError('SHADOW_REJECTED', `${name} version ${version} rejected by its shadow evaluation against version ${base}: ${outcome.reason}`);
  }

  /** Nothing unverified is loaded: the stored manifest's signature and the file's hash are checked right before. */
  private async load(name: string, version: number, sha256: string, verify: (envelope: unknown) => Manifest, detached = false): Promise<Servable> {
    const { events, store, registry, loader } = this.deps;
    const stored = await store.readManifest(name, version);
    const manifest = verify(stored.envelope);
    events.emit({ type: 'verify.started', name, version, sha256 });
    const bytes = await store.readVerified(name, version, manifest.artifact.sha256);
    events.emit({ type: 'load.started', name, version });
    // Pin the route to what serves now, so the new version takes traffic only at the switch.
    const current = registry.defaultOf(name);
    if (current !== undefined) registry.setDefault(name, current);
    const servable = await loader.load(name, version, bytes, {
      batching: manifest.runtime?.batching && { maxQueueSize: 1024, ...manifest.runtime.batching },
      selfTest: manifest.selfTest && ((s) => runSelfTest(s, manifest.selfTest as NonNullable<Manifest['selfTest']>)),
      // The self-test's inputs are real input for the model: warm up on them rather than on a generated one.
      warmup: manifest.selfTest && { from: 'self-test', requests: [{ inputs: manifest.selfTest.inputs }] },
      detached,
    });
    events.emit({ type: 'load.completed', name, version, executionProvider: servable.session.executionProvider });
    return servable;
  }

  /** Watches the new version's model faults (a client's bad input or overload never counts); too many roll it back. */
  private async watchHealth(name: string, version: number, signal: AbortSignal | undefined): Promise<void> {
    const { config, registry } = this.deps;
    const servable = registry.servableOf(name, version);
    if (!servable || config.healthWindowS <= 0) return;
    const runs0 = servable.runs;
    const failures0 = servable.modelFaults;
    const until = Date.now() + config.healthWindowS * 1000;
    // A newer document that no longer wants this version ends the window: its plan switches away.
    while (Date.now() < until && !this.stopped && !signal?.aborted) {
      await new Promise((r) => setTimeout(r, Math.min(250, until - Date.now())));
      const runs = servable.runs - runs0;
      const failures = servable.modelFaults - failures0;
      if (failures >= config.healthMinFailures && failures / Math.max(runs, 1) > config.healthMaxFailureRate) {
        throw new RolledBackError(`${name} version ${version} rolled back: ${failures} of ${runs} runs failed in its health window`);
      }
    }
  }

  /** Switches back to what served before and unloads the failed version. */
  async rollBack(pending: PendingActivation, reason: string): Promise<void> {
    const { registry, loader, events } = this.deps;
    registry.setDefault(pending.name, pending.previous);
    await loader.unload(pending.name, pending.version);
    events.emit({ type: 'rolled-back', name: pending.name, version: pending.version, reason });
    this.deps.logger.warn({ model: pending.name, version: pending.version, previous: pending.previous }, reason);
    this.deps.onServingChanged();
  }
}

/** Why a step was aborted: the RolloutError its signal carries. */
function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new RolloutError('SUPERSEDED', 'superseded by a newer desired document');
}
