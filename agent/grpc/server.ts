import type { EventEmitter } from 'node:events';
import { lstat, unlink } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { Server, status as GrpcStatus, type ServerCredentials, type sendUnaryData, type ServerUnaryCall, type UntypedServiceImplementation } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { ApiAccess } from '../access/api-access.js';
import type { AgentConfig } from '../config/schema.js';
import { errorMessage, failureKind, unavailable } from '../errors.js';
import { statusOf } from '../http/errors.js';
import type { InferencePath, PreparedInfer } from '../serving/inference-path.js';
import type { ModelRegistry, Selector } from '../serving/registry.js';
import type { Servable } from '../serving/servable.js';
import type { Metrics } from '../telemetry/metrics.js';
import * as kserve from './kserve.js';
import { authInterceptors, serverCredentials } from './access.js';
import { HealthService } from './health.js';
import { loadServices } from './protos.js';
import { grpcError } from './status.js';
import * as tf from './tf-serving.js';

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

type Handler = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => void;

/**
 * The gRPC API (PROTOCOL.md section 8): TensorFlow Serving's PredictionService
 * and ModelService and KServe v2's GRPCInferenceService on @grpc/grpc-js, over
 * the same registry and inference path as the HTTP API.
 */
export class GrpcServer {
  private server: Server | undefined;
  private bound: GrpcAddress | undefined;
  private inFlight = 0;
  private draining = false;
  private readonly health = new HealthService(() => this.options.isReady() && !this.draining);

  constructor(private readonly options: GrpcServerOptions) {}

  get address(): GrpcAddress | undefined {
    return this.bound;
  }

  async start(): Promise<GrpcAddress> {
    const { config, logger } = this.options;
    const services = loadServices();
    const server = new Server({
      'grpc.max_receive_message_length': config.maxMessageBytes,
      'grpc.max_send_message_length': -1,
      // Channelz keeps per-call statistics nobody here reads (its service is not served): a cost on every call.
      'grpc.enable_channelz': 0,
      interceptors: authInterceptors(this.options.access),
    });
    server.addService(services.prediction, this.predictionService());
    server.addService(services.model, this.modelService());
    server.addService(services.inference, this.inferenceService());
    server.addService(services.health, { Check: this.health.Check, Watch: this.health.Watch });
    let port: number | undefined;
    try {
      if (config.port !== null) port = await bind(server, `${hostPort(config.host, config.port)}`, serverCredentials(this.options.access));
      if (config.socket !== undefined) {
        await removeStaleSocket(config.socket);
        // Plaintext even with api.tls: the socket file's permissions guard it; bearer tokens still apply.
        await bind(server, `unix:${config.socket}`, serverCredentials(undefined));
      }
    } catch (err) {
      server.forceShutdown(); // a port already bound must not outlive the failed start
      throw err;
    }
    disableNagle(server);
    this.server = server;
    this.bound = { port, socket: config.socket };
    logger.info({ host: config.host, port, socket: config.socket, tls: this.options.access?.tls !== undefined }, 'gRPC API listening');
    return this.bound;
  }

