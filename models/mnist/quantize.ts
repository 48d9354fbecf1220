/**
 * Dynamic int8 quantization of an ONNX model's MatMul/Gemm weights, written
 * here rather than by onnxruntime's Python tooling.
 *
 * Every Gemm (alpha = beta = 1, no transA) or MatMul whose right-hand side is
 * a 2-D fp32 initializer W [K, N] becomes the pattern
 * `onnxruntime.quantization.quantize_dynamic` emits:
 *
 *   A ─ DynamicQuantizeLinear ─ A_q (uint8), A_scale, A_zp
 *   MatMulInteger(A_q, W_q int8, A_zp, W_zp = 0) ─ Cast(float) ─ Mul(A_scale · W_scale) ─ Add(bias)
 *
 * Why these standard ops and not com.microsoft DynamicQuantizeMatMul: both run
 * on CPU onnxruntime-node (checked), but the standard ops are opset-11 ONNX
 * that any runtime can load, and ORT's MatMulIntegerToFloat fusion rewrites
 * this exact pattern into DynamicQuantizeMatMul at session creation anyway,
 * so nothing is lost in speed. A is uint8 and W int8 because that is the
 * combination every ORT CPU build has kernels for (u8s8).
 *
 * Weights are symmetric (zero point 0), per output column by default: one
 * scale per column keeps small columns from being crushed by the largest
 * one. Activations are quantized per tensor at run time, from each request's
 * own min/max, which is what makes it "dynamic": no calibration data needed.
 */
import { attr, buildModel, DATA_TYPE } from '../onnx/builder.js';
import type { ModelSpec, NodeSpec, TensorSpec } from '../onnx/builder.js';
import { specFromModel } from './spec.js';

export interface QuantizeOptions {
  /** One weight scale per output column (default) instead of one per tensor. */
  perChannel?: boolean;
  /**
   * Quantize weights to 7 bits ([-63, 63]). x86 CPUs with AVX2 but without
   * VNNI compute u8×s8 through a saturating 16-bit intermediate
   * (vpmaddubsw); 7-bit weights cannot saturate it. Off by default: it costs
   * precision, and ARM and VNNI hosts do not need it.
   */
  reduceRange?: boolean;
}

/** A weight quantized to int8: values [K, N] row-major, with per-column or per-tensor scales. */
export interface QuantizedWeight {
  values: Int8Array;
  scales: Float32Array;
}

/** Symmetric int8 quantization of W [k, n]: q = round(w / scale), scale = max|w| / qmax per group. */
export function quantizeWeight(w: Float32Array, k: number, n: number, opts: QuantizeOptions = {}): QuantizedWeight {
  const perChannel = opts.perChannel ?? true;
  const qmax = opts.reduceRange ? 63 : 127;
  const maxAbs = new Float32Array(perChannel ? n : 1);
  for (let r = 0; r < k; r++) {
    for (let c = 0; c < n; c++) {
      const g = perChannel ? c : 0;
      const a = Math.abs(w[r * n + c]!);
      if (a > maxAbs[g]!) maxAbs[g] = a;
    }
  }
  // An all-zero group would give scale 0 and NaN codes; any scale encodes zeros exactly.
  const scales = maxAbs.map((m) => (m > 0 ? m / qmax : 1));
  const values = new Int8Array(k * n);
  for (let r = 0; r < k; r++) {
    for (let c = 0; c < n; c++) {
      const q = Math.round(w[r * n + c]! / scales[perChannel ? c : 0]!);
      values[r * n + c] = Math.max(-qmax, Math.min(qmax, q));
    }
  }
  return { values, scales };
}

/** A node this pass can rewrite: y = A·W (+ bias), W a [k, n] fp32 initializer. */
interface LinearMatch {
  activation: string;
  weightName: string;
  weight: Float32Array;
  k: number;
  n: number;
  /** Gemm transB = 1: `weight` is the transposed copy, and gets its own quantized name. */
  transposed: boolean;
  bias?: string;
  output: string;
}

function attrNum(node: NodeSpec, name: string, dflt: number): number {
  const a = node.attrs?.[name];
  return a && (a.kind === 'int' || a.kind === 'float') ? a.value : dflt;
}

/** [rows, cols] → [cols, rows], for Gemm's transB = 1. */
function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c]!;
  return out;
}

function matchLinear(node: NodeSpec, inits: ReadonlyMap<string, TensorSpec>): LinearMatch | undefined {
  if ((node.domain ?? '') !== '' || (node.op !== 'Gemm' && node.op !== 'MatMul')) return undefined;
  const [activation, weightName, bias] = node.inputs;
  const output = node.outputs[0];
  const w = weightName === undefined ? undefined : inits.get(weightName);
  if (!activation || !weightName || !output || w?.type !== 'float32' || w.dims.length !== 2) return undefined;
  let [k = 0, n = 0] = w.dims;
  let weight = w.data as Float32Array;
  let transposed = false;
  if (node.op === 'Gemm') {
    // Only the plain y = A·W + C form maps onto MatMulInteger + Add.
    const plain = attrNum(node, 'alpha', 1) === 1 && attrNum(node, 'beta', 1) === 1 && attrNum(node, 'transA', 0) === 0;
    if (!plain) return undefined;
    if (attrNum(node, 'transB', 0) === 1) {
      weight = transpose(weight, k, n);
      [k, n] = [n, k];
      transposed = true;
    }
  }
  return { activation, weightName, weight, k, n, transposed, output, ...(bias ? { bias } : {}) };
}

