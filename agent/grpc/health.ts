import type { ServerUnaryCall, ServerWritableStream, sendUnaryData } from '@grpc/grpc-js';
import { notFound } from '../errors.js';
import { grpcError } from './status.js';

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

  readonly Check = (call: ServerUnaryCall<{ service?: string }, unknown>, callback: sendUnaryData<unknown>): void => {
    const service = call.request.service ?? '';
    const status = this.status(service);
    if (status === 'SERVICE_UNKNOWN') callback(grpcError(notFound(`service "${service}" is not served here`)));
    else callback(null, { status });
  };

  /** Sends the status now and on every change, until the client cancels or the server stops. */
  readonly Watch = (call: ServerWritableStream<{ service?: string }, unknown>): void => {
    const service = call.request.service ?? '';
    let last: ServingStatus | undefined;
    const send = (): void => {
      const now = this.status(service);
      if (now !== last) call.write({ status: now });
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
      call.end();
    };
    this.watchers.add(close);
    call.on('cancelled', end);
    call.on('close', end);
  };

  /** Ends every Watch: at stop, so open streams do not hold the shutdown up. */
  endWatches(): void {
    for (const close of [...this.watchers]) close();
  }
}
