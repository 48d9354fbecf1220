/**
 * Load generator for the gRPC benchmark (bench/grpc.ts), in a process of its
 * own so it never shares an event loop with the parent's bookkeeping:
 *   node grpc-load-child.js '<LoadSpec JSON>'
 * Builds one request per input image in the API's own encoding, up front, then
 * runs `clients` closed loops (one connection each) for a warm-up and a
 * measuring window, and prints one JSON line: req/s, p50, p99, errors.
 *
 * gRPC calls are pre-framed messages (the 5-byte prefix and the serialized
 * request) in HTTP/2 frames on a bare socket (raw-h2.ts), one connection per
 * client: the client pays no protobuf encoding and no HTTP/2 library per call,
 * as HTTP requests are pre-encoded bytes on a bare socket (raw-http.ts).
 * grpc-js's client, used first, spent more CPU per call than the server it
 * measured (90 % and more of a core at 16 clients); node:http2's client,
 * used next, about 90 µs per call.
 */
import { loadSync } from '@grpc/proto-loader';
import { protoDir } from '../agent/grpc/protos.js';
import { randomImages } from './data.js';
import { percentile } from './load.js';
import { RawGrpcConnection } from './raw-h2.js';
import { encodeRequest, RawConnection, type RawRequest } from './raw-http.js';

export type Api = 'v1-json' | 'v2-binary' | 'grpc-tf' | 'grpc-v2';

export interface LoadSpec {
  api: Api;
  model: string;
  shape: number[];
  images: number;
  host: string;
  httpPort: number;
  grpcPort: number;
  /** The agent's gRPC Unix socket, to call through it instead of TCP. */
  socket?: string;
  clients: number;
  warmupMs: number;
  windowMs: number;
}

export interface LoadOutcome {
  rps: number;
  p50: number;
  p99: number;
  ok: number;
  errors: number;
  /** CPU the load generator used in the window, % of one core: near 100, it and not the server set the pace. */
  genCpuPct: number;
  firstError?: string;
}

type Send = () => Promise<void>;

function nested(data: Float32Array, shape: readonly number[], at = 0): unknown {
  if (shape.length === 0) return data[at];
  const [n, ...rest] = shape as [number, ...number[]];
  const stride = rest.reduce((a, b) => a * b, 1);
  return Array.from({ length: n }, (_, i) => nested(data, rest, at + i * stride));
}

function httpBodies(spec: LoadSpec, inputs: readonly Float32Array[]): RawRequest[] {
  return inputs.map((x): RawRequest => {
    if (spec.api === 'v1-json') {
      const body = Buffer.from(JSON.stringify({ inputs: nested(x, spec.shape) }));
      return { path: `/v1/models/${spec.model}:predict`, headers: { 'Content-Type': 'application/json' }, body };
    }
    const header = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', shape: spec.shape, datatype: 'FP32', parameters: { binary_data_size: x.byteLength } }], parameters: { binary_data_output: true } }));
    return {
      path: `/v2/models/${spec.model}/infer`,
      headers: { 'Content-Type': 'application/octet-stream', 'Inference-Header-Content-Length': header.length },
      body: Buffer.concat([header, Buffer.from(x.buffer, x.byteOffset, x.byteLength)]),
    };
  });
}

type Serialize = (value: object) => Buffer;