/** Graph-wide rewrite state: new nodes and initializers, and activations already quantized. */
interface Rewrite {
  nodes: NodeSpec[];
  initializers: TensorSpec[];
  quantizedActs: Map<string, readonly [string, string, string]>;
  opts: QuantizeOptions;
}

/** DynamicQuantizeLinear once per activation, shared by every MatMul that reads it. */
function quantizeActivation(rw: Rewrite, activation: string): readonly [string, string, string] {
  const known = rw.quantizedActs.get(activation);
  if (known) return known;
  const outs = [`${activation}_quantized`, `${activation}_scale`, `${activation}_zero_point`] as const;
  rw.nodes.push({ op: 'DynamicQuantizeLinear', name: `${activation}_QuantizeLinear`, inputs: [activation], outputs: outs });
  rw.quantizedActs.set(activation, outs);
  return outs;
}

/** W_q, W_scale, W_zero_point initializers, once per weight even when several nodes share it. */
function quantizeWeightInit(rw: Rewrite, m: LinearMatch): readonly [string, string, string] {
  const w = `${m.weightName}${m.transposed ? '_T' : ''}`;
  const names = [`${w}_quantized`, `${w}_scale`, `${w}_zero_point`] as const;
  if (rw.initializers.some((t) => t.name === names[0])) return names;
  const q = quantizeWeight(m.weight, m.k, m.n, rw.opts);
  const groups = q.scales.length;
  const scaleDims = groups === 1 ? [] : [groups];
  rw.initializers.push(
    { name: names[0], type: 'int8', dims: [m.k, m.n], data: q.values },
    { name: names[1], type: 'float32', dims: scaleDims, data: q.scales },
    // Symmetric weights: zero point 0, one per scale (MatMulInteger takes a scalar or per-column [N]).
    { name: names[2], type: 'int8', dims: scaleDims, data: new Int8Array(groups) },
  );
  return names;
}

function emitIntegerMatMul(rw: Rewrite, m: LinearMatch, base: string): void {
  const [wq, ws, wzp] = quantizeWeightInit(rw, m);
  const [aq, as, azp] = quantizeActivation(rw, m.activation);
  const mm = m.bias ? `${base}_matmul` : m.output;
  rw.nodes.push(
    { op: 'MatMulInteger', name: `${base}_MatMulInteger`, inputs: [aq, wq, azp, wzp], outputs: [`${base}_int32`] },
    { op: 'Cast', name: `${base}_Cast`, inputs: [`${base}_int32`], outputs: [`${base}_float`], attrs: { to: attr.int(DATA_TYPE.float32) } },
    { op: 'Mul', name: `${base}_ScaleMul`, inputs: [as, ws], outputs: [`${base}_scale`] },
    { op: 'Mul', name: `${base}_OutputMul`, inputs: [`${base}_float`, `${base}_scale`], outputs: [mm] },
  );
  if (m.bias) rw.nodes.push({ op: 'Add', name: `${base}_BiasAdd`, inputs: [mm, m.bias], outputs: [m.output] });
}

/** Initializers still read by some node (the fp32 weights that were replaced are not). */
function liveInitializers(all: readonly TensorSpec[], nodes: readonly NodeSpec[], outputs: ModelSpec['outputs']): TensorSpec[] {
  const used = new Set<string>(outputs.map((o) => o.name));
  for (const n of nodes) for (const i of n.inputs) used.add(i);
  return all.filter((t) => used.has(t.name));
}

/** The rewritten spec; nodes that do not match are kept as they are (still fp32). */
export function quantizeSpec(spec: ModelSpec, opts: QuantizeOptions = {}): ModelSpec {
  const inits = new Map((spec.initializers ?? []).map((t) => [t.name, t] as const));
  const rw: Rewrite = { nodes: [], initializers: [...inits.values()], quantizedActs: new Map(), opts };
  let rewritten = 0;
  spec.nodes.forEach((node, i) => {
    const m = matchLinear(node, inits);
    if (!m) {
      rw.nodes.push(node);
      return;
    }
    emitIntegerMatMul(rw, m, node.name ?? `${node.op}_${i}`);
    rewritten++;
  });
  if (rewritten === 0) throw new Error(`quantize: no MatMul/Gemm with an fp32 initializer weight in ${spec.name}`);
  return {
    ...spec,
    doc: `${spec.doc ?? spec.name} (dynamic int8: ${rewritten} MatMul/Gemm)`,
    nodes: rw.nodes,
    initializers: liveInitializers(rw.initializers, rw.nodes, spec.outputs),
  };
}

/** fp32 ONNX bytes → dynamically quantized int8 ONNX bytes. */
export function quantizeDynamic(model: Uint8Array, opts: QuantizeOptions = {}): Uint8Array {
  return buildModel(quantizeSpec(specFromModel(model), opts));
}
