/**
 * The gRPC floor: node:http2 that reads a call's request and answers at once
 * with an empty message (a valid ModelInferResponse or PredictResponse) and
 * grpc-status 0, with no checks, no protobuf and no inference. Its latency at
 * 1 client is what HTTP/2 and the gRPC client cost on this machine, which no
 * gRPC server can beat.
 */
import { createServer } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';

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
server.listen(0, '127.0.0.1', () => process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
