/**
 * PredictResponse (tensorflow_serving/apis/predict.proto) written straight to
 * protobuf bytes. Answers carry the typed fields (`float_val`, ...), as
 * TensorFlow Serving's do; through protobufjs every element would become a JS
 * number in an array and be written one by one (120 ms of CPU for PP-OCRv4's
 * 265,000-float output), where a packed `float_val` is exactly the tensor's
 * little-endian bytes behind a length. Field numbers are those of the .proto
 * files in proto/; the Python client tests read every datatype back. KServe's
 * ModelInfer answers are written the same way (kserve-response.ts).
 */
import { TF_DTYPE } from '../http/model-info.js';
import type { HostTensor } from '../runtime/tensor.js';
import { packed64, packedInts, rawBytes as raw, ProtoWriter as Out, VARINT } from './proto-writer.js';

/** tensorflow/core/framework/types.proto numbers of the DataType names TF_DTYPE uses. */
const DT_NUMBER: Record<string, number> = {
  DT_FLOAT: 1, DT_DOUBLE: 2, DT_INT32: 3, DT_UINT8: 4, DT_INT16: 5, DT_INT8: 6, DT_STRING: 7, DT_INT64: 9,
  DT_BOOL: 10, DT_UINT16: 17, DT_HALF: 19, DT_UINT32: 22, DT_UINT64: 23,
};

/** One TensorProto: dtype, tensor_shape, and the values in the typed field of the dtype. */
function tensorProto(out: Out, t: HostTensor): void {
  out.tag(1, VARINT);
  out.varint(DT_NUMBER[TF_DTYPE[t.datatype]] ?? 0);
  out.message(2, (shape) => {
    for (const d of t.shape) shape.message(2, (dim) => {
      dim.tag(1, VARINT);
      dim.varint(d);
    });
  });
  const data = t.data;
  switch (t.datatype) {
    case 'FP32':
      return out.bytes(5, raw(data as Float32Array)); // packed float_val: the little-endian floats themselves
    case 'FP64':
      return out.bytes(6, raw(data as Float64Array));
    case 'BOOL':
      return out.bytes(11, data as Uint8Array); // packed bool_val: one varint byte, 0 or 1, each
    case 'INT8':
    case 'INT16':
    case 'INT32':
    case 'UINT8':
    case 'UINT16':
      return packedInts(out, 7, data as Int32Array);
    case 'FP16':
      return packedInts(out, 13, data as Uint16Array); // half_val: the half's bits
    case 'UINT32':
      return packedInts(out, 16, data as Uint32Array);
    case 'INT64':
      return packed64(out, 10, data as BigInt64Array);
    case 'UINT64':
      return packed64(out, 17, data as BigUint64Array);
    case 'BYTES':
      for (const s of data as string[]) out.string(8, s);
  }
}

/** The whole PredictResponse: `outputs` (a map, field 1) and `model_spec` (field 2). */
export function encodePredictResponse(name: string, version: number, outputs: readonly HostTensor[]): Buffer {
  const out = new Out(1024);
  for (const t of outputs) {
    out.message(1, (entry) => {
      entry.string(1, t.name);
      entry.message(2, (tensor) => tensorProto(tensor, t));
    });
  }
  out.message(2, (spec) => {
    spec.string(1, name);
    spec.message(2, (v) => {
      v.tag(1, VARINT);
      v.varint(version);
    });
    spec.string(3, 'serving_default');
  });
  return out.view();
}
