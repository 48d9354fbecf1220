/** Which gRPC methods need a bearer token (config `api.tokensFile`), and what a refusal says. call.ts applies it. */

/** Methods open without a token, as GET /v2/health/* is over HTTP: liveness, readiness and health probes. */
const OPEN = new Set([
  '/inference.GRPCInferenceService/ServerLive',
  '/inference.GRPCInferenceService/ServerReady',
  '/grpc.health.v1.Health/Check',
  '/grpc.health.v1.Health/Watch',
]);

export const UNAUTHORIZED = 'unauthorized: send a valid bearer token (metadata "authorization: Bearer <token>")';

export function isOpen(path: string): boolean {
  return OPEN.has(path);
}
