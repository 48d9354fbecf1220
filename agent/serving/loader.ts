import type { Logger } from 'pino';
import type { BatchingConfig } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import type { ModelRuntime } from '../runtime/model-runtime.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ModelRegistry } from './registry.js';
import { Servable } from './servable.js';

export interface LoadOptions {
  batching?: BatchingConfig | undefined;
  /** Runs on the loaded servable before it takes traffic; throwing rejects the version. */
  selfTest?: (servable: Servable) => Promise<void>;
}

/**
 * Loads a model version beside whatever serves now and switches it in only
 * once it has loaded, warmed up and passed its self-test. Until then the
 * versions already serving keep serving.
 */
export class VersionLoader {
  constructor(private readonly deps: { runtime: ModelRuntime; registry: ModelRegistry; metrics: Metrics; logger: Logger }) {}

  async load(name: string, version: number, bytes: Uint8Array, options: LoadOptions = {}): Promise<Servable> {
    const { registry, metrics, runtime } = this.deps;
    const log = this.deps.logger.child({ model: name, version });
    registry.setState(name, version, 'LOADING');
    let servable: Servable | undefined;
    try {
      const loaded = await runtime.load(bytes, log);
      const batchLabels = { model: name, version: String(version) };
      servable = new Servable(name, version, loaded.session, options.batching, (_requests, rows) => metrics.batchRows.observe(batchLabels, rows));
      await options.selfTest?.(servable);
      metrics.loadSeconds.set({ model: name, version: String(version), provider: loaded.session.executionProvider }, loaded.loadMs / 1000);
      metrics.warmupSeconds.set({ model: name, version: String(version) }, loaded.warmupMs / 1000);
      registry.activate(servable);
      log.info(
        { executionProvider: loaded.session.executionProvider, loadMs: round(loaded.loadMs), warmupMs: round(loaded.warmupMs), batching: servable.runner.batcher !== undefined },
        'model version available',
      );
      return servable;
    } catch (err) {
      await servable?.retire();
      const message = errorMessage(err);
      registry.setState(name, version, 'END', message);
      metrics.loadFailures.inc({ model: name });
      log.error({ err: message }, 'model version failed to load; versions already serving keep serving');
      throw err;
    }
  }

  /** Takes a version out of service once its requests in flight finish. */
  async unload(name: string, version: number, options: { keepStatus?: boolean; error?: string } = {}): Promise<void> {
    await this.deps.registry.retire(name, version, options);
    this.deps.metrics.forgetVersion(name, version);
    this.deps.logger.info({ model: name, version }, 'model version unloaded');
  }
}

const round = (ms: number): number => Math.round(ms * 100) / 100;
