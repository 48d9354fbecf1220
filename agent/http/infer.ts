import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { EdgefleetError, errorMessage } from '../errors.js';
import type { Timed } from '../runtime/batcher.js';
import type { HostTensor } from '../runtime/tensor.js';
import type { Servable } from '../serving/servable.js';
import { parseJson } from './body.js';
import { parseV1Json } from './codec/fast-json.js';
import { encodeV1Response, parseV1Request } from './codec/v1.js';
import { encodeV2ResponseParts, parseV2Body } from './codec/v2.js';

export interface InferResult {
  headers: OutgoingHttpHeaders;
  /** A string when the whole answer is JSON: node:http then writes it with the head in one go. */
  body: Buffer | string;
  queueMs: number;
  computeMs: number;
}

/**
 * Runs a validated request. Inputs passed every check the model's declared
 * signature allows, so ONNX Runtime refusing them (say, two dynamic dimensions
 * that must agree) is still the client's input: a 400 with ORT's reason, not a 500.
 */
async function run(servable: Servable, inputs: readonly HostTensor[], outputs?: readonly string[]): Promise<Timed<HostTensor[]>> {
  try {
    return await servable.infer(inputs, outputs);
  } catch (err) {
    if (err instanceof EdgefleetError) throw err;
    throw new EdgefleetError('BAD_REQUEST', `model "${servable.name}" version ${servable.version} rejected the input: ${errorMessage(err).split('\n')[0] ?? ''}`);
  }
}

/** POST /v1/models/...:predict, TensorFlow Serving's REST predict. */
export async function predictV1(servable: Servable, body: Buffer): Promise<InferResult> {
  const request = parseV1Request(parseV1Json(body, body.length) ?? parseJson(body), servable.session.inputs);
  const result = await run(servable, request.inputs);
  const text = JSON.stringify(encodeV1Response(request.format, result.value));
  return { headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) }, body: text, queueMs: result.queueMs, computeMs: result.computeMs };
}

/** POST /v2/models/{name}[/versions/{v}]/infer, JSON or with the binary tensor extension. */
export async function inferV2(servable: Servable, modelName: string, body: Buffer, headers: IncomingHttpHeaders): Promise<InferResult> {
  const headerLength = headers['inference-header-content-length'];
  const request = parseV2Body(body, Array.isArray(headerLength) ? headerLength[0] : headerLength, servable.session);
  const result = await run(servable, request.inputs, request.outputs?.map((o) => o.name));
  const { header, chunks } = encodeV2ResponseParts(
    { modelName, modelVersion: String(servable.version), ...(request.id !== undefined && { id: request.id }) },
    result.value,
    request,
  );
  if (chunks.length === 0) {
    return {
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(header) },
      body: header,
      queueMs: result.queueMs,
      computeMs: result.computeMs,
    };
  }
  // One buffer: the JSON header, then each binary output.
  const headerBytes = Buffer.byteLength(header);
  let size = headerBytes;
  for (const c of chunks) size += c.length;
  const payload = Buffer.allocUnsafe(size);
  let at = payload.write(header, 0, 'utf8');
  for (const c of chunks) at += c.copy(payload, at);
  return {
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': size, 'Inference-Header-Content-Length': headerBytes },
    body: payload,
    queueMs: result.queueMs,
    computeMs: result.computeMs,
  };
}
