/**
 * `npm start`: the whole edgefleet loop on one machine, no setup by hand.
 *
 *   1. an embedded MQTT broker (aedes, MQTT 3.1.1) on 127.0.0.1:1883, or a free port
 *   2. the collector (SQLite store, dashboard) subscribed to it
 *   3. demo keys and a trust document (`edgefleet keys generate`, `trust init`)
 *   4. the int8 MNIST model, trained here on real digits (cached), published as
 *      mnist version 1 and deployed to device demo-pi (`model publish`, `deploy`)
 *   5. the agent as demo-pi: pulls, verifies and serves it on 127.0.0.1:8501
 *   6. a predict request with a held-out test digit, and `edgefleet status`
 *
 * Everything lives in .edgefleet-demo/ ($EDGEFLEET_DEMO_DIR); only the model
 * cache survives a new run. Ctrl-C (SIGINT) stops it all and exits 0;
 * `--once` (or EDGEFLEET_DEMO_EXIT_AFTER_READY=1) exits after printing.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseConfig } from '../agent/config/load.js';
import { createLogger } from '../agent/log.js';
import { createAgent } from '../agent/main.js';
import type { Agent } from '../agent/main.js';
import { Collector } from '../fleet/collector/collector.js';
import { DashboardServer } from '../fleet/collector/http-server.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { FleetRow } from '../fleet/collector/store.js';
import { status } from '../fleet/commands/status.js';
import { buildMnistModels } from '../models/mnist/build.js';
import { startEmbeddedBroker } from './broker.js';
import { argmax, pickTestDigit } from './digit.js';
import { createKeysAndTrust, fleetPaths, publishAndDeploy } from './fleet-setup.js';
import { display, envPort, portIsFree, round, shellWord, waitUntil } from './util.js';

const DEVICE = 'demo-pi';
const MODEL = 'mnist';
const VERSION = 1;
const DIGIT = 7;

/** What start-up made, stopped in reverse on Ctrl-C. */
const running: { name: string; stop: () => Promise<unknown> }[] = [];
let stopping: Promise<void> | undefined;

function stopAll(): Promise<void> {
  stopping ??= (async () => {
    for (const { name, stop } of running.reverse()) {
      await stop().catch((err: unknown) => process.stderr.write(`demo: stopping the ${name} failed: ${err instanceof Error ? err.message : String(err)}\n`));
    }
  })();
  return stopping;
}

const say = (line = ''): boolean => process.stdout.write(`${line}\n`);
const done = (line: string): boolean => say(`  ✓ ${line}`);

