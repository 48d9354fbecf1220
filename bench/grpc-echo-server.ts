/**
 * The gRPC floor: a server that reads a call's request and answers at once
 * with an empty message (a valid ModelInferResponse or PredictResponse) and
 * grpc-status 0, with no checks, no protobuf and no inference. Its latency at
 * 1 client is what HTTP/2 and the gRPC client cost on this machine, which no
 * gRPC server on that HTTP/2 layer can beat:
 *   node grpc-echo-server.js edgefleet    the agent's own HTTP/2 transport (agent/grpc/transport.ts)
 *   node grpc-echo-server.js node-http2   node:http2, which the agent's gRPC ran on before
 */
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

const kind = process.argv[2];
if (kind !== 'edgefleet' && kind !== 'node-http2') throw new Error('usage: grpc-echo-server.ts edgefleet|node-http2');
const port = await (kind === 'edgefleet' ? edgefleet() : nodeHttp2());
process.stdout.write(`READY ${port}\n`);
