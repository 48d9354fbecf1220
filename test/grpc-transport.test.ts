/**
 * The gRPC transport (agent/grpc/call.ts, transport.ts) against a grpc-js
 * client and against raw HTTP/2 frames a client library would never send:
 * each malformed request gets a status that says what was wrong. Server
 * reflection is read back with grpc-js and the descriptors it returns are
 * enough to call ModelInfer with no .proto file; Python's protobuf, loading
 * them into a descriptor pool as grpcurl would, checks every import and type
 * name. grpc-api.test.ts covers the services themselves with Python's grpcio.
 */
import { connect, type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import { gzipSync } from 'node:zlib';
import { Client, credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import descriptor from 'protobufjs/ext/descriptor.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTimeout } from '../agent/grpc/call.js';
import { protoDir } from '../agent/grpc/protos.js';
import { identityModel, mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { startTestAgent, type TestAgent } from './helpers/agent.js';
import { pythonClient, pythonGrpc, pythonGrpcSkipReason } from './helpers/python-grpc.js';

const MAX_MESSAGE = 64 * 1024;
const definition = loadSync(['grpc_predict_v2.proto', 'grpc_reflection/v1/reflection.proto', 'grpc_reflection/v1alpha/reflection.proto'], {
  keepCase: true,
  longs: String,
  oneofs: true,
  includeDirs: [protoDir()],
});
type Method = { path: string; requestSerialize: (v: object) => Buffer; responseDeserialize: (b: Buffer) => any };
const method = (service: string, name: string): Method => (definition[service] as unknown as Record<string, Method>)[name] as Method;
const INFER = method('inference.GRPCInferenceService', 'ModelInfer');
const LIVE = method('inference.GRPCInferenceService', 'ServerLive');

const inferRequest = (model = 'mlp'): object => ({
  model_name: model,
  inputs: [{ name: 'x', datatype: 'FP32', shape: ['1', '784'] }],
  raw_input_contents: [Buffer.from(new Float32Array(784).fill(0.5).buffer)],
});

/** The 5-byte gRPC prefix and a message. */
const frame = (message: Buffer, compressed = false): Buffer => {
  const head = Buffer.alloc(5);
  head[0] = compressed ? 1 : 0;
  head.writeUInt32BE(message.length, 1);
  return Buffer.concat([head, message]);
};

let t: TestAgent;
let target: string;
let client: Client;

/** A unary call through grpc-js; its answer or its error. */
function unary(m: Method, request: object, options: { deadlineMs?: number; metadata?: Metadata } = {}): Promise<{ ok?: any; err?: ServiceError }> {
  const callOptions = options.deadlineMs === undefined ? {} : { deadline: Date.now() + options.deadlineMs };
  return new Promise((resolve) => {
    client.makeUnaryRequest(m.path, m.requestSerialize, m.responseDeserialize, request, options.metadata ?? new Metadata(), callOptions, (err, ok) =>
      resolve(err ? { err } : { ok }),
    );
  });
}

/** One request of raw HTTP/2 frames: the response headers, the body and the trailers. */
async function raw(headers: OutgoingHttpHeaders, body: Buffer | undefined): Promise<{ headers: IncomingHttpHeaders; trailers: IncomingHttpHeaders; body: Buffer }> {
  const session: ClientHttp2Session = connect(`http://${target}`);
  try {
    return await new Promise((resolve, reject) => {
      const req = session.request({ ':method': 'POST', ':path': INFER.path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
      let head: IncomingHttpHeaders = {};
      let trailers: IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      req.on('response', (h) => (head = h));
      req.on('trailers', (h) => (trailers = h));
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => resolve({ headers: head, trailers, body: Buffer.concat(chunks) }));
      req.on('error', reject);
      req.end(body);
    });
  } finally {
    session.close();
  }
}

/** The grpc-status and grpc-message of a raw response (trailers, or headers alone). */
const statusOf = (r: { headers: IncomingHttpHeaders; trailers: IncomingHttpHeaders }): { code: number; message: string } => {
  const from = r.trailers['grpc-status'] !== undefined ? r.trailers : r.headers;
  return { code: Number(from['grpc-status']), message: decodeURIComponent(String(from['grpc-message'] ?? '')) };
};

beforeAll(async () => {
  t = await startTestAgent(
    { grpc: { port: 0, maxMessageBytes: MAX_MESSAGE } },
    async (dir) => {
      await writeModelTree(dir, 'mlp', 1, mlpModel());
    },
  );
  target = `127.0.0.1:${t.agent.grpcAddress?.port ?? 0}`;
  client = new Client(target, credentials.createInsecure());
}, 120_000);
afterAll(async () => {
  client?.close();
  await t?.close();
});

describe('gRPC transport with a grpc-js client', () => {
  it('answers unary calls', async () => {
    expect((await unary(LIVE, {})).ok).toEqual({ live: true });
    const r = await unary(INFER, inferRequest());
    expect(r.ok).toMatchObject({ model_name: 'mlp', model_version: '1', outputs: [{ name: 'probs', datatype: 'FP32', shape: ['1', '10'] }] });
    expect(r.ok.raw_output_contents[0]).toHaveLength(40);
  });

  it('answers within a deadline, and sends metadata through', async () => {
    const metadata = new Metadata();
    metadata.set('x-request-id', 'abc');
    metadata.set('trace-bin', Buffer.from([1, 2, 3]));
    expect((await unary(INFER, inferRequest(), { deadlineMs: 10_000, metadata })).ok?.model_name).toBe('mlp');
  });

  it('answers UNIMPLEMENTED for a method it does not serve', async () => {
    const r = await unary({ ...LIVE, path: '/inference.GRPCInferenceService/RepositoryIndex' }, {});
    expect(r.err?.code).toBe(status.UNIMPLEMENTED);
    expect(r.err?.details).toBe('method /inference.GRPCInferenceService/RepositoryIndex is not served here');
  });

  it('refuses a message over grpc.maxMessageBytes with RESOURCE_EXHAUSTED', async () => {
    const big = { ...inferRequest(), raw_input_contents: [Buffer.alloc(MAX_MESSAGE)] };
    const r = await unary(INFER, big);
    expect(r.err?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(r.err?.details).toMatch(/^request message of \d+ bytes is over the limit of 65536 \(grpc\.maxMessageBytes\)$/);
  });
});

describe('gRPC transport with raw HTTP/2 frames', () => {
  const message = (): Buffer => INFER.requestSerialize(inferRequest());

  it('answers a well-formed request: headers, one message, grpc-status 0 in the trailers', async () => {
    const r = await raw({}, frame(message()));
    expect(r.headers[':status']).toBe(200);
    expect(r.headers['content-type']).toBe('application/grpc');
    expect(statusOf(r)).toEqual({ code: status.OK, message: '' });
    expect(r.body.readUInt32BE(1)).toBe(r.body.length - 5);
    expect(INFER.responseDeserialize(r.body.subarray(5)).model_name).toBe('mlp');
  });

  it('gives each malformed request a status that says what was wrong', async () => {
    const whole = frame(message());
    const cases: [string, OutgoingHttpHeaders, Buffer | undefined, number, string][] = [
      ['truncated message', {}, whole.subarray(0, 100), status.INVALID_ARGUMENT, `request message is truncated: its length prefix says ${whole.length - 5} bytes and 95 arrived`],
      ['truncated prefix', {}, whole.subarray(0, 3), status.INVALID_ARGUMENT, 'request message is truncated: 3 of the 5 bytes of its length prefix arrived'],
      ['no message', {}, undefined, status.INVALID_ARGUMENT, `${INFER.path} takes one request message; the request had none`],
      ['two messages', {}, Buffer.concat([whole, whole]), status.INVALID_ARGUMENT, `${INFER.path} takes one request message; the client sent more`],
      ['prefix over the limit', {}, Buffer.from([0, 0, 0x10, 0, 0]), status.RESOURCE_EXHAUSTED, 'request message of 1048576 bytes is over the limit of 65536 (grpc.maxMessageBytes)'],
      ['not protobuf', {}, frame(Buffer.from([0x0a, 0xff, 0xff])), status.INVALID_ARGUMENT, 'request is not a valid ModelInferRequest message: '],
      ['bad compressed flag', {}, Buffer.concat([Buffer.from([7]), whole.subarray(1)]), status.INVALID_ARGUMENT, 'request message has compressed-flag byte 7; it must be 0 or 1'],
      ['compressed without an encoding', {}, frame(message(), true), status.INVALID_ARGUMENT, 'request message is marked compressed, but the call has no grpc-encoding header'],
      ['unknown encoding', { 'grpc-encoding': 'snappy' }, frame(message(), true), status.UNIMPLEMENTED, 'grpc-encoding "snappy" is not supported; send messages uncompressed or as identity,gzip,deflate'],
      ['not gzip', { 'grpc-encoding': 'gzip' }, frame(message(), true), status.INVALID_ARGUMENT, 'request message does not decompress as gzip: '],
      ['bad timeout', { 'grpc-timeout': '5 seconds' }, whole, status.INVALID_ARGUMENT, 'grpc-timeout "5 seconds" is not a timeout: 1 to 8 digits and a unit (H, M, S, m, u or n)'],
      ['JSON codec', { 'content-type': 'application/grpc+json' }, whole, status.UNIMPLEMENTED, 'content-type "application/grpc+json": only protobuf messages are served (application/grpc or application/grpc+proto)'],
    ];
    for (const [what, headers, body, code, text] of cases) {
      const r = await raw(headers, body);
      expect(r.headers[':status'], what).toBe(200);
      const s = statusOf(r);
      expect(s.code, `${what}: ${s.message}`).toBe(code);
      expect(s.message.startsWith(text), `${what}: ${s.message}`).toBe(true);
    }
  });

  it('ends a call whose request is still arriving at its deadline with DEADLINE_EXCEEDED', async () => {
    const session = connect(`http://${target}`);
    try {
      const started = performance.now();
      const req = session.request({ ':method': 'POST', ':path': INFER.path, 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': '100m' });
      req.write(frame(message()).subarray(0, 10)); // and never the rest
      const trailers = await new Promise<IncomingHttpHeaders>((resolve) => {
        req.on('response', (h) => h['grpc-status'] !== undefined && resolve(h));
        req.on('trailers', resolve);
        req.resume();
      });
      expect(statusOf({ headers: trailers, trailers: {} })).toEqual({ code: status.DEADLINE_EXCEEDED, message: 'deadline of 100 ms exceeded' });
      expect(performance.now() - started).toBeGreaterThanOrEqual(95);
    } finally {
      session.close();
    }
  });

  it('answers a request that is not gRPC with HTTP 415, and a GET with 405', async () => {
    const text = await raw({ 'content-type': 'application/json' }, Buffer.from('{}'));
    expect(text.headers[':status']).toBe(415);
    expect(text.headers['grpc-message']).toBe('content-type "application/json" is not gRPC; send application/grpc');
    const get = await raw({ ':method': 'GET' }, undefined);
    expect(get.headers[':status']).toBe(405);
  });

  it('reads a gzip-compressed request message', async () => {
    const r = await raw({ 'grpc-encoding': 'gzip' }, frame(gzipSync(message()), true));
    expect(statusOf(r).code).toBe(status.OK);
    expect(INFER.responseDeserialize(r.body.subarray(5)).model_name).toBe('mlp');
    const bomb = await raw({ 'grpc-encoding': 'gzip' }, frame(gzipSync(Buffer.alloc(MAX_MESSAGE + 1)), true));
    expect(statusOf(bomb)).toEqual({ code: status.RESOURCE_EXHAUSTED, message: 'request message decompresses to more than the limit of 65536 bytes (grpc.maxMessageBytes)' });
  });

  it('reads grpc-timeout in every unit', () => {
    expect([parseTimeout('2H'), parseTimeout('3M'), parseTimeout('4S'), parseTimeout('5m'), parseTimeout('6000u'), parseTimeout('7000000n')]).toEqual([7_200_000, 180_000, 4000, 5, 6, 7]);
    expect(parseTimeout(undefined)).toBeUndefined();
    expect(() => parseTimeout('123456789S')).toThrow(/grpc-timeout "123456789S" is not a timeout/);
  });
});

describe('gRPC server reflection', () => {
  /** One ServerReflectionInfo stream: the requests in order, the answers in order. */
  function reflect(version: 'v1' | 'v1alpha', requests: object[]): Promise<any[]> {
    const m = method(`grpc.reflection.${version}.ServerReflection`, 'ServerReflectionInfo');
    return new Promise((resolve, reject) => {
      const call = client.makeBidiStreamRequest(m.path, m.requestSerialize, m.responseDeserialize);
      const answers: any[] = [];
      call.on('data', (a) => answers.push(a));
      call.on('error', reject);
      call.on('end', () => resolve(answers));
      for (const r of requests) call.write(r);
      call.end();
    });
  }

  it('lists the services, v1 and v1alpha alike', async () => {
    const expected = [
      'tensorflow.serving.PredictionService',
      'tensorflow.serving.ModelService',
      'inference.GRPCInferenceService',
      'grpc.health.v1.Health',
      'grpc.reflection.v1.ServerReflection',
      'grpc.reflection.v1alpha.ServerReflection',
    ];
    for (const version of ['v1', 'v1alpha'] as const) {
      const [answer] = await reflect(version, [{ list_services: '' }]);
      expect(answer.list_services_response.service.map((s: { name: string }) => s.name)).toEqual(expected);
      expect(answer.original_request.list_services).toBe('');
    }
  });

  it('gives the files of a symbol with their imports, enough to call ModelInfer with no .proto file', async () => {
    const [bySymbol, byFile, unknown] = await reflect('v1', [
      { file_containing_symbol: 'inference.GRPCInferenceService' },
      { file_by_filename: 'tensorflow_serving/apis/predict.proto' },
      { file_containing_symbol: 'inference.Nope' },
    ]);
    const files = (bySymbol.file_descriptor_response.file_descriptor_proto as Buffer[]).map((b) => descriptor.FileDescriptorProto.decode(b) as unknown as { name: string; dependency: string[] });
    expect(files.map((f) => f.name)).toEqual(['grpc_predict_v2.proto']);
    const predict = (byFile.file_descriptor_response.file_descriptor_proto as Buffer[]).map((b) => descriptor.FileDescriptorProto.decode(b) as unknown as { name: string; dependency: string[] });
    expect(predict[0]).toMatchObject({ name: 'tensorflow_serving/apis/predict.proto', dependency: ['tensorflow/core/framework/tensor.proto', 'tensorflow_serving/apis/model.proto'] });
    // Every import is in the answer, down to the well-known wrappers.proto model.proto uses.
    const names = predict.map((f) => f.name);
    for (const f of predict) for (const dep of f.dependency) expect(names, `${f.name} imports ${dep}`).toContain(dep);
    expect(names).toContain('google/protobuf/wrappers.proto');
    expect(unknown.error_response).toEqual({ error_code: status.NOT_FOUND, error_message: 'symbol "inference.Nope" is not known to this server' });

    // As grpcurl does: message types built from the descriptors alone.
    const root = protobuf.Root.fromDescriptor({ file: files }, { keepCase: true });
    const Request = root.lookupType('inference.ModelInferRequest');
    const Response = root.lookupType('inference.ModelInferResponse');
    const body = Buffer.from(Request.encode(Request.fromObject({ model_name: 'mlp', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 784] }], raw_input_contents: [Buffer.alloc(784 * 4)] })).finish());
    const answer = await new Promise<any>((resolve, reject) =>
      client.makeUnaryRequest(INFER.path, (b: Buffer) => b, (b: Buffer) => Response.toObject(Response.decode(b)), body, (err, r) => (err ? reject(err) : resolve(r))),
    );
    expect(answer).toMatchObject({ model_name: 'mlp', outputs: [{ name: 'probs', datatype: 'FP32' }] });
  });
});

describe.skipIf(pythonGrpcSkipReason())('gRPC server reflection with Python grpcio and protobuf', () => {
  it('gives descriptors a protobuf descriptor pool accepts, and Predict called through them answers', async () => {
    const py = await pythonClient(pythonGrpc() as string);
    try {
      const request = { model_spec: { name: 'mlp' }, inputs: { x: { dtype: 'DT_FLOAT', tensor_shape: { dim: [{ size: 1 }, { size: 784 }] }, float_val: [0.5] } } };
      for (const version of ['v1', 'v1alpha']) {
        const r = await py.script('reflection_client.py', target, { version, service: 'tensorflow.serving.PredictionService', method: 'Predict', request });
        expect(r.services).toContain('tensorflow.serving.PredictionService');
        expect(r.files).toEqual(expect.arrayContaining(['tensorflow_serving/apis/prediction_service.proto', 'google/protobuf/any.proto', 'google/protobuf/wrappers.proto']));
        expect([r.input, r.output]).toEqual(['tensorflow.serving.PredictRequest', 'tensorflow.serving.PredictResponse']);
        // Int64Value in protobuf JSON is the bare number, as a string.
        expect(r.answer.model_spec).toMatchObject({ name: 'mlp', version: '1' });
        expect(r.answer.outputs.probs.float_val).toHaveLength(10);
      }
    } finally {
      await py.close();
    }
  }, 60_000);
});

describe('gRPC transport at stop', () => {
  it('ends open Watch streams OK, refuses a call still arriving with UNAVAILABLE, and stops without waiting out the drain', async () => {
    const agent = await startTestAgent({ grpc: { port: 0 } }, async (dir) => {
      await writeModelTree(dir, 'mlp', 1, mlpModel());
    });
    const address = `127.0.0.1:${agent.agent.grpcAddress?.port ?? 0}`;
    const session = connect(`http://${address}`);
    try {
      const ended = (req: ReturnType<ClientHttp2Session['request']>): Promise<IncomingHttpHeaders> =>
        new Promise((resolve) => {
          req.on('response', (h) => h['grpc-status'] !== undefined && resolve(h));
          req.on('trailers', resolve);
          req.resume();
        });
      const watch = session.request({ ':method': 'POST', ':path': '/grpc.health.v1.Health/Watch', 'content-type': 'application/grpc', te: 'trailers' });
      watch.end(frame(Buffer.alloc(0)));
      const firstStatus = new Promise<Buffer>((resolve) => watch.once('data', resolve));
      const watchEnd = ended(watch);
      expect((await firstStatus).subarray(5)).toEqual(Buffer.from([0x08, 0x01])); // status: SERVING
      const message = INFER.requestSerialize(inferRequest());
      const upload = session.request({ ':method': 'POST', ':path': INFER.path, 'content-type': 'application/grpc', te: 'trailers' });
      upload.write(frame(message).subarray(0, 20));
      const uploadEnd = ended(upload);
      // A stream the server has not seen before its GOAWAY is refused (REFUSED_STREAM, safe to retry): let it arrive.
      await new Promise((resolve) => setTimeout(resolve, 200));
      const started = performance.now();
      const stopped = agent.close();
      // The rest of the message arrives while the agent drains: too late for a handler to start.
      setTimeout(() => upload.end(frame(message).subarray(20)), 50);
      expect(statusOf({ headers: await watchEnd, trailers: {} }).code).toBe(status.OK);
      expect(statusOf({ headers: await uploadEnd, trailers: {} })).toEqual({ code: status.UNAVAILABLE, message: 'server is shutting down' });
      await stopped;
      expect(performance.now() - started).toBeLessThan(4000);
    } finally {
      session.destroy();
    }
  }, 30_000);
});

describe('gRPC transport with large messages', () => {
  it('takes and answers messages of hundreds of kilobytes, beyond HTTP/2\'s default 64 KiB window, byte for byte', async () => {
    const agent = await startTestAgent({ grpc: { port: 0 } }, async (dir) => {
      await writeModelTree(dir, 'id', 1, identityModel('float32'));
    });
    const big = new Client(`127.0.0.1:${agent.agent.grpcAddress?.port ?? 0}`, credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
    try {
      const n = 100_000;
      const x = Buffer.from(Float32Array.from({ length: n }, (_, i) => i / 7).buffer);
      const request = { model_name: 'id', inputs: [{ name: 'x', datatype: 'FP32', shape: ['1', String(n)] }], raw_input_contents: [x] };
      const answers = await Promise.all(
        [0, 1, 2].map(
          () =>
            new Promise<any>((resolve, reject) =>
              big.makeUnaryRequest(INFER.path, INFER.requestSerialize, INFER.responseDeserialize, request, (err, r) => (err ? reject(err) : resolve(r))),
            ),
        ),
      );
      for (const a of answers) {
        expect(a.outputs[0]).toMatchObject({ name: 'y', shape: ['1', String(n)] });
        expect(Buffer.compare(a.raw_output_contents[0], x)).toBe(0);
      }
    } finally {
      big.close();
      await agent.close();
    }
  }, 60_000);
});
