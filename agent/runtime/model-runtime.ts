import type { Logger } from 'pino';
import type { AgentConfig } from '../config/schema.js';
import { loadOrt, type Ort } from './ort.js';
import { bundledOrtVersion, inspectOrtBuild } from './ort-build.js';
import { probeProviders, type ProviderReport } from './providers.js';
import { createSession, type ModelSession } from './session.js';
import { warmUp, type WarmupOutcome, type WarmupRequests } from './warmup.js';

export interface LoadedSession {
  session: ModelSession;
  loadMs: number;
}

/**
 * Owns ONNX Runtime: loads the library (telemetry off), probes the execution
 * providers once at start, turns model bytes into sessions and warms them up.
 */
export class ModelRuntime {
  private ort: Ort | undefined;
  private report: ProviderReport | undefined;

  constructor(private readonly options: { config: AgentConfig['runtime']; logger: Logger }) {}

  async start(): Promise<void> {
    const from = this.options.config.onnxruntimePath;
    const build = from === undefined ? undefined : inspectOrtBuild(from);
    this.ort = await loadOrt(build?.path);
    this.ort.env.logLevel = this.options.config.ortLogLevel;
    this.report = await probeProviders(this.ort, this.options.config.executionProviders, build);
    const onnxruntime = build ?? { path: 'bundled', version: bundledOrtVersion() };
    this.options.logger.info({ providers: this.report, onnxruntime }, 'execution providers probed');
  }

  async stop(): Promise<void> {
    // Sessions are released by their owners; nothing global to free.
  }

  get providers(): ProviderReport {
    if (!this.report) throw new Error('ModelRuntime used before start()');
    return this.report;
  }

  /** Loads a model into a session; warming it up is the caller's next step (warmUp). */
  async load(bytes: Uint8Array, log: Logger): Promise<LoadedSession> {
    if (!this.ort) throw new Error('ModelRuntime used before start()');
    const t0 = performance.now();
    const session = await createSession(this.ort, bytes, this.providers.available, this.options.config, (ep, reason) =>
      log.warn({ executionProvider: ep, reason }, 'execution provider rejected the model; falling back to the next'),
    );
    return { session, loadMs: performance.now() - t0 };
  }

  /** Runs `runtime.warmupRuns` warm-ups on the given requests, or on a generated input without them (see warmup.ts). */
  warmUp(session: ModelSession, given: WarmupRequests | undefined): Promise<WarmupOutcome> {
    return warmUp(session, given, this.options.config.warmupRuns);
  }
}
