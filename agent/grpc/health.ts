import { notFound } from '../errors.js';
import type { Reply, ResponseStream } from './call.js';

type ServingStatus = 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';

/** The services whose health is asked by name; "" is the server as a whole. All share the agent's readiness. */
const SERVICES = new Set(['', 'tensorflow.serving.PredictionService', 'tensorflow.serving.ModelService', 'inference.GRPCInferenceService']);
/** How often a Watch looks for a change of readiness. */
const WATCH_POLL_MS = 1000;

/**
 * The standard gRPC health service (grpc.health.v1.Health), for grpc_health_probe
 * and Kubernetes gRPC probes: SERVING while the agent is ready, NOT_SERVING
 * while starting or stopping.
 */
export class HealthService {
  private readonly watchers = new Set<() => void>();

  constructor(private readonly serving: () => boolean) {}

  private status(service: string): ServingStatus {
    if (!SERVICES.has(service)) return 'SERVICE_UNKNOWN';
    return this.serving() ? 'SERVING' : 'NOT_SERVING';
  }

  readonly Check = (request: { service?: string }, reply: Reply): void => {
    const service = request.service ?? '';
    const status = this.status(service);
    if (status === 'SERVICE_UNKNOWN') reply(notFound(`service "${service}" is not served here`));
    else reply(null, { status });
  };

  /** Sends the status now and on every change, until the client cancels or the server stops. */
  readonly Watch = (request: { service?: string }, out: ResponseStream): void => {
    const service = request.service ?? '';
    let last: ServingStatus | undefined;
    const send = (): void => {
      const now = this.status(service);
      if (now !== last) out.write({ status: now });
      last = now;
    };
    send();
    const timer = setInterval(send, WATCH_POLL_MS);
    const end = (): void => {
      clearInterval(timer);
      this.watchers.delete(end);
    };
    const close = (): void => {
      end();
      out.end();
    };
    this.watchers.add(close);
    out.onClose(end);
  };

  /** Ends every Watch: at stop, so open streams do not hold the shutdown up. */
  endWatches(): void {
    for (const close of [...this.watchers]) close();
  }
}