async function main(): Promise<void> {
  const home = resolve(process.env.EDGEFLEET_DEMO_DIR ?? '.edgefleet-demo');
  const once = process.argv.includes('--once') || process.env.EDGEFLEET_DEMO_EXIT_AFTER_READY === '1';
  const paths = fleetPaths(home);
  const dbFile = join(home, 'fleet.db');
  // A fresh fleet every run (the broker keeps nothing either); only the trained model is kept.
  for (const entry of ['keys', 'trust.json', 'manifests', 'device', 'fleet.db', 'fleet.db-wal', 'fleet.db-shm', 'agent.log', 'collector.log', `digit-${DIGIT}.json`]) {
    await rm(join(home, entry), { recursive: true, force: true });
  }
  await mkdir(paths.manifestsDir, { recursive: true });
  say(`edgefleet demo: broker, fleet tools, collector and one device on this machine (files in ${display(home)}/)`);

  const broker = await startEmbeddedBroker({ port: envPort('EDGEFLEET_DEMO_MQTT_PORT') ?? 1883, fallback: envPort('EDGEFLEET_DEMO_MQTT_PORT') === undefined });
  running.push({ name: 'broker', stop: () => broker.stop() });
  done(`MQTT broker (embedded aedes, MQTT 3.1.1) on ${broker.url}`);

  // The collector first, so it sees the device's first telemetry.
  const collectorLogFile = createWriteStream(join(home, 'collector.log'));
  const collectorLog = createLogger({ level: 'info', destination: collectorLogFile });
  const store = new SqliteStore(dbFile);
  await store.init();
  running.push({ name: 'store', stop: async () => {
    await store.close();
    collectorLogFile.end();
  } });
  const collector = new Collector({
    broker: { url: broker.url, topicRoot: 'edgefleet', tls: {}, protocolVersion: 4 },
    store, clientId: 'edgefleet-demo-collector', shareGroup: 'edgefleet-collectors', sessionExpiryS: 0, retentionMs: null, log: collectorLog,
  });
  await collector.start();
  running.push({ name: 'collector', stop: () => collector.stop() });
  const dashboard = await startDashboard(store, collectorLog);
  running.push({ name: 'dashboard', stop: () => dashboard.stop() });
  done(`collector storing into ${display(dbFile)}; dashboard on ${dashboard.url}`);

  await createKeysAndTrust(paths, home);
  done(`signing keys for the root, models and rollout roles in ${display(paths.keysDir)}/, trust document ${display(paths.trust)}`);

  const t0 = performance.now();
  const built = await buildMnistModels({
    outDir: join(home, 'model'),
    log: (line) => {
      if (line.startsWith('mnist:')) say('  … training the MNIST model on real handwritten digits (about 10 s, once; cached after)');
    },
  });
  const took = built.cached ? 'cached' : `trained in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  done(`int8 MNIST model: ${(built.int8.bytes / 1024).toFixed(0)} KiB, ${built.int8.accuracy.toFixed(1)}% on held-out test digits (${took})`);

  const result = await publishAndDeploy(paths, { brokerUrl: broker.url, modelFile: built.int8.path, name: MODEL, version: VERSION, deviceId: DEVICE }, home);
  const blocks = /(\d+) blocks? uploaded/.exec(result.published)?.[1] ?? '?';
  done(`published ${MODEL} version ${VERSION}: ${blocks} blocks retained on the broker, manifest with a self-test signed by the models key`);
  done(result.deployed.replace(/ \(.*\)$/, ' (signed desired state)'));

  const { agent, host } = await startAgent(home, broker.url, paths.trust);
  const url = `http://${host}:${agent.httpAddress?.port ?? 8501}`;
  await waitUntil(`${DEVICE} to serve ${MODEL} version ${VERSION} (see ${display(join(home, 'agent.log'))})`, 90_000, async () => {
    await failIfRejected(store);
    try {
      return agent.registry.statuses(MODEL).some((s) => s.version === VERSION && s.state === 'AVAILABLE');
    } catch {
      return false; // not known yet
    }
  });
  done(`agent ${DEVICE} pulled, verified and serves ${MODEL} version ${VERSION} on ${url} (${agent.providers.available.join(', ')})`);

  const digit = await pickTestDigit(built.int8.path, DIGIT);
  const requestFile = join(home, `digit-${DIGIT}.json`);
  await writeFile(requestFile, JSON.stringify({ instances: [digit.pixels] }));
  const res = await fetch(`${url}/v1/models/${MODEL}:predict`, { method: 'POST', body: JSON.stringify({ instances: [digit.pixels] }) });
  if (!res.ok) throw new Error(`predict answered ${res.status}: ${await res.text()}`);
  const probs = ((await res.json()) as { predictions: number[][] }).predictions[0] ?? [];
  const predicted = argmax(probs);
  say();
  say(`Predict a real handwritten ${DIGIT} from the held-out MNIST test split (test digit #${digit.index}):`);
  // The request file's absolute path, so the curl works from any directory.
  say(`  curl -s -X POST ${url}/v1/models/${MODEL}:predict -d ${shellWord(`@${requestFile}`)}`);
  say(`Answer: class ${predicted} (probability ${round(probs[predicted] ?? 0, 3)}); true label ${digit.label}`);

  say();
  say('edgefleet status (what the collector stored):');
  const row = await waitUntil('the first telemetry from the device', 30_000, async () => telemetryArrived(await store.fleetStatus())).catch(() => undefined);
  for (const line of await statusTable(dbFile, home)) say(`  ${line}`);
  if (!row) say('  (no telemetry yet: the table fills in within a few seconds on the dashboard)');

  say();
  say('Look next:');
  say(`  dashboard        ${dashboard.url}`);
  say(`  agent metrics    curl -s ${url}/metrics`);
  say(`  model status     curl -s ${url}/v1/models/${MODEL}`);
  say(`  fleet status     npx tsx fleet/bin.ts status --db sqlite:${display(dbFile)}`);
  say(`  devices          npx tsx fleet/bin.ts devices --broker ${broker.url} --mqtt-version 4`);
  say(`  logs             ${display(join(home, 'agent.log'))}, ${display(join(home, 'collector.log'))}`);
  if (once) {
    await stopAll();
    say('Stopped (--once).');
    process.exit(0);
  }
  say('Ctrl-C stops the agent, the collector and the broker.');
}

