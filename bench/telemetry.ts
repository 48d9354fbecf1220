/**
 * Telemetry benchmark: the SQLite outbox, the MQTT uploader, and what
 * recording costs the predict path.
 *
 * 1. Outbox ingest (bench/telemetry-ingest.ts): TelemetryOutbox.append into
 *    the agent's SQLite file vs plain better-sqlite3 inserts of the same JSON
 *    rows (same pragmas), 1 and 100 points per transaction.
 * 2. Drain (bench/telemetry-drain.ts): 100,000 buffered points through
 *    TelemetryUploader to a loopback Mosquitto, every seq checked at a
 *    subscriber; vs a plain mqtt.js client publishing the same batches.
 *    Target ≥ 20,000 points/s.
 * 3. Predict (bench/telemetry-predict.ts): agent req/s at 16 clients on the
 *    MNIST MLP with recording on vs off in the same agent process, plus an
 *    agent without mqtt. Target: on ≥ 0.95 x off.
 *
 * Run alone: `npx tsx bench/telemetry.ts` (BENCH_QUICK=1 for a ~30 s smoke run).
 */
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from '../test/helpers/mosquitto.js';
import { benchSettings } from './settings.js';
import { printTable, type Cell } from './table.js';
import { runDrain } from './telemetry-drain.js';
import { runIngest } from './telemetry-ingest.js';
import { runPredict } from './telemetry-predict.js';

export async function runTelemetryBench(): Promise<void> {
  const settings = benchSettings();
  console.log('\n## telemetry: SQLite outbox, MQTT uploader, recording on the predict path');
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-bench-telemetry-'));
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  process.on('exit', removeDir); // also when interrupted
  const targets: Cell[][] = [];
  let broker: Mosquitto | undefined;
  try {
    const timed = async (name: string, part: () => Promise<Cell[][]>): Promise<void> => {
      const t0 = performance.now();
      targets.push(...(await part()));
      console.log(`(${name}: ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    };
    await timed('part 1', () => runIngest(dir, settings.quick));
    const skip = mosquittoSkipReason();
    if (skip) {
      console.log(`\nparts 2 and 3 skipped: ${skip}`);
    } else {
      const b = await startMosquitto();
      broker = b;
      await timed('part 2', () => runDrain(dir, b, settings.quick));
      await timed('part 3', () => runPredict(dir, b, settings));
    }
    printTable('Telemetry targets', ['target', 'measured', 'target', 'result'], targets, (i) => i === 1 || i === 2);
    if (settings.quick) console.log('(BENCH_QUICK=1: short windows, few rounds; numbers are indicative only)');
  } finally {
    await broker?.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    process.off('exit', removeDir);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await runTelemetryBench();
