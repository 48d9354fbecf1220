import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { ApiAccess } from '../access/api-access.js';
import type { AgentConfig } from '../config/schema.js';
import { EdgefleetError, errorMessage, failureKind, notFound, unavailable } from '../errors.js';
import { InferencePath } from '../serving/inference-path.js';
import type { ModelRegistry } from '../serving/registry.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { InferenceRecorder } from '../telemetry/recorder.js';
import { sendError, sendJson } from './errors.js';
import { prepareV1, prepareV2, type InferAnswer } from './infer.js';
import { v1Metadata, v1Status, v2Metadata, v2ModelReady } from './model-info.js';
import { matchRoute, type Route } from './routes.js';
import { WireServer, type WireRequest, type WireResponse } from './wire/server.js';

export interface HttpServerOptions {
  config: AgentConfig['http'];
  registry: ModelRegistry;
  metrics: Metrics;
  /** Per model version request statistics for MQTT telemetry; absent without MQTT. */
  telemetry?: Pick<InferenceRecorder, 'record'>;
  logger: Logger;
  agentVersion: string;
  /** Whether the agent counts as ready (models in hand serve); false while starting or stopping. */
  isReady: () => boolean;
  /** TLS and bearer tokens (config `api`); absent: plain HTTP, open to all. */
  access?: ApiAccess;
  /** The inference path shared with the gRPC API; one of its own when absent. */
  inference?: InferencePath;
}

const UNAUTHORIZED = JSON.stringify({ error: 'unauthorized: send a valid bearer token (Authorization: Bearer <token>)' });

/** Longest wait at stop for connections still sending a request. */
const DRAIN_MS = 5000;
/** Connection-limit warnings: one, then at most one summary per this period. */
const LIMIT_LOG_MS = 10_000;
/** Descriptors the agent needs besides API connections (systemd/edgefleet-agent.service counts them). */
const OTHER_FDS = 200;

/** The soft limit on open files (after Node's own raise at start-up), from /proc/self/limits; undefined off Linux. */
async function openFileLimit(): Promise<number | undefined> {
  const limits = await readFile('/proc/self/limits', 'utf8').catch(() => '');
  const soft = /^Max open files\s+(\d+)/m.exec(limits)?.[1];
  return soft === undefined ? undefined : Number(soft);
}

const tooLarge = (limit: number): EdgefleetError =>
  new EdgefleetError('PAYLOAD_TOO_LARGE', `request body is larger than the limit of ${limit} bytes (http.bodyLimitBytes)`);

/**
 * The local HTTP API: TensorFlow Serving REST v1, the Open Inference Protocol
 * (KServe v2) and Prometheus metrics, on the lean HTTP/1.1 layer in wire/ to
 * keep the per-request overhead near that of `session.run` itself.
 */
export class HttpServer {
  private server: WireServer | undefined;
  private inFlight = 0;
  private draining = false;
  private drained: (() => void) | undefined;
  private readonly limitCounts = { evicted: 0, refused: 0 };
  private limitLoggedAt = -Infinity;
  private unsubscribeTls: (() => void) | undefined;

  private readonly inference: InferencePath;

  constructor(private readonly options: HttpServerOptions) {
    this.inference = options.inference ?? new InferencePath(options);
  }

