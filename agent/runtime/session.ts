import type { InferenceSession, Tensor } from 'onnxruntime-node';
import type { AgentConfig, ExecutionProviderName } from '../config/schema.js';
import { EdgefleetError, errorMessage } from '../errors.js';
import type { Ort } from './ort.js';
import { sharedDims, type SharedDim } from './shared-dims.js';
import { DATATYPE_OF, ORT_TYPE, type HostTensor, type OrtType, type TensorSpec } from './tensor.js';

export type SessionOptions = Partial<AgentConfig['runtime']> & Pick<AgentConfig['runtime'], 'intraOpNumThreads' | 'interOpNumThreads' | 'graphOptimizationLevel'>;

/** One loaded ONNX Runtime session and what the model declares. */
export interface ModelSession {
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
  readonly executionProvider: ExecutionProviderName;
  /** Input dimensions the model names alike, which every request must give one size. */
  readonly sharedDims: readonly SharedDim[];
  /**
   * Runs the model; `outputNames` limits what ONNX Runtime computes and returns.
   * Rejects with ONNX Runtime's own error: runner.ts classifies it.
   */
  run(inputs: readonly HostTensor[], outputNames?: readonly string[]): Promise<HostTensor[]>;
  release(): Promise<void>;
}

function specOf(meta: InferenceSession.ValueMetadata, role: string): TensorSpec {
  if (!meta.isTensor) throw new EdgefleetError('MODEL_LOAD', `${role} "${meta.name}" is not a tensor; only tensor inputs and outputs are served`);
  const datatype = DATATYPE_OF[meta.type as OrtType];
  if (datatype === undefined) throw new EdgefleetError('MODEL_LOAD', `${role} "${meta.name}" has element type ${meta.type}, which cannot be served`);
  return { name: meta.name, datatype, shape: meta.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : -1)) };
}

class OrtModelSession implements ModelSession {
  readonly inputs: TensorSpec[];
  readonly outputs: TensorSpec[];
  readonly sharedDims: SharedDim[];

  constructor(
    private readonly ort: Ort,
    private readonly session: InferenceSession,
    readonly executionProvider: ExecutionProviderName,
  ) {
    this.inputs = session.inputMetadata.map((m) => specOf(m, 'input'));
    this.outputs = session.outputMetadata.map((m) => specOf(m, 'output'));
    this.sharedDims = sharedDims(session.inputMetadata.map((m) => ({ name: m.name, shape: m.isTensor ? m.shape : [] })));
  }

  async run(inputs: readonly HostTensor[], outputNames?: readonly string[]): Promise<HostTensor[]> {
    const feeds: Record<string, Tensor> = {};
    for (const t of inputs) feeds[t.name] = new this.ort.Tensor(ORT_TYPE[t.datatype], t.data, t.shape);
    const fetches = outputNames ?? this.session.outputNames;
    const results = await this.session.run(feeds, fetches as string[]);
    return fetches.map((name) => {
      const r = results[name];
      if (r === undefined) throw new EdgefleetError('INTERNAL', `ONNX Runtime returned no output "${name}"`);
      return { name, datatype: DATATYPE_OF[r.type as OrtType], shape: [...r.dims], data: r.data };
    });
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

const GRAPH_OPT = { disabled: 'disabled', basic: 'basic', extended: 'extended', all: 'all' } as const;

/**
 * Creates a session with the best available provider: tries the chain from
 * each provider in turn (ONNX Runtime places nodes a provider cannot run on
 * the next ones), so a model TensorRT rejects still loads on CUDA or CPU.
 */
export async function createSession(
  ort: Ort,
  model: Uint8Array,
  available: readonly ExecutionProviderName[],
  options: SessionOptions,
  onFallback?: (ep: ExecutionProviderName, reason: string) => void,
): Promise<ModelSession> {
  const chain = available.length > 0 ? available : (['cpu'] as const);
  let lastError: unknown;
  for (let i = 0; i < chain.length; i++) {
    const providers = chain.slice(i);
    try {
      const session = await ort.InferenceSession.create(model, {
        executionProviders: [...providers],
        graphOptimizationLevel: GRAPH_OPT[options.graphOptimizationLevel],
        intraOpNumThreads: options.intraOpNumThreads,
        interOpNumThreads: options.interOpNumThreads,
        logSeverityLevel: 3,
      });
      try {
        return new OrtModelSession(ort, session, providers[0] as ExecutionProviderName);
      } catch (err) {
        await session.release();
        throw err;
      }
    } catch (err) {
      if (err instanceof EdgefleetError) throw err;
      lastError = err;
      onFallback?.(providers[0] as ExecutionProviderName, errorMessage(err));
    }
  }
  throw new EdgefleetError('MODEL_LOAD', `ONNX Runtime could not load the model: ${errorMessage(lastError)}`, { cause: lastError });
}
