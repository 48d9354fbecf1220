/**
 * ModelInferResponse (grpc_predict_v2.proto) written straight to protobuf
 * bytes, as tf-response.ts writes Predict answers: no object per output for
 * protobufjs to check and convert (its 64-bit shape values each become a Long),
 * and typed contents written from the tensor, not element by element.
 */
import { encodeBinaryTensor } from '../codec/v2.js';
import type { HostTensor } from '../runtime/tensor.js';
import { writeContents } from './kserve-tensor.js';
import { packedInts, ProtoWriter } from './proto-writer.js';

/** A ModelInferResponse already in protobuf bytes; protos.ts passes it through. */
export type ModelInferResponseBytes = Buffer;

/**
 * The whole answer: model_name (1), model_version (2), id (3), outputs (5: name,
 * datatype, shape, and contents unless raw), and with `raw` each output's bytes
 * in raw_output_contents (6), in the order of the outputs.
 */
export function encodeModelInferResponse(
  head: { model_name: string; model_version: string; id?: string },
  outputs: readonly HostTensor[],
  raw: boolean,
): ModelInferResponseBytes {
  const rawOut = raw ? outputs.map((t) => encodeBinaryTensor(t.datatype, t.data)) : [];
  // Sized for the raw tensors up front: a megabyte of output is copied once, not at every doubling.
  const out = new ProtoWriter(512 + rawOut.reduce((n, b) => n + b.length + 10, 0));
  out.string(1, head.model_name);
  out.string(2, head.model_version);
  if (head.id) out.string(3, head.id);
  for (const t of outputs) {
    out.message(5, (o) => {
      o.string(1, t.name);
      o.string(2, t.datatype);
      packedInts(o, 3, t.shape);
      if (!raw) o.message(5, (contents) => writeContents(contents, t));
    });
  }
  for (const bytes of rawOut) out.bytes(6, bytes);
  return out.view();
}
