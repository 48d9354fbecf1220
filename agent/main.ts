import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { ApiAccess } from './access/api-access.js';
import type { AgentConfig } from './config/schema.js';
import { GrpcServer, type GrpcAddress } from './grpc/server.js';
import { MetricsServer } from './http/metrics-server.js';
import { HttpServer } from './http/server.js';
import { MqttConnection } from './mqtt/connection.js';
import { RolloutEvents } from './rollout/events.js';
import { ModelStore } from './rollout/model-store.js';
import { reportProjection } from './rollout/report-projection.js';
import { Reporter } from './rollout/reporter.js';
import { Rollout } from './rollout/rollout.js';
import { TrustStore } from './rollout/trust-store.js';
import { ModelRuntime } from './runtime/model-runtime.js';
import type { ProviderReport } from './runtime/providers.js';
import { InferencePath } from './serving/inference-path.js';
import { VersionLoader } from './serving/loader.js';
import { ModelRegistry } from './serving/registry.js';
import { ModelRepository } from './serving/repository.js';
import { ShadowTap } from './serving/shadow/tap.js';
import { AgentDatabase, agentDatabasePath, kv } from './store/database.js';
import { StateDirLock } from './store/state-lock.js';
import { TelemetryAckListener } from './telemetry/ack-listener.js';
import { HealthSampler } from './telemetry/health.js';
import { Metrics } from './telemetry/metrics.js';
import { TelemetryOutbox } from './telemetry/outbox.js';
import { InferenceRecorder } from './telemetry/recorder.js';
import { TelemetryUploader } from './telemetry/uploader.js';
import { agentVersion } from './version.js';

interface Component {
  start(): Promise<unknown>;
  stop(): Promise<void>;
}

export interface Agent {
  readonly registry: ModelRegistry;
  readonly providers: ProviderReport;
  readonly httpAddress: AddressInfo | undefined;
  /** Present when `grpc` is configured and started. */
  readonly grpcAddress: GrpcAddress | undefined;
  /** Present when `metrics` (a listener of its own for Prometheus) is configured and started. */
  readonly metricsAddress: AddressInfo | undefined;
  /** Present when `mqtt` is configured. */
  readonly reporter: Reporter | undefined;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** SIGHUP: reads the local API's TLS certificate and key and its bearer tokens again. */
  reload(): Promise<void>;
}

/** A component from a start and a stop function, for the parts that are not classes. */
const step = (start: () => Promise<unknown>, stop: () => Promise<void> = async () => {}): Component => ({ start, stop });

/**
 * The composition root: builds every component from the config, hands each
 * what it needs, starts them in order and stops them in reverse. Importing
 * this module does no work.
 */