  /** Stops taking calls and waits (up to DRAIN_MS) for those in flight. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.draining = true;
    this.health.endWatches();
    let timer: NodeJS.Timeout | undefined;
    const shutdown = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    await Promise.race([shutdown, new Promise<void>((resolve) => (timer = setTimeout(resolve, DRAIN_MS)))]);
    clearTimeout(timer);
    server.forceShutdown();
    this.server = undefined;
    if (this.options.config.socket !== undefined) await unlink(this.options.config.socket).catch(() => {});
  }

  private predictionService(): UntypedServiceImplementation {
    const { registry } = this.options;
    return {
      Predict: this.infer('grpc-tf', 'Predict', (req: tf.PredictRequestMessage) => ({
        ...tf.specTarget(req.model_spec),
        prepare: (servable: Servable) => tf.preparePredict(servable, req),
      })),
      GetModelMetadata: this.info('GetModelMetadata', (req: tf.GetModelMetadataRequestMessage) => tf.modelMetadata(registry, req)),
    };
  }

  private modelService(): UntypedServiceImplementation {
    const { registry } = this.options;
    return { GetModelStatus: this.info('GetModelStatus', (req: tf.GetModelStatusRequestMessage) => tf.modelStatus(registry, req)) };
  }

  private inferenceService(): UntypedServiceImplementation {
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
  private enter(callback: sendUnaryData<unknown>): boolean {
    this.inFlight++;
    this.options.metrics.inFlight.inc();
    if (this.inFlight <= this.options.config.maxInFlight && !this.draining) return true;
    const why = this.draining ? 'server is shutting down' : `server is overloaded (${this.inFlight} calls in flight); retry later`;
    callback(grpcError(unavailable(why)));
    this.leave();
    return false;
  }

  private leave(): void {
    this.inFlight--;
    this.options.metrics.inFlight.dec();
  }

  /** A call answered from the registry alone. */
  private info<Req>(method: string, answer: (request: Req) => unknown): Handler {
    return (call, callback) => {
      if (!this.enter(callback)) return;
      try {
        callback(null, answer(call.request as Req));
      } catch (err) {
        this.failed(method, err, callback);
      } finally {
        this.leave();
      }
    };
  }

  private failed(method: string, err: unknown, callback: sendUnaryData<unknown>): void {
    if (failureKind(err) !== 'client-input') this.options.logger.warn({ method, err: errorMessage(err) }, 'gRPC call failed');
    callback(grpcError(err));
  }

  /** An inference call, through the inference path the HTTP API uses. */
  private infer<Req, Res>(
    api: string,
    method: string,
    read: (request: Req) => { model: string; selector: Selector; prepare: (servable: Servable) => PreparedInfer<Res> },
  ): Handler {
    return (call, callback) => {
      const started = performance.now();
      if (!this.enter(callback)) return;
      let answered = false;
      const reply = (err: unknown, value?: Res): void => {
        if (answered) return;
        answered = true;
        if (err === undefined) callback(null, value);
        else callback(grpcError(err));
      };
      let target: ReturnType<typeof read> | undefined;
      try {
        target = read(call.request as Req);
        this.options.inference.run<Res>({
          ...target,
          api,
          started,
          where: method,
          send: (answer) => reply(undefined, answer),
          fail: (err) => {
            reply(err);
            return statusOf(err);
          },
          done: () => this.leave(),
          lastResort: (fatal) => {
            this.options.logger.error({ method, err: errorMessage(fatal) }, 'gRPC handler failed');
            reply({ code: GrpcStatus.INTERNAL });
          },
        });
      } catch (err) {
        // Never reached a model (a bad ModelSpec, an unknown model or version).
        this.options.metrics.refused(target?.model ?? '', api, statusOf(err));
        if (failureKind(err) !== 'client-input') this.options.logger.warn({ method, err: errorMessage(err) }, 'gRPC call failed');
        reply(err);
        this.leave();
      }
    };
  }
}

/**
 * grpc-js leaves Nagle's algorithm on for the connections it accepts (its client turns it
 * off, as gRPC's C core does on both sides): a reply's headers, message and trailers are
 * separate writes, and a small one may wait for the client's delayed ACK. grpc-js has no
 * option for it, so the listeners it made are reached through its private map (there since
 * 1.10); should that change, this does nothing rather than fail.
 */
function disableNagle(server: Server): void {
  const listeners = (server as unknown as { http2Servers?: Map<EventEmitter, unknown> }).http2Servers;
  for (const listener of listeners?.keys() ?? []) {
    listener.on('connection', (socket: Socket) => {
      if (typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
    });
  }
}

function hostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}

function bind(server: Server, address: string, credentials: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => (err ? reject(new Error(`gRPC API could not listen on ${address}: ${err.message}`)) : resolve(port)));
  });
}

/** A socket left by an agent that did not stop cleanly would make the bind fail; anything else at that path is left alone. */
async function removeStaleSocket(path: string): Promise<void> {
  const stat = await lstat(path).catch(() => undefined);
  if (stat?.isSocket()) await unlink(path);
}
