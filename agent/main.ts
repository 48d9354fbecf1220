import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { AgentConfig } from './config/schema.js';
import { HttpServer } from './http/server.js';
import { ModelRuntime } from './runtime/model-runtime.js';
import type { ProviderReport } from './runtime/providers.js';
import { VersionLoader } from './serving/loader.js';
import { ModelRegistry } from './serving/registry.js';
import { ModelRepository } from './serving/repository.js';
import { Metrics } from './telemetry/metrics.js';
import { agentVersion } from './version.js';

interface Component {
  start(): Promise<unknown>;
  stop(): Promise<void>;
}

export interface Agent {
  readonly registry: ModelRegistry;
  readonly providers: ProviderReport;
  readonly httpAddress: AddressInfo | undefined;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The composition root: builds every component from the config, hands each
 * what it needs, starts them in order and stops them in reverse. Importing
 * this module does no work.
 */
export function createAgent(config: AgentConfig, logger: Logger): Agent {
  const version = agentVersion();
  const metrics = new Metrics();
  const registry = new ModelRegistry();
  const runtime = new ModelRuntime({ config: config.runtime, logger: logger.child({ component: 'runtime' }) });
  const loader = new VersionLoader({ runtime, registry, metrics, logger });
  let ready = false;
  const http = new HttpServer({ config: config.http, registry, metrics, logger: logger.child({ component: 'http' }), agentVersion: version, isReady: () => ready });
  const components: Component[] = [runtime];
  if (config.models.dir) {
    components.push(new ModelRepository({ dir: config.models.dir, config: config.models, loader, registry, logger: logger.child({ component: 'repository' }) }));
  }
  components.push(http);
  const started: Component[] = [];

  return {
    registry,
    get providers() {
      return runtime.providers;
    },
    get httpAddress() {
      return http.address;
    },
    async start() {
      await mkdir(config.stateDir, { recursive: true });
      logger.info({ version, deviceId: config.deviceId, arch: process.arch }, 'edgefleet agent starting');
      for (const c of components) {
        await c.start();
        started.push(c);
      }
      ready = true;
      logger.info('edgefleet agent ready');
    },
    async stop() {
      ready = false;
      // Reverse order: the HTTP API stops taking requests and drains first.
      for (const c of started.reverse()) await c.stop();
      started.length = 0;
      for (const s of registry.servables()) await s.retire();
      logger.info('edgefleet agent stopped');
    },
  };
}
