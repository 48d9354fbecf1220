/**
 * Models for the rollout tests: `scale` (y = x * factor) as the zoo has it,
 * and the same answers made slow: 512x512 matrix products that depend on
 * the input (so nothing folds it away) and is multiplied by zero into the
 * answer, so the slow version answers exactly what the fast one does.
 */
import { attr, buildModel } from '../../models/onnx/builder.js';
import { mulberry32 } from '../../models/onnx/zoo.js';

export function slowScaleModel(factor: number, rounds = 2, size = 512): Uint8Array {
  const rand = mulberry32(5);
  const w = new Float32Array(size * size).map(() => rand() * 2 - 1);
  const shape = ['batch', 'n'];
  return buildModel({
    name: 'scale',
    doc: `y = x * ${factor}, slowly`,
    inputs: [{ name: 'x', type: 'float32', shape }],
    outputs: [{ name: 'y', type: 'float32', shape }],
    initializers: [
      { name: 'factor', type: 'float32', dims: [], data: new Float32Array([factor]) },
      { name: 'w', type: 'float32', dims: [size, size], data: w },
      { name: 'zero', type: 'float32', dims: [], data: new Float32Array([0]) },
    ],
    nodes: [
      { op: 'ReduceSum', inputs: ['x'], outputs: ['s'], attrs: { keepdims: attr.int(0) } },
      { op: 'Mul', inputs: ['w', 's'], outputs: ['ws'] },
      // Each round a size^3 product on the same weights: slower without a bigger file to download.
      ...Array.from({ length: rounds }, (_, i) => ({ op: 'MatMul', inputs: [i === 0 ? 'ws' : `p${i}`, 'w'], outputs: [`p${i + 1}`] })),
      { op: 'ReduceSum', inputs: [`p${rounds}`], outputs: ['t'], attrs: { keepdims: attr.int(0) } },
      { op: 'Mul', inputs: ['t', 'zero'], outputs: ['t0'] },
      { op: 'Mul', inputs: ['x', 'factor'], outputs: ['xf'] },
      { op: 'Add', inputs: ['xf', 't0'], outputs: ['y'] },
    ],
  });
}
