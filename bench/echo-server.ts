/**
 * The HTTP floor: node:http that reads the body and answers a fixed small JSON,
 * with no parsing and no inference. Its latency at 1 client is what the
 * transport and the load generator cost on this machine, which no server can beat.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const answer = Buffer.from(JSON.stringify({ model_name: 'noop', outputs: [{ name: 'probs', datatype: 'FP32', shape: [1, 10], parameters: { binary_data_size: 40 } }] }));
const server = createServer((req, res) => {
  req.on('data', () => undefined);
  req.on('end', () => res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': answer.length }).end(answer));
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
