/**
 * The shipped alert rules end to end with real parts: the device simulator
 * (bench/fleet-sim.ts) publishes to a real Mosquitto, the collector stores
 * into SQLite and serves /metrics, Debian's Prometheus scrapes it every
 * second and evaluates a copy of provisioning/prometheus/edgefleet-rules.yml
 * whose 5-minute durations are rewritten to a few seconds, and Debian's
 * Alertmanager delivers to a webhook receiver in this test. Faults are put
 * on single devices; each alert must arrive firing with the contract's
 * labels and, once the fault is cleared, resolved. The times from fault to
 * delivery are printed for the record.
 */
import { createServer, type Server } from 'node:http';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { FleetSim, type SimDevice } from '../bench/fleet-sim.js';
import { Collector } from '../fleet/collector/collector.js';
import { fleetMetricsSource } from '../fleet/collector/fleet-metrics.js';
import { DashboardServer } from '../fleet/collector/http-server.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { Rollout } from '../fleet/rollout/planner.js';
import { topics } from '../protocol/index.js';
import { REPO, freePort } from './helpers/child.js';
import { waitFor } from './helpers/agent.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';
import { rolloutRecord } from './helpers/rollout-record.js';
import { ALERTMANAGER_BIN, PROMETHEUS_BIN, PROMTOOL_BIN, prometheusSkipReason, startAlertmanager, startPrometheus, type Served } from './helpers/prometheus.js';

const skip = mosquittoSkipReason() || prometheusSkipReason([PROMETHEUS_BIN, PROMTOOL_BIN, ALERTMANAGER_BIN]);
const ROOT = 'edgefleet';
/** What every 5-minute duration of the shipped rules becomes here. */
const SHORT = '3s';

/** An alert as Alertmanager's webhook delivers it. */
interface Delivered {
  status: 'firing' | 'resolved';
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** When this test received it (epoch ms). */
  receivedAt: number;
}

/**
 * The shipped rules with their durations shortened: every `for`, and the
 * range of the offline rule's max_over_time (its 5 minutes are in the
 * expression). Thresholds stay as shipped.
 */
function shortenedRules(text: string, duration: string): string {
  const doc = parse(text) as { groups: { rules: { alert: string; expr: string; for?: string }[] }[] };
  for (const rule of doc.groups.flatMap((g) => g.rules)) {
    if (rule.for !== undefined) rule.for = duration;
    rule.expr = rule.expr.replace(/\[5m\]/g, `[${duration}]`);
  }
  return stringify(doc);
}

/**
 * The simulator's batches with faults put on single devices: what the
 * device's last interval or health point says is replaced before the batch
 * is published, as a misbehaving board would send it.
 */
class FaultySim extends FleetSim {
  readonly faults = new Map<string, { errorRatio?: number; p99Ms?: number; tempC?: number; gpuUtilPct?: number; dropPoints?: number }>();

  override batchOf(d: SimDevice, i: number, now: number): string {
    const fault = this.faults.get(d.id);
    if (fault === undefined) return super.batchOf(d, i, now);
    const batch = JSON.parse(super.batchOf(d, i, now)) as { points: Record<string, unknown>[] };
    for (const p of batch.points) {
      if (p.kind === 'inference') {
        if (fault.errorRatio !== undefined) p.errors = Math.ceil((p.count as number) * fault.errorRatio);
        if (fault.p99Ms !== undefined) p.latencyMs = { ...(p.latencyMs as object), p99: fault.p99Ms, max: fault.p99Ms * 1.2 };
      }
      if (p.kind === 'health') {
        if (fault.tempC !== undefined) p.tempC = fault.tempC;
        if (fault.gpuUtilPct !== undefined) p.gpus = [{ name: 'Orin', utilPct: fault.gpuUtilPct, memUsedBytes: 1e9, memTotalBytes: 8e9, tempC: 60 }];
      }
    }
    if (fault.dropPoints !== undefined) {
      // Seqs lost on the device, accounted for by a section 13 'dropped' point, once.
      const oldestSeq = d.seq + 1;
      d.seq += fault.dropPoints;
      batch.points.push({ seq: ++d.seq, ts: new Date(now).toISOString(), kind: 'dropped', count: fault.dropPoints, oldestSeq, newestSeq: oldestSeq + fault.dropPoints - 1, reason: 'buffer full' });
      delete fault.dropPoints;
    }
    return JSON.stringify(batch);
  }
}

