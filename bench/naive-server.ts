/**
 * The naive baseline: what one writes in five minutes with node:http and
 * onnxruntime-node. Speaks just enough OIP v2 JSON (`POST /v2/models/{name}/infer`,
 * FP32 inputs with flat `data`) to take the same requests as the agent.
 * Usage: node --import tsx bench/naive-server.ts <model.onnx> <intraOpNumThreads>
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadOrt } from '../agent/runtime/ort.js';

const [modelPath = '', threads = '1'] = process.argv.slice(2);
const ort = await loadOrt();
const session = await ort.InferenceSession.create(modelPath, {
  executionProviders: ['cpu'], intraOpNumThreads: Number(threads), interOpNumThreads: 1, graphOptimizationLevel: 'all',
});
const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    void (async () => {
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { inputs: { name: string; shape: number[]; data: number[] }[] };
        const feeds: Record<string, InstanceType<typeof ort.Tensor>> = {};
        for (const i of body.inputs) feeds[i.name] = new ort.Tensor('float32', Float32Array.from(i.data), i.shape);
        const results = await session.run(feeds);
        const outputs = Object.entries(results).map(([name, t]) => ({ name, datatype: 'FP32', shape: t.dims, data: Array.from(t.data as Float32Array) }));
        const text = JSON.stringify({ model_name: req.url?.split('/')[3], outputs });
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) }).end(text);
      } catch (err) {
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end(String(err));
      }
    })();
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
