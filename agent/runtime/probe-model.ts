/**
 * A minimal ONNX model (y = Identity(x), x: float[1]) encoded by hand, so the
 * provider probe needs no model file and no protobuf library at run time.
 */
function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}

function field(num: number, payload: number[] | string): number[] {
  const bytes = typeof payload === 'string' ? [...Buffer.from(payload, 'utf8')] : payload;
  return [...varint((num << 3) | 2), ...varint(bytes.length), ...bytes];
}

function intField(num: number, value: number): number[] {
  return [...varint(num << 3), ...varint(value)];
}

function valueInfo(name: string): number[] {
  const dim = field(1, intField(1, 1)); // Dimension.dim_value = 1
  const tensorType = [...intField(1, 1), ...field(2, dim)]; // elem_type FLOAT, shape
  return [...field(1, name), ...field(2, field(1, tensorType))];
}

export function probeModel(): Uint8Array {
  const node = [...field(1, 'x'), ...field(2, 'y'), ...field(4, 'Identity')];
  const graph = [...field(1, node), ...field(2, 'probe'), ...field(11, valueInfo('x')), ...field(12, valueInfo('y'))];
  const opset = [...field(1, ''), ...intField(2, 17)];
  return Uint8Array.from([...intField(1, 8), ...field(7, graph), ...field(8, opset)]);
}