export function createAgent(config: AgentConfig, logger: Logger): Agent {
  const version = agentVersion();
  const registry = new ModelRegistry();
  // Only models the agent has had a version of become label values; a request's made-up name never does.
  const metrics = new Metrics({ knownModel: (name) => registry.has(name) });
  const runtime = new ModelRuntime({ config: config.runtime, logger: logger.child({ component: 'runtime' }) });
  const loader = new VersionLoader({ runtime, registry, metrics, logger });
  let ready = false;
  // Telemetry goes out over MQTT and waits in the database, so it exists only with mqtt configured.
  let database: AgentDatabase | undefined;
  const telemetryLog = logger.child({ component: 'telemetry' });
  const outbox = config.mqtt ? new TelemetryOutbox({ database: () => database as AgentDatabase, ...config.telemetry.buffer, logger: telemetryLog }) : undefined;
  const recorder = outbox ? new InferenceRecorder({ sink: outbox, intervalS: config.telemetry.intervalS, logger: telemetryLog }) : undefined;
  // One inference path for every API: the same batching, metrics and telemetry over HTTP and gRPC.
  // Shadow evaluations (PROTOCOL.md section 11) see answered requests of every API here; their points go to the outbox.
  const shadows = new ShadowTap({ sink: outbox, intervalS: config.telemetry.intervalS, logger: logger.child({ component: 'shadow' }) });
  const inference = new InferencePath({ registry, metrics, telemetry: recorder, shadows, logger: logger.child({ component: 'inference' }) });
  // TLS and bearer tokens for both local APIs, off unless `api` says otherwise; read again on SIGHUP.
  const access = new ApiAccess({ config: config.api, logger: logger.child({ component: 'access' }) });
  const http = new HttpServer({ config: config.http, registry, metrics, telemetry: recorder, inference, access, logger: logger.child({ component: 'http' }), agentVersion: version, isReady: () => ready });
  const metricsServer = config.metrics && new MetricsServer({ config: config.metrics, metrics, logger: logger.child({ component: 'metrics' }) });
  const grpc = config.grpc && new GrpcServer({ config: config.grpc, registry, metrics, inference, access, logger: logger.child({ component: 'grpc' }), agentVersion: version, isReady: () => ready });
  // The lock comes before anything that touches the state directory or the broker.
  const components: Component[] = [step(() => mkdir(config.stateDir, { recursive: true })), new StateDirLock(config.stateDir), runtime];
  let reporter: Reporter | undefined;

  if (config.mqtt) {
    components.push(step(async () => (database = AgentDatabase.open(agentDatabasePath(config.stateDir), { logger: logger.child({ component: 'store' }) })), async () => database?.close()));
    const trust = new TrustStore({ provisionedPath: config.trust, stateDir: config.stateDir, logger: logger.child({ component: 'trust' }) });
    const connection = new MqttConnection({ config: config.mqtt, deviceId: config.deviceId, logger: logger.child({ component: 'mqtt' }) });
    const rep = new Reporter({ transport: connection, topicRoot: config.mqtt.topicRoot, deviceId: config.deviceId, groups: config.groups, logger: logger.child({ component: 'reporter' }) });
    reporter = rep;
    // Reported state is a projection of the rollout's events.
    const rolloutLog = logger.child({ component: 'rollout' });
    const events = new RolloutEvents(rolloutLog);
    events.on(reportProjection(rep));
    let rollout: Rollout | undefined;
    components.push(
      step(() => trust.load()),
      connection,
      step(async () => {
        rep.setExecutionProviders(runtime.providers);
        await rep.start();
      }, () => rep.stop()),
      step(
        async () => {
          const db = database as AgentDatabase;
          rollout = new Rollout({ config, connection, trust, events, database: db, kv: kv(db), store: new ModelStore(config.stateDir), loader, registry, shadows, logger: rolloutLog });
          await rollout.start();
        },
        async () => rollout?.stop(),
      ),
    );
    if (outbox && recorder) {
      const health = new HealthSampler({ sink: outbox, outbox, ...config.telemetry.health, stateDir: config.stateDir, logger: telemetryLog });
      const { delivery, ackTimeoutS } = config.telemetry;
      const uploader = new TelemetryUploader({
        outbox, transport: connection, topicRoot: config.mqtt.topicRoot, deviceId: config.deviceId, logger: telemetryLog,
        delivery, resendAfterMs: ackTimeoutS * 1000, ...config.telemetry.upload,
      });
      // Stopped in reverse, after HTTP has drained: health, then the recorder cuts its final point,
      // then the uploader flushes it (bounded; never waiting for a collector's ack), then the ack
      // listener and the outbox, and only then MQTT and the database.
      components.push(outbox);
      if (delivery === 'collector') {
        components.push(new TelemetryAckListener({ outbox, transport: connection, topicRoot: config.mqtt.topicRoot, deviceId: config.deviceId, logger: telemetryLog }));
      }
      components.push(uploader, recorder, health);
    }
  }
  if (config.models.dir) {
    components.push(new ModelRepository({ dir: config.models.dir, config: config.models, loader, registry, logger: logger.child({ component: 'repository' }) }));
  }
  // The metrics listener starts before the APIs and stops after them: a scrape sees the shutdown's last requests.
  if (metricsServer) components.push(metricsServer);
  components.push(access, http);
  if (grpc) components.push(grpc);
  const started: Component[] = [];

  return {
    registry,
    get reporter() {
      return reporter;
    },
    get providers() {
      return runtime.providers;
    },
    get httpAddress() {
      return http.address;
    },
    get grpcAddress() {
      return grpc?.address;
    },
    get metricsAddress() {
      return metricsServer?.address;
    },
    async start() {
      logger.info({ version, deviceId: config.deviceId, arch: process.arch }, 'edgefleet agent starting');
      for (const c of components) {
        await c.start();
        started.push(c);
      }
      ready = true;
      logger.info('edgefleet agent ready');
    },
    reload: () => access.reload(),
    async stop() {
      ready = false;
      // Reverse order: the HTTP API stops taking requests and drains first; MQTT says offline last.
      for (const c of started.reverse()) await c.stop();
      started.length = 0;
      for (const s of registry.servables()) await s.retire();
      logger.info('edgefleet agent stopped');
    },
  };
}
