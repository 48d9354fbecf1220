import type { PreparedInfer as PreparedInferOf } from '../serving/inference-path.js';
import type { Servable } from '../serving/servable.js';
import { parseJson } from './body.js';
import { parseV1Json } from '../codec/fast-json.js';
import { encodeV1Response, parseV1Request } from '../codec/v1.js';
import { encodeV2ResponseParts, parseV2Body } from '../codec/v2.js';

export interface InferAnswer {
  contentType: string;
  /** A string when the whole answer is JSON: it is written with the head in one go. */
  body: Buffer | string;
  /** The binary tensor extension's Inference-Header-Content-Length. */
  extra?: Record<string, number>;
}

/**
 * A request body read and checked against the model. Reading is synchronous and
 * running is the caller's, so the hot path waits on nothing but the model.
 */
export type PreparedInfer = PreparedInferOf<InferAnswer>;

/** POST /v1/models/...:predict, TensorFlow Serving's REST predict. */
export function prepareV1(servable: Servable, body: Buffer): PreparedInfer {
  const request = parseV1Request(parseV1Json(body, body.length) ?? parseJson(body), servable.session.inputs);
  return {
    inputs: request.inputs,
    outputs: undefined,
    answer: (outputs) => {
      const text = JSON.stringify(encodeV1Response(request.format, outputs));
      return { contentType: 'application/json', body: text };
    },
  };
}

/** POST /v2/models/{name}[/versions/{v}]/infer, JSON or with the binary tensor extension. */
export function prepareV2(servable: Servable, modelName: string, body: Buffer, headers: Readonly<Record<string, string>>): PreparedInfer {
  const request = parseV2Body(body, headers['inference-header-content-length'], servable.session);
  return {
    inputs: request.inputs,
    outputs: request.outputs?.map((o) => o.name),
    answer: (outputs) => {
      const { header, chunks } = encodeV2ResponseParts(
        { modelName, modelVersion: String(servable.version), ...(request.id !== undefined && { id: request.id }) },
        outputs,
        request,
      );
      if (chunks.length === 0) return { contentType: 'application/json', body: header };
      // One buffer: the JSON header, then each binary output.
      const headerBytes = Buffer.byteLength(header);
      let size = headerBytes;
      for (const c of chunks) size += c.length;
      const payload = Buffer.allocUnsafe(size);
      let at = payload.write(header, 0, 'utf8');
      for (const c of chunks) at += c.copy(payload, at);
      return { contentType: 'application/octet-stream', body: payload, extra: { 'Inference-Header-Content-Length': headerBytes } };
    },
  };
}
