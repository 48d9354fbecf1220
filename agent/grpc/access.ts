import { Metadata, ServerCredentials, ServerInterceptingCall, ServerListenerBuilder, ResponderBuilder, experimental, status as GrpcStatus, type ServerInterceptor } from '@grpc/grpc-js';
import type { ApiAccess } from '../access/api-access.js';
import type { TlsMaterial } from '../access/tls-material.js';

/** Methods open without a token, as GET /v2/health/* is over HTTP: liveness, readiness and health probes. */
const OPEN = new Set([
  '/inference.GRPCInferenceService/ServerLive',
  '/inference.GRPCInferenceService/ServerReady',
  '/grpc.health.v1.Health/Check',
  '/grpc.health.v1.Health/Watch',
]);
const UNAUTHORIZED = 'unauthorized: send a valid bearer token (metadata "authorization: Bearer <token>")';

/** Hands grpc-js the agent's certificate and key, now and after every reload. */
class MaterialProvider implements experimental.CertificateProvider {
  private readonly unsubscribe = new Map<experimental.IdentityCertificateUpdateListener, () => void>();
  constructor(private readonly tls: TlsMaterial) {}
  addCaCertificateListener(): void {}
  removeCaCertificateListener(): void {}
  addIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    // Deferred: grpc-js subscribes before it adds the watcher that applies an update, so a synchronous first call would be lost.
    this.unsubscribe.set(listener, this.tls.subscribe((m) => process.nextTick(() => listener({ certificate: m.cert, privateKey: m.key }))));
  }
  removeIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    this.unsubscribe.get(listener)?.();
    this.unsubscribe.delete(listener);
  }
}

/** TLS with the reloadable certificate when `api.tls` is set, else plaintext. */
export function serverCredentials(access: ApiAccess | undefined): ServerCredentials {
  if (!access?.tls) return ServerCredentials.createInsecure();
  // grpc-js passes this function's first argument on as the identity (certificate and key) provider; no client certificates.
  return experimental.createCertificateProviderServerCredentials(new MaterialProvider(access.tls), null, false);
}

/** With bearer tokens configured, calls without a valid one end UNAUTHENTICATED before any handler runs. */
export function authInterceptors(access: ApiAccess | undefined): ServerInterceptor[] {
  if (!access?.tokens) return [];
  const interceptor: ServerInterceptor = (method, call) => {
    if (OPEN.has(method.path)) return new ServerInterceptingCall(call);
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const [auth] = metadata.get('authorization');
        if (access.allows(typeof auth === 'string' ? auth : undefined)) next(metadata);
        else call.sendStatus({ code: GrpcStatus.UNAUTHENTICATED, details: UNAUTHORIZED, metadata: new Metadata() });
      })
      .build();
    return new ServerInterceptingCall(call, new ResponderBuilder().withStart((next) => next(listener)).build());
  };
  return [interceptor];
}
