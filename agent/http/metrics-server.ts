import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/schema.js';
import { errorMessage, notFound } from '../errors.js';
import type { Metrics } from '../telemetry/metrics.js';
import { sendError } from './errors.js';
import { isMetricsRequest } from './routes.js';
import { WireServer, type WireRequest, type WireResponse } from './wire/server.js';

export interface MetricsServerOptions {
  config: NonNullable<AgentConfig['metrics']>;
  metrics: Metrics;
  logger: Logger;
}

/** Prometheus keeps one connection per target; the rest is room for a person with curl. */
const MAX_CONNECTIONS = 64;
/** A scrape sends no body; this bounds what a stray request may hold. */
const BODY_LIMIT_BYTES = 1024;
/** Longest wait at stop for a scrape being answered. */
const DRAIN_MS = 2000;

/**
 * The metrics listener (config `metrics`): GET /metrics and TensorFlow
 * Serving's /monitoring/prometheus/metrics, and a 404 for every other path,
 * so a central Prometheus can scrape a board that keeps its inference API on
 * the loopback interface or behind bearer tokens. Plain HTTP without tokens:
 * it serves nothing but the metrics text.
 */
export class MetricsServer {
  private server: WireServer | undefined;

  constructor(private readonly options: MetricsServerOptions) {}

  async start(): Promise<AddressInfo> {
    const { config, logger } = this.options;
    const server = new WireServer({
      bodyLimitBytes: BODY_LIMIT_BYTES,
      maxConnections: MAX_CONNECTIONS,
      maxConnectionsSource: 'the metrics listener\'s limit',
      onRequest: (req, res) => this.handle(req, res),
      onRefused: (err) => logger.debug({ status: err.status, err: err.message }, 'malformed HTTP request to the metrics listener refused'),
      onHandlerError: (err) => logger.error({ err: errorMessage(err) }, 'metrics request handler failed'),
      onAcceptError: (err) => logger.error({ err: errorMessage(err) }, 'could not accept a metrics connection'),
    });
    const address = await server.listen(config.port, config.host);
    this.server = server;
    logger.info({ host: address.address, port: address.port }, 'metrics listener listening');
    return address;
  }

  get address(): AddressInfo | undefined {
    return this.server?.address;
  }

  /** Stops listening; a scrape being answered gets DRAIN_MS to finish. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = server.close();
    const timer = setTimeout(() => server.destroyAll(), DRAIN_MS);
    await closed;
    clearTimeout(timer);
  }

  private handle(req: WireRequest, res: WireResponse): void {
    if (!isMetricsRequest(req.method, req.url)) {
      sendError(res, notFound(`no such endpoint on the metrics listener: ${req.method} ${req.url} (it serves GET /metrics and /monitoring/prometheus/metrics)`));
      return;
    }
    this.options.metrics.render().then(
      ({ contentType, body }) => res.send(200, contentType, body),
      (err: unknown) => {
        this.options.logger.error({ err: errorMessage(err) }, 'could not render the metrics');
        if (!res.sent) sendError(res, err);
      },
    );
  }
}
