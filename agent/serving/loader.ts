import type { Logger } from 'pino';
import type { BatchingConfig } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import type { ModelRuntime } from '../runtime/model-runtime.js';
import type { ModelSession } from '../runtime/session.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ModelRegistry } from './registry.js';
import { Servable } from './servable.js';
import { resolveWarmup, type WarmupSource } from './warmup-file.js';

export interface LoadOptions {
  batching?: BatchingConfig | undefined;
  /** Runs on the loaded servable before it takes traffic; throwing rejects the version. */
  selfTest?: (servable: Servable) => Promise<void>;
  /** Real input to warm up with; without any, a generated input whose failure only warns. */
  warmup?: WarmupSource | undefined;
  /**
   * Loaded, self-tested and warmed, but kept out of the registry: no request
   * reaches it until the caller activates it in the registry (a shadow
   * candidate), or retires it.
   */
  detached?: boolean;
}

/**
 * Loads a model version beside whatever serves now and switches it in only
 * once it has loaded, passed its self-test and warmed up. Until then the
 * versions already serving keep serving.
 */
export class VersionLoader {
  constructor(private readonly deps: { runtime: ModelRuntime; registry: ModelRegistry; metrics: Metrics; logger: Logger }) {}

  async load(name: string, version: number, bytes: Uint8Array, options: LoadOptions = {}): Promise<Servable> {
    const { registry, metrics, runtime } = this.deps;
    const log = this.deps.logger.child({ model: name, version });
    const detached = options.detached === true;
    if (!detached) registry.setState(name, version, 'LOADING');
    let servable: Servable | undefined;
    try {
      const loaded = await runtime.load(bytes, log);
      const batchLabels = { model: name, version: String(version) };
      servable = new Servable(name, version, loaded.session, options.batching, (_requests, rows) => metrics.batchRows.observe(batchLabels, rows));
      await options.selfTest?.(servable);
      const warm = await this.warmUp(loaded.session, options.warmup, log);
      metrics.loadSeconds.set({ model: name, version: String(version), provider: loaded.session.executionProvider }, loaded.loadMs / 1000);
      metrics.warmupSeconds.set({ model: name, version: String(version) }, warm.ms / 1000);
      if (!detached) registry.activate(servable);
      log.info(
        {
          executionProvider: loaded.session.executionProvider,
          loadMs: round(loaded.loadMs),
          warmupMs: round(warm.ms),
          warmedUpOn: warm.on,
          batching: servable.runner.batcher !== undefined,
        },
        detached ? 'model version loaded beside the serving one, taking no requests' : 'model version available',
      );
      return servable;
    } catch (err) {
      await servable?.retire();
      const message = errorMessage(err);
      if (!detached) registry.setState(name, version, 'END', message);
      metrics.loadFailures.inc({ model: name });
      log.error({ err: message }, 'model version failed to load; versions already serving keep serving');
      throw err;
    }
  }

  /** Warms a loaded session up; says on what, for the log. */
  private async warmUp(session: ModelSession, source: WarmupSource | undefined, log: Logger): Promise<{ ms: number; on: string }> {
    const given = source && (await resolveWarmup(source, session));
    const warm = await this.deps.runtime.warmUp(session, given);
    if (given !== undefined) return { ms: warm.ms, on: given.source };
    if (warm.input === 'given' || warm.failure === undefined) return { ms: warm.ms, on: 'a generated input' };
    log.warn(
      { err: warm.failure },
      'warm-up on a generated input failed; the version serves anyway, as real requests may well run (give it real warm-up input: warmup.json beside the model, or a selfTest in its manifest)',
    );
    return { ms: warm.ms, on: 'a generated input (failed)' };
  }

  /** Frees a detached servable (a shadow candidate not switched to) once its runs in flight finish. */
  async release(servable: Servable): Promise<void> {
    await servable.retire();
    this.deps.metrics.forgetVersion(servable.name, servable.version);
    this.deps.logger.info({ model: servable.name, version: servable.version }, 'model version released without serving');
  }

  /** Takes a version out of service once its requests in flight finish. */
  async unload(name: string, version: number, options: { keepStatus?: boolean; error?: string } = {}): Promise<void> {
    await this.deps.registry.retire(name, version, options);
    this.deps.metrics.forgetVersion(name, version);
    this.deps.logger.info({ model: name, version }, 'model version unloaded');
  }
}

const round = (ms: number): number => Math.round(ms * 100) / 100;