  async start(): Promise<AddressInfo> {
    const { logger, config } = this.options;
    const tls = this.options.access?.tls;
    const server = new WireServer({
      bodyLimitBytes: config.bodyLimitBytes,
      maxConnections: config.maxConnections,
      onRequest: (req, res) => this.handle(req, res),
      onRefused: (err) => logger.debug({ status: err.status, err: err.message }, 'malformed HTTP request refused'),
      onHandlerError: (err) => logger.error({ err: errorMessage(err) }, 'request handler failed'),
      onConnectionLimit: (action) => this.connectionLimit(action),
      onAcceptError: (err) => logger.error({ err: errorMessage(err) }, 'could not accept an HTTP connection'),
      ...(tls && { tls: tls.material }),
    });
    // A reloaded certificate (SIGHUP) serves new connections.
    this.unsubscribeTls = tls?.subscribe((material) => server.setSecureContext(material));
    const address = await server.listen(config.port, config.host);
    this.server = server;
    logger.info({ host: address.address, port: address.port, maxConnections: config.maxConnections, tls: tls !== undefined }, 'HTTP API listening');
    const fdLimit = await openFileLimit();
    if (fdLimit !== undefined && fdLimit < config.maxConnections + OTHER_FDS) {
      logger.warn(
        { maxConnections: config.maxConnections, openFileLimit: fdLimit },
        `http.maxConnections (${config.maxConnections}) + ${OTHER_FDS} for the rest of the agent is above the open-file limit (${fdLimit}): raise LimitNOFILE or lower http.maxConnections, or a flood of connections can leave none for models, SQLite and MQTT`,
      );
    }
    return address;
  }

  get address(): AddressInfo | undefined {
    return this.server?.address;
  }

  /** Open connections now and the most ever open at once (never above http.maxConnections). */
  get connections(): { open: number; peak: number } {
    return { open: this.server?.connectionCount ?? 0, peak: this.server?.peakConnectionCount ?? 0 };
  }

  /** A flood hits the cap thousands of times a second: one warning, then a summary at most every LIMIT_LOG_MS. */
  private connectionLimit(action: 'evicted' | 'refused'): void {
    this.limitCounts[action]++;
    const now = performance.now();
    if (now - this.limitLoggedAt < LIMIT_LOG_MS) return;
    this.limitLoggedAt = now;
    const { evicted, refused } = this.limitCounts;
    this.limitCounts.evicted = this.limitCounts.refused = 0;
    this.options.logger.warn(
      { maxConnections: this.options.config.maxConnections, evicted, refused },
      'HTTP connections at http.maxConnections: new ones close the longest-waiting idle or slow connection, or get 503 when all have a request in progress',
    );
  }

