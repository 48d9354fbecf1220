import type { HostTensor } from './tensor.js';

/**
 * A dimension the model's inputs name alike (ONNX dim_param): ONNX gives one
 * name one size, but ONNX Runtime does not check that before it runs, so a
 * request breaking it fails inside a node, where it would read as a model fault.
 */
export interface SharedDim {
  symbol: string;
  at: readonly { input: string; axis: number }[];
}

/** From each input's declared shape (names for symbolic dimensions), the names used more than once. */
export function sharedDims(inputs: readonly { name: string; shape: readonly (number | string)[] }[]): SharedDim[] {
  const bySymbol = new Map<string, { input: string; axis: number }[]>();
  for (const input of inputs) {
    input.shape.forEach((d, axis) => {
      if (typeof d !== 'string' || d === '') return;
      const at = bySymbol.get(d) ?? [];
      at.push({ input: input.name, axis });
      bySymbol.set(d, at);
    });
  }
  return [...bySymbol].filter(([, at]) => at.length > 1).map(([symbol, at]) => ({ symbol, at }));
}

/** Says where a request's inputs break a shared dimension; undefined when they agree. */
export function disagreement(shared: readonly SharedDim[], inputs: readonly HostTensor[]): string | undefined {
  for (const { symbol, at } of shared) {
    let first: { input: string; axis: number; size: number } | undefined;
    for (const { input, axis } of at) {
      const size = inputs.find((t) => t.name === input)?.shape[axis];
      if (size === undefined) continue;
      if (first === undefined) first = { input, axis, size };
      else if (size !== first.size) {
        return `dimension "${symbol}" is ${first.size} in input "${first.input}" (dimension ${first.axis}) but ${size} in input "${input}" (dimension ${axis}); the model declares them the same`;
      }
    }
  }
  return undefined;
}
