import type { ExecutionProviderName } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import type { Ort } from './ort.js';
import { missingLibrary, type OrtBuild } from './ort-build.js';
import { probeModel } from './probe-model.js';

export interface ProviderReport {
  /** Configured providers that work here, in configured order. */
  available: ExecutionProviderName[];
  /** Configured providers that do not, with ONNX Runtime's reason. */
  unavailable: Partial<Record<ExecutionProviderName, string>>;
}

/**
 * Finds which configured execution providers the installed ONNX Runtime really
 * offers by creating a tiny session with each one alone. A listed backend is
 * not enough: the bundled Linux build lists CUDA and TensorRT but cannot load
 * their libraries, and knows nothing of XNNPACK.
 */
export async function probeProviders(ort: Ort, wanted: readonly ExecutionProviderName[], build?: OrtBuild): Promise<ProviderReport> {
  const report: ProviderReport = { available: [], unavailable: {} };
  const model = probeModel();
  for (const ep of wanted) {
    try {
      // Severity 4 (fatal) keeps ONNX Runtime's native error spam for expected failures off stderr.
      const session = await ort.InferenceSession.create(model, { executionProviders: [ep], logSeverityLevel: 4 });
      await session.release();
      report.available.push(ep);
    } catch (err) {
      // A build of one's own (runtime.onnxruntimePath) that lacks the library says so plainly.
      report.unavailable[ep] = (build && missingLibrary(build, ep)) ?? shortReason(errorMessage(err));
    }
  }
  if (!report.available.includes('cpu')) {
    // CPU is the floor every model can fall back to, whether configured or not.
    report.available.push('cpu');
    delete report.unavailable.cpu;
  }
  return report;
}

function shortReason(message: string): string {
  const line = message.split('\n')[0] ?? message;
  if (/backend not found/.test(line)) return 'not built into the installed onnxruntime-node';
  if (/Failed to load shared library/.test(line)) return `provider library could not be loaded (${line.trim()})`;
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}
