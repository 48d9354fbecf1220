/**
 * The gRPC floor: a server that reads a call's request and answers at once
 * with an empty message (a valid ModelInferResponse or PredictResponse) and
 * grpc-status 0, with no checks, no protobuf and no inference. Its latency at
 * 1 client is what HTTP/2 and the gRPC client cost on this machine, which no
 * gRPC server on that HTTP/2 layer can beat:
 *   node grpc-echo-server.js edgefleet    the agent's own HTTP/2 transport (agent/grpc/transport.ts)
 *   node grpc-echo-server.js node-http2   node:http2, which the agent's gRPC ran on before
 *   node grpc-echo-server.js grpc-js      @grpc/grpc-js's server, the reference library, which it ran on first
 */
import { Server, ServerCredentials, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { createServer } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import type { Route } from '../agent/grpc/call.js';
import { GrpcTransport } from '../agent/grpc/transport.js';

const PATHS = ['/inference.GRPCInferenceService/ModelInfer', '/tensorflow.serving.PredictionService/Predict', '/inference.GRPCInferenceService/ServerLive'];
const EMPTY = new Uint8Array(0);

async function edgefleet(): Promise<number> {
  const route: Route = { kind: 'unary', requestType: 'any', decode: () => EMPTY, encode: () => EMPTY, handle: (_request, reply) => reply(null, EMPTY) };
  const transport = new GrpcTransport({ routes: new Map(PATHS.map((p) => [p, route])), maxMessageBytes: 64 * 1024 * 1024, access: undefined, onFault: () => {} });
  process.on('SIGTERM', () => void transport.close(0).then(() => process.exit(0)));
  return transport.listenTcp('127.0.0.1', 0, undefined);
}

function nodeHttp2(): Promise<number> {
  const EMPTY_MESSAGE = Buffer.alloc(5); // compressed flag 0, length 0
  const HEADERS = { ':status': 200, 'content-type': 'application/grpc' };
  const server = createServer();
  server.on('connection', (socket: Socket) => socket.setNoDelay(true));
  server.on('stream', (stream) => {
    stream.on('error', () => undefined);
    stream.on('data', () => undefined);
    stream.on('end', () => {
      stream.respond(HEADERS, { waitForTrailers: true });
      stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(EMPTY_MESSAGE);
    });
  });
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** grpc-js with its public API: one service definition per path, messages passed through as bytes. */
function grpcJs(): Promise<number> {
  const server = new Server();
  const bytes = (b: Buffer): Buffer => b;
  for (const path of PATHS) {
    const name = path.slice(path.lastIndexOf('/') + 1);
    const definition: ServiceDefinition = {
      [name]: { path, requestStream: false, responseStream: false, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes },
    };
    const handlers: UntypedServiceImplementation = { [name]: (_call: unknown, callback: (err: null, value: Buffer) => void) => callback(null, Buffer.alloc(0)) };
    server.addService(definition, handlers);
  }
  process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
  return new Promise((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))));
}

const SERVERS = { edgefleet, 'node-http2': nodeHttp2, 'grpc-js': grpcJs } as const;
const kind = process.argv[2];
if (!kind || !(kind in SERVERS)) throw new Error(`usage: grpc-echo-server.ts ${Object.keys(SERVERS).join('|')}`);
const port = await SERVERS[kind as keyof typeof SERVERS]();
process.stdout.write(`READY ${port}\n`);
