import type { Logger } from 'pino';
import type { AgentConfig } from '../config/schema.js';
import { EdgefleetError, errorMessage } from '../errors.js';
import { loadOrt, type Ort } from './ort.js';
import { probeProviders, type ProviderReport } from './providers.js';
import { createSession, type ModelSession } from './session.js';
import { warmupInputs } from './warmup.js';

export interface LoadedSession {
  session: ModelSession;
  loadMs: number;
  warmupMs: number;
}

/**
 * Owns ONNX Runtime: loads the library (telemetry off), probes the execution
 * providers once at start, and turns model bytes into warmed sessions.
 */
export class ModelRuntime {
  private ort: Ort | undefined;
  private report: ProviderReport | undefined;

  constructor(private readonly options: { config: AgentConfig['runtime']; logger: Logger }) {}

  async start(): Promise<void> {
    this.ort = await loadOrt();
    this.ort.env.logLevel = this.options.config.ortLogLevel;
    this.report = await probeProviders(this.ort, this.options.config.executionProviders);
    this.options.logger.info({ providers: this.report }, 'execution providers probed');
  }

  async stop(): Promise<void> {
    // Sessions are released by their owners; nothing global to free.
  }

  get providers(): ProviderReport {
    if (!this.report) throw new Error('ModelRuntime used before start()');
    return this.report;
  }

  /** Loads and warms a model; a model that cannot run its warm-up is not returned. */
  async load(bytes: Uint8Array, log: Logger): Promise<LoadedSession> {
    if (!this.ort) throw new Error('ModelRuntime used before start()');
    const t0 = performance.now();
    const session = await createSession(this.ort, bytes, this.providers.available, this.options.config, (ep, reason) =>
      log.warn({ executionProvider: ep, reason }, 'execution provider rejected the model; falling back to the next'),
    );
    const loadMs = performance.now() - t0;
    try {
      const inputs = warmupInputs(session.inputs);
      const t1 = performance.now();
      for (let i = 0; i < this.options.config.warmupRuns; i++) await session.run(inputs);
      return { session, loadMs, warmupMs: performance.now() - t1 };
    } catch (err) {
      await session.release();
      throw new EdgefleetError('MODEL_LOAD', `warm-up run failed: ${errorMessage(err)}`, { cause: err });
    }
  }
}
