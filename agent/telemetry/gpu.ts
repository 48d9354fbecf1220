import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { HealthPoint } from '../../protocol/index.js';

/**
 * GPU readings for health points, from two sources:
 *
 * - NVIDIA discrete GPUs: `nvidia-smi --query-gpu=...` run asynchronously
 *   with a timeout that kills it. Not si.graphics(): it runs nvidia-smi with
 *   execFileSync (a wedged driver would freeze the agent's event loop), and
 *   only when `lspci` lists the card, which minimal images lack; it also runs
 *   lspci -vvv, clinfo and xrandr on every call.
 * - Jetson (integrated GPU, no nvidia-smi): sysfs, no tegrastats. Load is the
 *   first readable of the `load` files below (per mille); temperature is the
 *   thermal zone whose type names the GPU (GPU-therm up to JetPack 5,
 *   gpu-thermal from JetPack 6); the name is /proc/device-tree/model. Memory
 *   is the shared system memory, reported in memUsedBytes, so it is null here.
 */

export type GpuReading = HealthPoint['gpus'][number];

export const JETSON_LOAD_PATHS = [
  'sys/devices/gpu.0/load', // Nano, TX2, Xavier (JetPack 4-5)
  'sys/devices/platform/gpu.0/load',
  'sys/devices/platform/17000000.ga10b/load', // Orin, JetPack 5
  'sys/devices/platform/17000000.gpu/load', // Orin, JetPack 6
  'sys/devices/platform/bus@0/17000000.gpu/load', // Orin, JetPack 6
] as const;

const NVIDIA_QUERY = ['--query-gpu=name,utilization.gpu,memory.used,memory.total,temperature.gpu', '--format=csv,noheader,nounits'];
const MIB = 1024 * 1024;
const execFileAsync = promisify(execFile);

/** A number from an nvidia-smi field; "[N/A]", "N/A" and "[Not Supported]" are null. */
function smiNumber(field: string | undefined): number | null {
  const n = Number.parseFloat(field ?? '');
  return Number.isFinite(n) ? n : null;
}

export function parseNvidiaSmi(stdout: string): GpuReading[] {
  const gpus: GpuReading[] = [];
  for (const line of stdout.split('\n')) {
    if (line.trim() === '') continue;
    const [name = '', util, used, total, temp] = line.split(',').map((f) => f.trim());
    const usedMiB = smiNumber(used);
    const totalMiB = smiNumber(total);
    gpus.push({
      name,
      utilPct: smiNumber(util),
      memUsedBytes: usedMiB === null ? null : Math.round(usedMiB * MIB),
      memTotalBytes: totalMiB === null ? null : Math.round(totalMiB * MIB),
      tempC: smiNumber(temp),
    });
  }
  return gpus;
}

/** Every NVIDIA GPU nvidia-smi reports; rejects when it fails or takes longer than `timeoutMs`. */
export async function readNvidiaGpus(nvidiaSmi: string, timeoutMs: number): Promise<GpuReading[]> {
  const { stdout } = await execFileAsync(nvidiaSmi, NVIDIA_QUERY, { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' });
  return parseNvidiaSmi(stdout);
}

const readText = (path: string): Promise<string | undefined> => readFile(path, 'utf8').then((t) => t.replace(/\0/g, '').trim(), () => undefined);

/** The Jetson's load file under `root`, or undefined on other boards. */
export async function findJetsonLoad(root: string): Promise<string | undefined> {
  for (const rel of JETSON_LOAD_PATHS) {
    const path = join(root, rel);
    if ((await readText(path)) !== undefined) return path;
  }
  return undefined;
}

/** The temperature file of the thermal zone that names the GPU, if any. */
async function findGpuThermal(root: string): Promise<string | undefined> {
  const dir = join(root, 'sys/class/thermal');
  const zones = await readdir(dir).catch(() => [] as string[]);
  for (const zone of zones.filter((z) => z.startsWith('thermal_zone')).sort()) {
    const type = await readText(join(dir, zone, 'type'));
    if (type !== undefined && /^gpu[-_]?therm/i.test(type)) return join(dir, zone, 'temp');
  }
  return undefined;
}

/** Reads a Jetson's integrated GPU from sysfs; the paths are found once. */
export class JetsonGpu {
  private constructor(
    private readonly name: string,
    private readonly loadPath: string,
    private readonly thermalPath: string | undefined,
  ) {}

  /** The board's GPU, or undefined when `root` has no Jetson load file. */
  static async detect(root = '/'): Promise<JetsonGpu | undefined> {
    const load = await findJetsonLoad(root);
    if (load === undefined) return undefined;
    const model = (await readText(join(root, 'proc/device-tree/model'))) || 'NVIDIA Jetson';
    return new JetsonGpu(model, load, await findGpuThermal(root));
  }

  async read(): Promise<GpuReading> {
    const [load, temp] = await Promise.all([readText(this.loadPath), this.thermalPath ? readText(this.thermalPath) : undefined]);
    const perMille = smiNumber(load);
    const milliC = smiNumber(temp);
    return {
      name: this.name,
      utilPct: perMille === null ? null : Math.min(100, perMille / 10),
      memUsedBytes: null,
      memTotalBytes: null,
      tempC: milliC === null ? null : milliC / 1000,
    };
  }
}