describe.skipIf(skip !== false)(`alert rules through real Prometheus and Alertmanager${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let broker: Mosquitto;
  let dir: string;
  let store: SqliteStore;
  let collector: Collector;
  let metrics: DashboardServer;
  let hook: Server;
  let alertmanager: Served;
  let prometheus: Served;
  let sim: FaultySim;
  let device: MqttClient;
  const delivered: Delivered[] = [];
  const times: { alert: string; labels: string; firingS: number; resolvedS?: number }[] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-alerting-'));
    store = new SqliteStore(join(dir, 'fleet.db'));
    await store.init();
    const log = pino({ level: 'silent' });
    collector = new Collector({
      broker: { url: broker.url, topicRoot: ROOT, tls: {} }, store, clientId: 'alerting-collector', shareGroup: 'alerting',
      sessionExpiryS: 0, retentionMs: null, log,
    });
    await collector.start();
    metrics = new DashboardServer({ store, listen: { host: '127.0.0.1', port: 0 }, log, metrics: fleetMetricsSource(store, { collector: collector.stats }), metricsOnly: true });
    await metrics.start();

    const hookPort = await freePort();
    hook = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        const payload = JSON.parse(body) as { alerts: Omit<Delivered, 'receivedAt'>[] };
        for (const a of payload.alerts) delivered.push({ status: a.status, labels: a.labels, annotations: a.annotations, receivedAt: Date.now() });
        res.end();
      });
    });
    await new Promise<void>((resolve) => hook.listen(hookPort, '127.0.0.1', resolve));
    alertmanager = await startAlertmanager(stringify({
      route: { receiver: 'test', group_by: ['...'], group_wait: '1s', group_interval: '1s', repeat_interval: '1h' },
      receivers: [{ name: 'test', webhook_configs: [{ url: `http://127.0.0.1:${hookPort}/hook`, send_resolved: true }] }],
    }));
    const rules = shortenedRules(await readFile(join(REPO, 'provisioning', 'prometheus', 'edgefleet-rules.yml'), 'utf8'), SHORT);
    prometheus = await startPrometheus(stringify({
      global: { scrape_interval: '1s', evaluation_interval: '1s' },
      rule_files: ['rules.yml'],
      alerting: { alertmanagers: [{ static_configs: [{ targets: [new URL(alertmanager.url).host] }] }] },
      scrape_configs: [{ job_name: 'edgefleet', static_configs: [{ targets: [new URL(metrics.url).host] }] }],
    }), { 'rules.yml': rules });

    sim = new FaultySim({ url: broker.url, devices: 8, connections: 1, prefix: 'alert', intervalMs: 1000, models: 1, healthEvery: 1 });
    await sim.connect();
    sim.run();
    device = await mqtt.connectAsync(broker.url, { protocolVersion: 5, clientId: 'alerting-device' });
  }, 90_000);

  afterAll(async () => {
    if (times.length > 0) console.log(`alerts through Prometheus and Alertmanager (for: ${SHORT}, scrape and evaluation every 1 s):\n${times.map((t) => `  ${t.alert} ${t.labels}: firing after ${t.firingS.toFixed(1)} s${t.resolvedS === undefined ? '' : `, resolved ${t.resolvedS.toFixed(1)} s after the fault cleared`}`).join('\n')}`);
    await sim?.stop();
    await device?.endAsync();
    await prometheus?.stop();
    await alertmanager?.stop();
    await new Promise((r) => (hook ? hook.close(r) : r(undefined)));
    await metrics?.stop();
    await collector?.stop();
    await store?.close();
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** The first delivery of `alertname` with `status` whose labels include `labels`, after `since`. */
  const arrival = (alertname: string, labels: Record<string, string>, status: Delivered['status'], since: number) => () =>
    delivered.find((a) => a.status === status && a.receivedAt >= since && a.labels.alertname === alertname && Object.entries(labels).every(([k, v]) => a.labels[k] === v));

  /** Puts a fault on, waits for the alert firing, clears it, waits for it resolved; records the times. */
  async function fireAndResolve(alertname: string, labels: Record<string, string>, put: () => Promise<void> | void, clear: () => Promise<void> | void): Promise<Delivered> {
    const start = Date.now();
    await put();
    const firing = await waitFor(arrival(alertname, labels, 'firing', start), 45_000, `${alertname} firing for ${JSON.stringify(labels)}:\n${prometheus.output().slice(-2000)}`);
    const record: (typeof times)[number] = { alert: alertname, labels: Object.values(labels).join(' '), firingS: (firing.receivedAt - start) / 1000 };
    times.push(record);
    const cleared = Date.now();
    await clear();
    const resolved = await waitFor(arrival(alertname, labels, 'resolved', cleared), 45_000, `${alertname} resolved for ${JSON.stringify(labels)}`);
    record.resolvedS = (resolved.receivedAt - cleared) / 1000;
    return firing;
  }

  const id = (i: number): string => sim.deviceId(i);
  const version = (i: number): string => String(1 + (i % 3));

  /** The value of the first series `q` gives in Prometheus now; NaN when none. */
  const query = async (q: string): Promise<number> => {
    const res = (await (await fetch(`${prometheus.url}/api/v1/query?query=${encodeURIComponent(q)}`)).json()) as { data: { result: { value: [number, string] }[] } };
    return Number(res.data.result[0]?.value[1]);
  };

  it('Prometheus scrapes the collector: the target is up and the simulated devices are there', async () => {
    await waitFor(async () => (await query('count(edgefleet_device_online == 1)')) === 8, 30_000, 'eight online devices in Prometheus');
    // The collector's own figures come with the scrape: batches counted, and a lag of a few seconds at most on loopback.
    expect(await query('edgefleet_collector_messages_total{channel="telemetry"}')).toBeGreaterThan(0);
    expect(await query('edgefleet_collector_batches_stored_total')).toBeGreaterThan(0);
    const lag = await query('edgefleet_collector_ingest_lag_seconds');
    expect(lag).toBeGreaterThanOrEqual(0);
    expect(lag).toBeLessThan(5);
  }, 40_000);

  it('EdgefleetErrorRateHigh fires for 5 % errors and resolves when they stop', async () => {
    const firing = await fireAndResolve('EdgefleetErrorRateHigh', { device: id(1), model: 'mnist', version: version(1) },
      () => void sim.faults.set(id(1), { errorRatio: 0.05 }), () => void sim.faults.delete(id(1)));
    expect(firing.labels).toEqual({ alertname: 'EdgefleetErrorRateHigh', severity: 'warning', device: id(1), model: 'mnist', version: version(1) });
    // The simulator rounds the errors of each interval up (ceil(count x 0.05)): a few percent more on a small interval.
    const summary = new RegExp(`^${id(1)} mnist v${version(1)}: (\\d+\\.\\d) % errors over the last interval$`).exec(firing.annotations.summary ?? '');
    expect(summary, firing.annotations.summary).not.toBeNull();
    expect(Number(summary?.[1])).toBeGreaterThanOrEqual(4.5);
    expect(Number(summary?.[1])).toBeLessThan(15);
  }, 100_000);

  it('EdgefleetLatencyP99High fires for a 750 ms p99 and resolves', async () => {
    const firing = await fireAndResolve('EdgefleetLatencyP99High', { device: id(2), model: 'mnist', version: version(2) },
      () => void sim.faults.set(id(2), { p99Ms: 750 }), () => void sim.faults.delete(id(2)));
    expect(firing.labels).toEqual({ alertname: 'EdgefleetLatencyP99High', severity: 'warning', device: id(2), model: 'mnist', version: version(2) });
    expect(firing.annotations.summary).toBe(`${id(2)} mnist v${version(2)}: p99 750 ms over the last interval`);
  }, 100_000);

  it('EdgefleetTemperatureHigh and EdgefleetGpuBusy fire for a hot, busy board and resolve', async () => {
    const start = Date.now();
    const gpu = waitFor(arrival('EdgefleetGpuBusy', { device: id(3), gpu: '0' }, 'firing', start), 45_000, 'EdgefleetGpuBusy firing');
    const firing = await fireAndResolve('EdgefleetTemperatureHigh', { device: id(3) },
      () => void sim.faults.set(id(3), { tempC: 85.5, gpuUtilPct: 97 }), () => void sim.faults.delete(id(3)));
    expect(firing.labels).toEqual({ alertname: 'EdgefleetTemperatureHigh', severity: 'warning', device: id(3) });
    expect(firing.annotations.summary).toBe(`${id(3)}: board at 85.5 C`);
    const busy = await gpu;
    times.push({ alert: 'EdgefleetGpuBusy', labels: `${id(3)} 0`, firingS: (busy.receivedAt - start) / 1000 });
    expect(busy.labels).toEqual({ alertname: 'EdgefleetGpuBusy', severity: 'warning', device: id(3), gpu: '0' });
    expect(busy.annotations.summary).toBe(`${id(3)} GPU 0: 97 % busy`);
  }, 100_000);

  it('EdgefleetDesiredFailed fires when a device reports its document rejected, and resolves when it applies one', async () => {
    const state = (status: string): string => {
      const s = JSON.parse(sim.stateOf(id(4), 4, Date.now())) as { desired: Record<string, unknown> };
      s.desired = { source: 'device', serial: 13, status, error: status === 'rejected' ? 'signature does not verify' : null };
      return JSON.stringify(s);
    };
    const topic = topics.device(ROOT, id(4), 'state');
    const firing = await fireAndResolve('EdgefleetDesiredFailed', { device: id(4) },
      () => device.publishAsync(topic, state('rejected'), { qos: 1, retain: true }).then(() => undefined),
      () => device.publishAsync(topic, state('applied'), { qos: 1, retain: true }).then(() => undefined));
    expect(firing.labels).toEqual({ alertname: 'EdgefleetDesiredFailed', severity: 'critical', device: id(4) });
  }, 100_000);

  it('EdgefleetDeviceOffline fires when the retained status says offline for the (shortened) 5 minutes, and resolves when it is back', async () => {
    const topic = topics.device(ROOT, id(5), 'status');
    const firing = await fireAndResolve('EdgefleetDeviceOffline', { device: id(5) },
      // The last will the broker publishes when a device's connection drops.
      () => device.publishAsync(topic, JSON.stringify({ online: false }), { qos: 1, retain: true }).then(() => undefined),
      () => device.publishAsync(topic, JSON.stringify({ online: true, ts: new Date().toISOString() }), { qos: 1, retain: true }).then(() => undefined));
    expect(firing.labels).toEqual({ alertname: 'EdgefleetDeviceOffline', severity: 'critical', device: id(5) });
    expect(firing.annotations.summary).toBe(`${id(5)}: offline for 5 min or more`);
  }, 100_000);

  it('EdgefleetRolloutHalted fires when the controller pauses a rollout on a gate, and resolves when it is resumed', async () => {
    let r: Rollout = rolloutRecord('r-alerting', 'lab', [['mnist', 2]], [id(0), id(1)]);
    await store.rollouts.save(r, null);
    // What the planner's fail() writes with onFailure 'pause', then what a resume writes.
    const write = async (status: Rollout['status'], outcome: Rollout['waves'][number]['outcome'], reason: string | null): Promise<void> => {
      const next: Rollout = { ...r, status, reason, revision: r.revision + 1, waves: r.waves.map((w, i) => (i === r.wave ? { ...w, outcome } : w)) };
      await store.rollouts.save(next, r.revision);
      r = next;
    };
    const firing = await fireAndResolve('EdgefleetRolloutHalted', { rollout: 'r-alerting', model: 'mnist' },
      () => write('paused', 'failed', 'wave 1: error-rate gate: 4.2 % > 1 %'), () => write('running', 'running', null));
    expect(firing.labels).toEqual({ alertname: 'EdgefleetRolloutHalted', severity: 'critical', rollout: 'r-alerting', model: 'mnist' });
  }, 100_000);

  it('EdgefleetTelemetryDropped fires when a device reports dropped points', async () => {
    const start = Date.now();
    sim.faults.set(id(0), { dropPoints: 25 });
    const firing = await waitFor(arrival('EdgefleetTelemetryDropped', { device: id(0) }, 'firing', start), 45_000, 'EdgefleetTelemetryDropped firing');
    times.push({ alert: 'EdgefleetTelemetryDropped', labels: id(0), firingS: (firing.receivedAt - start) / 1000 });
    expect(firing.labels).toEqual({ alertname: 'EdgefleetTelemetryDropped', severity: 'warning', device: id(0) });
    // It stays for 15 minutes after the report: resolving is left to the promtool unit test.
  }, 60_000);

  it('no alert fired for a device without a fault', () => {
    const faulted = new Set([1, 2, 3, 4, 5, 0].map(id));
    const others = delivered.filter((a) => a.labels.device !== undefined && !faulted.has(a.labels.device));
    expect(others).toEqual([]);
  });
});