function grpcBodies(spec: LoadSpec, inputs: readonly Float32Array[]): { path: string; payloads: Buffer[] } {
  const definition = loadSync(['tensorflow_serving/apis/prediction_service.proto', 'grpc_predict_v2.proto'], { keepCase: true, longs: String, enums: String, includeDirs: [protoDir()] });
  const method = (service: string, name: string): { path: string; requestSerialize: Serialize } =>
    (definition[service] as unknown as Record<string, { path: string; requestSerialize: Serialize }>)[name] as { path: string; requestSerialize: Serialize };
  const bytes = (x: Float32Array): Buffer => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  if (spec.api === 'grpc-tf') {
    const m = method('tensorflow.serving.PredictionService', 'Predict');
    const dim = spec.shape.map((size) => ({ size: String(size) }));
    return { path: m.path, payloads: inputs.map((x) => m.requestSerialize({ model_spec: { name: spec.model }, inputs: { x: { dtype: 'DT_FLOAT', tensor_shape: { dim }, tensor_content: bytes(x) } } })) };
  }
  const m = method('inference.GRPCInferenceService', 'ModelInfer');
  return { path: m.path, payloads: inputs.map((x) => m.requestSerialize({ model_name: spec.model, inputs: [{ name: 'x', datatype: 'FP32', shape: spec.shape.map(String) }], raw_input_contents: [bytes(x)] })) };
}

/** One client's sender: a keep-alive socket (HTTP) or a channel of its own (gRPC). */
function senders(spec: LoadSpec): { make: (k: number) => Send; close: () => void } {
  const elements = spec.shape.reduce((a, b) => a * b, 1);
  const inputs = randomImages(spec.images, elements, 7);
  const closers: (() => void)[] = [];
  if (spec.api === 'v1-json' || spec.api === 'v2-binary') {
    const encoded = httpBodies(spec, inputs).map((r) => encodeRequest(spec.host, spec.httpPort, r));
    return {
      make: (k) => {
        const conn = new RawConnection(spec.host, spec.httpPort, 60_000);
        closers.push(() => conn.close());
        let i = k;
        return async () => {
          const status = await conn.send(encoded[i++ % encoded.length] as Buffer);
          if (status !== 200) throw new Error(`HTTP ${status}`);
        };
      },
      close: () => closers.forEach((c) => c()),
    };
  }
  const { path, payloads } = grpcBodies(spec, inputs);
  const framed = payloads.map((p) => {
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(p.length, 1);
    return Buffer.concat([prefix, p]);
  });
  return {
    make: (k) => {
      // A connection per client, as separate client processes would have.
      const conn = new RawGrpcConnection(spec.socket ? { path: spec.socket } : { host: spec.host, port: spec.grpcPort }, path, 60_000);
      closers.push(() => conn.close());
      let i = k;
      return () => conn.call(framed[i++ % framed.length] as Buffer);
    },
    close: () => closers.forEach((c) => c()),
  };
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '') as LoadSpec;
  const { make, close } = senders(spec);
  const clients = Array.from({ length: spec.clients }, (_, k) => make(k));
  const start = performance.now();
  const from = start + spec.warmupMs;
  const until = from + spec.windowMs;
  const latencies: number[] = [];
  // The parent samples the server's CPU time at these marks.
  let cpuFrom = process.cpuUsage();
  let cpuUsed = 0;
  setTimeout(() => {
    cpuFrom = process.cpuUsage();
    process.stdout.write('WINDOW_START\n');
  }, from - performance.now());
  setTimeout(() => {
    const d = process.cpuUsage(cpuFrom);
    cpuUsed = (d.user + d.system) / 1000;
    process.stdout.write('WINDOW_END\n');
  }, until - performance.now());
  let errors = 0;
  let firstError: string | undefined;
  await Promise.all(
    clients.map(async (send) => {
      for (;;) {
        const t0 = performance.now();
        if (t0 >= until) return;
        try {
          await send();
          const t1 = performance.now();
          if (t0 >= from && t1 <= until) latencies.push(t1 - t0);
        } catch (err) {
          errors++;
          firstError ??= (err as Error).message;
          await new Promise((r) => setTimeout(r, 10));
        }
      }
    }),
  );
  close();
  const sorted = Float64Array.from(latencies).sort();
  const outcome: LoadOutcome = { rps: latencies.length / (spec.windowMs / 1000), p50: percentile(sorted, 50), p99: percentile(sorted, 99), ok: latencies.length, errors, genCpuPct: (cpuUsed / spec.windowMs) * 100, ...(firstError && { firstError }) };
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
}

await main();