  /**
   * Stops taking requests and waits for those in flight to finish, including
   * requests whose body is still arriving (for up to DRAIN_MS: a stalled
   * upload must not hold up the rest of the shutdown).
   */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.draining = true;
    this.unsubscribeTls?.();
    const closed = server.close();
    const handled = this.inFlight > 0 ? new Promise<void>((resolve) => (this.drained = resolve)) : Promise.resolve();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, DRAIN_MS)))]);
    clearTimeout(timer);
    server.destroyAll();
    await handled; // answers our own models owe: they finish, and the servables must be released
    await closed;
    this.server = undefined;
  }

  private handle(req: WireRequest, res: WireResponse): void {
    const started = performance.now();
    this.inFlight++;
    this.options.metrics.inFlight.inc();
    let route: Route | undefined;
    if (!this.authorized(req)) {
      // Nothing about why: no token, a wrong one and an unknown endpoint all look alike.
      res.send(401, 'application/json', UNAUTHORIZED, { 'WWW-Authenticate': 'Bearer' });
      this.done();
      return;
    }
    try {
      route = matchRoute(req.method, req.url);
      if (!route) throw notFound(`no such endpoint: ${req.method} ${req.url}`);
      if (this.inFlight > this.options.config.maxInFlight) throw unavailable(`server is overloaded (${this.inFlight} requests in flight); retry later`);
      if (route.kind === 'v1-predict' || route.kind === 'v2-infer') {
        this.infer(route, req, res, started);
        return;
      }
      if (req.bodyTooLarge) throw tooLarge(this.options.config.bodyLimitBytes);
    } catch (err) {
      this.fail(req, res, route, err);
      return;
    }
    const info = route;
    this.info(info, res).then(
      () => this.done(),
      (err: unknown) => this.fail(req, res, info, err),
    );
  }

  /** With bearer tokens configured, every request but the health probes (GET /v2/health/*) needs one. */
  private authorized(req: WireRequest): boolean {
    const access = this.options.access;
    if (!access?.tokens) return true;
    const path = req.url.split('?', 1)[0];
    if (path === '/v2/health/live' || path === '/v2/health/ready') return true;
    return access.allows(req.headers.authorization);
  }

  /** Every request ends here once answered, whatever the outcome. */
  private done(): void {
    this.inFlight--;
    this.options.metrics.inFlight.dec();
    if (this.draining && this.inFlight === 0) this.drained?.();
  }

  /** Answers a request that failed before it reached a model. */
  private fail(req: WireRequest, res: WireResponse, route: Route | undefined, err: unknown): void {
    try {
      const status = sendError(res, err);
      if (route && (route.kind === 'v1-predict' || route.kind === 'v2-infer')) {
        this.options.metrics.refused(route.model, route.kind === 'v1-predict' ? 'v1' : 'v2', status);
      }
      if (failureKind(err) !== 'client-input') this.options.logger.warn({ url: req.url, status, err: errorMessage(err) }, 'request failed');
    } catch (fatal) {
      this.lastResort(res, fatal);
    }
    this.done();
  }

  /** Last line of defence: the process never crashes on a request, which gets a 500 if it can still have one. */
  private lastResort(res: WireResponse, fatal: unknown): void {
    this.options.logger.error({ err: errorMessage(fatal) }, 'request handler failed');
    if (res.sent) return;
    try {
      sendError(res, fatal);
    } catch {
      // Nothing left to answer with; the connection's own catch-all sees the handler return unanswered.
    }
  }

  private async info(route: Exclude<Route, { kind: 'v1-predict' | 'v2-infer' }>, res: WireResponse): Promise<void> {
    const { registry } = this.options;
    switch (route.kind) {
      case 'metrics': {
        const { contentType, body } = await this.options.metrics.render();
        res.send(200, contentType, body);
        return;
      }
      case 'v2-server':
        return sendJson(res, 200, { name: 'edgefleet', version: this.options.agentVersion, extensions: ['binary_tensor_data', 'model_repository'] });
      case 'v2-live':
        return sendJson(res, 200, { live: true });
      case 'v2-ready':
        if (!this.options.isReady() || this.draining) throw unavailable('server is not ready (starting or shutting down)');
        return sendJson(res, 200, { ready: true });
      case 'v1-status':
        return sendJson(res, 200, v1Status(registry, route.model, route.selector));
      case 'v1-metadata':
        return sendJson(res, 200, v1Metadata(registry, route.model, route.selector));
      case 'v1-unsupported':
        registry.statuses(route.model); // an unknown model is a 404 first, as TensorFlow Serving answers
        throw new EdgefleetError('UNSUPPORTED', `:${route.method} is not supported for ONNX models; use :predict`);
      case 'v2-model':
        return sendJson(res, 200, v2Metadata(registry, route.model, route.selector));
      case 'v2-model-ready':
        return sendJson(res, 200, v2ModelReady(registry, route.model, route.selector));
    }
  }

  /** The inference path all APIs share (serving/inference-path.ts), answered over HTTP. */
  private infer(route: Extract<Route, { kind: 'v1-predict' | 'v2-infer' }>, req: WireRequest, res: WireResponse, started: number): void {
    const { bodyLimitBytes } = this.options.config;
    this.inference.run<InferAnswer>({
      model: route.model,
      selector: route.selector,
      api: route.kind === 'v1-predict' ? 'v1' : 'v2',
      started,
      where: req.url,
      prepare: (servable) => {
        if (req.bodyTooLarge) throw tooLarge(bodyLimitBytes);
        return route.kind === 'v1-predict' ? prepareV1(servable, req.body) : prepareV2(servable, route.model, req.body, req.headers);
      },
      send: (answer) => res.send(200, answer.contentType, answer.body, answer.extra),
      fail: (err) => sendError(res, err),
      done: () => this.done(),
      lastResort: (fatal) => this.lastResort(res, fatal),
    });
  }
}