async function startDashboard(store: SqliteStore, log: ReturnType<typeof createLogger>): Promise<DashboardServer> {
  const port = envPort('EDGEFLEET_DEMO_DASHBOARD_PORT');
  const first = new DashboardServer({ store, listen: { host: '127.0.0.1', port: port ?? 8600 }, log });
  try {
    await first.start();
    return first;
  } catch (err) {
    if (port !== undefined || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    const other = new DashboardServer({ store, listen: { host: '127.0.0.1', port: 0 }, log });
    await other.start();
    return other;
  }
}

/** The agent as device demo-pi: MQTT 3.1.1 to the embedded broker, state and logs in the demo folder. */
async function startAgent(home: string, brokerUrl: string, trust: string): Promise<{ agent: Agent; host: string }> {
  const env = { EDGEFLEET_HTTP_HOST: process.env.EDGEFLEET_HTTP_HOST, EDGEFLEET_HTTP_PORT: process.env.EDGEFLEET_HTTP_PORT };
  const port = env.EDGEFLEET_HTTP_PORT === undefined && !(await portIsFree(8501)) ? 0 : 8501;
  const config = parseConfig(
    {
      deviceId: DEVICE,
      stateDir: join(home, 'device'),
      trust,
      mqtt: { url: brokerUrl, protocolVersion: 4 },
      http: { host: '127.0.0.1', port },
      // Short intervals so the collector has telemetry within seconds. Points stay on the
      // device until the collector says it stored them (PROTOCOL.md section 12); one that
      // published no acks would only mean points resent every 30 s and kept within the bounds.
      telemetry: { intervalS: 2, health: { schedule: '*/2 * * * * *' }, delivery: 'collector', ackTimeoutS: 30 },
      log: { level: 'info' },
    },
    { env },
  );
  const logFile = createWriteStream(join(home, 'agent.log'));
  const agent = createAgent(config, createLogger({ level: config.log.level, deviceId: config.deviceId, destination: logFile }));
  running.push({ name: 'agent', stop: async () => {
    await agent.stop();
    logFile.end();
  } });
  await agent.start();
  const { host } = config.http;
  return { agent, host: host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host };
}

/** Stops the wait for serving early when the device reports the rollout failed. */
async function failIfRejected(store: SqliteStore): Promise<void> {
  const row = (await store.fleetStatus()).find((r) => r.device === DEVICE);
  const model = row?.models.find((m) => m.name === MODEL && m.version === VERSION);
  if (model && (model.state === 'failed' || model.state === 'rejected')) {
    throw new Error(`${DEVICE} reports ${MODEL}:${VERSION} ${model.state}: ${model.error ?? 'no reason given'}`);
  }
}

/** The device's row once it is online, serving the model, with an inference and a health point. */
function telemetryArrived(rows: readonly FleetRow[]): FleetRow | undefined {
  const row = rows.find((r) => r.device === DEVICE);
  const serving = row?.models.some((m) => m.name === MODEL && m.version === VERSION && m.state === 'serving');
  const inference = row?.inference.some((i) => i.model === MODEL && i.p50 !== null);
  return row?.online && serving && inference && row.health ? row : undefined;
}

/** `edgefleet status --db sqlite:FILE`, run in-process. */
async function statusTable(dbFile: string, cwd: string): Promise<string[]> {
  const lines: string[] = [];
  await status.run(['--db', `sqlite:${dbFile}`], { out: (l) => lines.push(...l.split('\n')), note: (l) => lines.push(l), stderr: process.stderr, cwd });
  return lines;
}

let firstSignalAt: number | undefined;
const onSignal = (): void => {
  // npm forwards the terminal's SIGINT too, so one Ctrl-C can arrive twice; a second one later does not wait.
  if (firstSignalAt !== undefined) {
    if (Date.now() - firstSignalAt > 1000) process.exit(130);
    return;
  }
  firstSignalAt = Date.now();
  say('\nStopping...');
  void stopAll().then(() => {
    say('Stopped.');
    process.exit(0);
  });
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

main().catch(async (err: unknown) => {
  if (firstSignalAt !== undefined) return; // stopping on a signal: parts stopped under a step are no failure
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  await stopAll();
  process.exit(1);
});
