import { unlink } from 'node:fs/promises';
import type { ServiceDefinition } from '@grpc/proto-loader';
import type { Logger } from 'pino';
import type { ApiAccess } from '../access/api-access.js';
import type { AgentConfig } from '../config/schema.js';
import { EdgefleetError, errorMessage, failureKind, unavailable } from '../errors.js';
import { statusOf } from '../http/errors.js';
import type { InferencePath, PreparedInfer } from '../serving/inference-path.js';
import type { ModelRegistry, Selector } from '../serving/registry.js';
import type { Servable } from '../serving/servable.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { Reply, ResponseStream, Route } from './call.js';
import * as kserve from './kserve.js';
import { HealthService } from './health.js';
import { loadServices, PROTO_FILES, protoDir } from './protos.js';
import { Reflection } from './reflection.js';
import * as tf from './tf-serving.js';
import { GrpcTransport } from './transport.js';

export interface GrpcServerOptions {
  config: NonNullable<AgentConfig['grpc']>;
  registry: ModelRegistry;
  metrics: Metrics;
  /** The inference path the HTTP API uses too: same batching, metrics and telemetry. */
  inference: InferencePath;
  /** TLS and bearer tokens (config `api`), shared with the HTTP API; absent: plaintext, open to all. */
  access?: ApiAccess;
  logger: Logger;
  agentVersion: string;
  /** Whether the agent counts as ready (models in hand serve); false while starting or stopping. */
  isReady: () => boolean;
}

export interface GrpcAddress {
  /** The TCP port, when listening on one. */
  port: number | undefined;
  socket: string | undefined;
}

/** Longest wait at stop for calls in flight. */
const DRAIN_MS = 5000;

type Unary = (request: unknown, reply: Reply) => void;
type Streaming = (request: unknown, out: ResponseStream) => void;
type Bidi = (out: ResponseStream) => { message(request: unknown): void; end(): void };

/**
 * The gRPC API (PROTOCOL.md section 8): TensorFlow Serving's PredictionService
 * and ModelService, KServe v2's GRPCInferenceService and the standard health
 * service, on the agent's own HTTP/2 transport (transport.ts, call.ts), over
 * the same registry and inference path as the HTTP API.
 */
export class GrpcServer {
  private transport: GrpcTransport | undefined;
  private bound: GrpcAddress | undefined;
  private inFlight = 0;
  private draining = false;
  private readonly health = new HealthService(() => this.options.isReady() && !this.draining);

  constructor(private readonly options: GrpcServerOptions) {}

  get address(): GrpcAddress | undefined {
    return this.bound;
  }

