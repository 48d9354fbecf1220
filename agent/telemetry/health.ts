import { existsSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { freemem, loadavg, totalmem, uptime } from 'node:os';
import { join } from 'node:path';
import cron from 'node-cron';
import type { Logger as CronLogger, ScheduledTask } from 'node-cron';
import type { Logger } from 'pino';
import { formatTime } from '../../protocol/index.js';
import { EdgefleetError, errorMessage } from '../errors.js';
import { JetsonGpu, readNvidiaGpus } from './gpu.js';
import type { GpuReading } from './gpu.js';
import type { AgentHealthPoint, PointSink } from './points.js';
import { CpuMeter, SystemInfoWorker } from './system-info.js';

/**
 * "health" points (docs/protocol.md section 7) on a node-cron schedule. Every
 * source is bounded by timeoutMs: a reading that does not come in time is
 * replaced by a cheap fallback (os counters) or left out, named in the
 * point's `timedOut`, and the point is still written. A sample still running
 * when the next is due makes that one skip, so slow reads never pile up.
 */

export interface HealthSamplerOptions {
  sink: PointSink;
  /** node-cron expression (six fields allowed: seconds first). */
  schedule: string;
  /** Its file system's free space is reported: the state directory. */
  stateDir: string;
  /** Bound on each source (systeminformation, nvidia-smi, sysfs) per sample. */
  timeoutMs: number;
  logger: Logger;
  /**
   * nvidia-smi to run for discrete GPUs. Default: "nvidia-smi" from PATH when
   * the NVIDIA driver is loaded (/proc/driver/nvidia/version), otherwise none.
   */
  nvidiaSmi?: string | null;
  /** Where /sys and /proc are looked for (tests point it at a fake tree). */
  sysRoot?: string;
  /** Points waiting to be sent, reported as outboxRows/outboxBytes (section 13). */
  outbox?: { stats(): { rows: number; bytes: number } };
}

export type NewHealthPoint = Omit<AgentHealthPoint, 'seq'>;

export class HealthSampler {
  private readonly log: Logger;
  private readonly systemInfo: SystemInfoWorker;
  private readonly cpu = new CpuMeter();
  private task: ScheduledTask | undefined;
  private inflight: Promise<void> | undefined;
  private jetson: JetsonGpu | undefined;
  private nvidiaSmi: string | null = null;
  private nvidiaFailed = false;

  constructor(private readonly options: HealthSamplerOptions) {
    if (!cron.validate(options.schedule)) {
      throw new EdgefleetError('CONFIG', `telemetry.health.schedule: "${options.schedule}" is not a valid cron expression`);
    }
    this.log = options.logger;
    this.systemInfo = new SystemInfoWorker(options.logger);
  }

  async start(): Promise<void> {
    const root = this.options.sysRoot ?? '/';
    const driverLoaded = existsSync(join(root, 'proc/driver/nvidia/version'));
    this.nvidiaSmi = this.options.nvidiaSmi !== undefined ? this.options.nvidiaSmi : driverLoaded ? 'nvidia-smi' : null;
    this.jetson = await JetsonGpu.detect(root);
    this.log.info({ schedule: this.options.schedule, nvidia: this.nvidiaSmi !== null, jetson: this.jetson !== undefined }, 'health sampling scheduled');
    this.task = cron.createTask(this.options.schedule, () => this.tick(), { name: 'telemetry-health', logger: cronLogger(this.log) });
    await this.task.start();
  }

  async stop(): Promise<void> {
    const task = this.task;
    this.task = undefined;
    if (task) {
      await task.stop();
      await task.destroy();
    }
    await this.inflight;
    await this.systemInfo.stop();
  }

  /** Takes and stores one sample, unless the previous one is still running. */
  tick(): Promise<void> {
    if (this.inflight) {
      this.log.debug('previous health sample still running; skipping this one');
      return this.inflight;
    }
    const run = this.sample()
      .then((point) => this.options.sink.append([point]))
      .catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, 'could not take or store a health sample'))
      .finally(() => {
        this.inflight = undefined;
      });
    this.inflight = run;
    return run;
  }

  /** One health point (without seq), every source bounded by timeoutMs. */
  async sample(): Promise<NewHealthPoint> {
    const { timeoutMs, stateDir } = this.options;
    const timedOut: string[] = [];
    const fallbackCpu = this.cpu.read(); // read every time so its baseline stays one interval old
    const [info, diskFreeBytes, gpus] = await Promise.all([
      this.systemInfo.read(timeoutMs),
      statfs(stateDir).then(
        (s) => s.bavail * s.bsize,
        () => 0,
      ),
      this.readGpus(timedOut),
    ]);
    if (!info) timedOut.push('systeminformation');
    const memTotalBytes = info?.memTotalBytes ?? totalmem();
    const memAvailable = info?.memAvailableBytes ?? freemem();
    return {
      ts: formatTime(),
      kind: 'health',
      cpuPct: round1(info?.cpuPct ?? fallbackCpu),
      load1: round2(loadavg()[0] ?? 0),
      memUsedBytes: Math.max(0, memTotalBytes - memAvailable),
      memTotalBytes,
      tempC: info?.tempC ?? null,
      diskFreeBytes,
      rssBytes: process.memoryUsage.rss(),
      uptimeS: Math.round(process.uptime()),
      systemUptimeS: Math.round(uptime()),
      gpus,
      ...this.outboxFigures(),
      ...(timedOut.length > 0 && { timedOut }),
    };
  }

  private outboxFigures(): { outboxRows?: number; outboxBytes?: number } {
    try {
      const stats = this.options.outbox?.stats();
      return stats ? { outboxRows: stats.rows, outboxBytes: stats.bytes } : {};
    } catch {
      return {}; // the outbox is not started (or already stopped)
    }
  }

  private async readGpus(timedOut: string[]): Promise<GpuReading[]> {
    const [nvidia, jetson] = await Promise.all([this.readNvidia(timedOut), this.readJetson(timedOut)]);
    return jetson ? [...nvidia, jetson] : nvidia;
  }

  private async readNvidia(timedOut: string[]): Promise<GpuReading[]> {
    if (this.nvidiaSmi === null) return [];
    try {
      const gpus = await readNvidiaGpus(this.nvidiaSmi, this.options.timeoutMs);
      this.nvidiaFailed = false;
      return gpus;
    } catch (err) {
      if ((err as { killed?: boolean }).killed) timedOut.push('nvidia-smi');
      // Once per run of failures at warn, so a broken driver does not flood the journal.
      this.log[this.nvidiaFailed ? 'debug' : 'warn']({ err: errorMessage(err) }, 'nvidia-smi failed; GPU readings left out');
      this.nvidiaFailed = true;
      return [];
    }
  }

  private async readJetson(timedOut: string[]): Promise<GpuReading | undefined> {
    if (!this.jetson) return undefined;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), this.options.timeoutMs)));
    const reading = await Promise.race([this.jetson.read(), late]).finally(() => clearTimeout(timer));
    if (!reading) timedOut.push('jetson-sysfs');
    return reading;
  }
}

const round1 = (n: number): number => Math.round(n * 10) / 10;
const round2 = (n: number): number => Math.round(n * 100) / 100;

/** node-cron's own warnings (missed runs) into the agent's log. */
function cronLogger(log: Logger): CronLogger {
  return {
    info: (message) => log.debug(message),
    warn: (message) => log.warn(message),
    error: (message, err) => log.error({ err: err ? err.message : undefined }, String(message)),
    debug: (message) => log.debug(String(message)),
  };
}