  async start(): Promise<GrpcAddress> {
    const { config, logger, access } = this.options;
    const services = loadServices();
    const routes = new Map<string, Route>();
    const served: string[] = [];
    const serve = (name: string, service: ServiceDefinition, handlers: { unary?: Record<string, Unary>; stream?: Record<string, Streaming>; bidi?: Record<string, Bidi> }): void => {
      served.push(name);
      for (const [method, def] of Object.entries(service)) {
        const coding = { decode: def.requestDeserialize, encode: def.responseSerialize as (m: unknown) => Uint8Array, requestType: (def.requestType.type as { name: string }).name };
        const unary = handlers.unary?.[method];
        const streaming = handlers.stream?.[method];
        const bidi = handlers.bidi?.[method];
        // Methods of the .proto files with no handler here answer UNIMPLEMENTED, as methods of no service do.
        if (unary && !def.requestStream && !def.responseStream) routes.set(def.path, { ...coding, kind: 'unary', handle: unary });
        else if (streaming && !def.requestStream && def.responseStream) routes.set(def.path, { ...coding, kind: 'stream', handle: streaming });
        else if (bidi && def.requestStream && def.responseStream) routes.set(def.path, { ...coding, kind: 'bidi', open: bidi });
        else if (unary ?? streaming ?? bidi) throw new Error(`gRPC method ${def.path}: the handler's kind does not match the .proto`);
      }
    };
    serve('tensorflow.serving.PredictionService', services.prediction, { unary: this.predictionService() });
    serve('tensorflow.serving.ModelService', services.model, { unary: this.modelService() });
    serve('inference.GRPCInferenceService', services.inference, { unary: this.inferenceService() });
    serve('grpc.health.v1.Health', services.health, { unary: { Check: this.health.Check as Unary }, stream: { Watch: this.health.Watch as Streaming } });
    const reflection = new Reflection([...served, 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'], PROTO_FILES, protoDir());
    const reflect: Bidi = (out) => reflection.open(out);
    serve('grpc.reflection.v1.ServerReflection', services.reflection, { bidi: { ServerReflectionInfo: reflect } });
    serve('grpc.reflection.v1alpha.ServerReflection', services.reflectionAlpha, { bidi: { ServerReflectionInfo: reflect } });
    const transport = new GrpcTransport({
      routes,
      maxMessageBytes: config.maxMessageBytes,
      access,
      onFault: (err, path) => logger.error({ method: path, err: errorMessage(err) }, 'gRPC call failed in the agent'),
    });
    let port: number | undefined;
    try {
      if (config.port !== null) port = await transport.listenTcp(config.host, config.port, access?.tls);
      // Plaintext even with api.tls: the socket file's permissions guard it; bearer tokens still apply.
      if (config.socket !== undefined) await transport.listenSocket(config.socket);
    } catch (err) {
      await transport.close(0); // a port already bound must not outlive the failed start
      throw err;
    }
    this.transport = transport;
    this.bound = { port, socket: config.socket };
    logger.info({ host: config.host, port, socket: config.socket, tls: access?.tls !== undefined }, 'gRPC API listening');
    return this.bound;
  }

  /** Stops taking calls and waits (up to DRAIN_MS) for those in flight. */
  async stop(): Promise<void> {
    const transport = this.transport;
    if (!transport) return;
    this.draining = true;
    this.health.endWatches();
    await transport.close(DRAIN_MS);
    this.transport = undefined;
    if (this.options.config.socket !== undefined) await unlink(this.options.config.socket).catch(() => {});
  }

  private predictionService(): Record<string, Unary> {
    const { registry } = this.options;
    return {
      Predict: this.infer('grpc-tf', 'Predict', (req: tf.PredictRequestMessage) => ({
        ...tf.specTarget(req.model_spec),
        prepare: (servable: Servable) => tf.preparePredict(servable, req),
      })),
      GetModelMetadata: this.info('GetModelMetadata', (req: tf.GetModelMetadataRequestMessage) => tf.modelMetadata(registry, req)),
    };
  }

  private modelService(): Record<string, Unary> {
    const { registry } = this.options;
    return { GetModelStatus: this.info('GetModelStatus', (req: tf.GetModelStatusRequestMessage) => tf.modelStatus(registry, req)) };
  }

  private inferenceService(): Record<string, Unary> {
    const { registry, agentVersion, isReady } = this.options;
    type Named = { name?: string; version?: string };
    return {
      ServerLive: this.info('ServerLive', () => ({ live: true })),
      ServerReady: this.info('ServerReady', () => ({ ready: isReady() && !this.draining })),
      ModelReady: this.info('ModelReady', (req: Named) => kserve.modelReady(registry, req)),
      ServerMetadata: this.info('ServerMetadata', () => ({ name: 'edgefleet', version: agentVersion, extensions: ['model_repository'] })),
      ModelMetadata: this.info('ModelMetadata', (req: Named) => kserve.modelMetadata(registry, req)),
      ModelInfer: this.infer('grpc-v2', 'ModelInfer', (req: kserve.ModelInferRequestMessage) => ({
        ...kserve.target(req.model_name, req.model_version),
        prepare: (servable: Servable) => kserve.prepareModelInfer(servable, req),
      })),
    };
  }

  /** Counts a call in; false (and the call answered UNAVAILABLE) when over grpc.maxInFlight or stopping. */
  private enter(reply: Reply): boolean {
    this.inFlight++;
    this.options.metrics.inFlight.inc();
    if (this.inFlight <= this.options.config.maxInFlight && !this.draining) return true;
    const why = this.draining ? 'server is shutting down' : `server is overloaded (${this.inFlight} calls in flight); retry later`;
    reply(unavailable(why));
    this.leave();
    return false;
  }

  private leave(): void {
    this.inFlight--;
    this.options.metrics.inFlight.dec();
  }

  /** A call answered from the registry alone. */
  private info<Req>(method: string, answer: (request: Req) => unknown): Unary {
    return (request, reply) => {
      if (!this.enter(reply)) return;
      let message: unknown;
      try {
        message = answer(request as Req);
      } catch (err) {
        this.failed(method, err, reply);
        return this.leave();
      }
      this.leave();
      reply(null, message);
    };
  }

  private failed(method: string, err: unknown, reply: Reply): void {
    if (failureKind(err) !== 'client-input') this.options.logger.warn({ method, err: errorMessage(err) }, 'gRPC call failed');
    reply(err);
  }

  /** An inference call, through the inference path the HTTP API uses. */
  private infer<Req, Res>(
    api: string,
    method: string,
    read: (request: Req) => { model: string; selector: Selector; prepare: (servable: Servable) => PreparedInfer<Res> },
  ): Unary {
    return (request, reply) => {
      const started = performance.now();
      if (!this.enter(reply)) return;
      let answered = false;
      const once: Reply = (err, value) => {
        if (answered) return;
        answered = true;
        reply(err, value);
      };
      let target: ReturnType<typeof read> | undefined;
      try {
        target = read(request as Req);
        this.options.inference.run<Res>({
          ...target,
          api,
          started,
          where: method,
          send: (answer) => once(null, answer),
          fail: (err) => {
            once(err);
            return statusOf(err);
          },
          done: () => this.leave(),
          lastResort: (fatal) => {
            this.options.logger.error({ method, err: errorMessage(fatal) }, 'gRPC handler failed');
            once(new EdgefleetError('INTERNAL', 'internal error; see the agent log'));
          },
        });
      } catch (err) {
        // Never reached a model (a bad ModelSpec, an unknown model or version).
        this.options.metrics.refused(target?.model ?? '', api, statusOf(err));
        if (failureKind(err) !== 'client-input') this.options.logger.warn({ method, err: errorMessage(err) }, 'gRPC call failed');
        once(err);
        this.leave();
      }
    };
  }
}
