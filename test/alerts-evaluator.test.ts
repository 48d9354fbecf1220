/**
 * The alert evaluator (fleet/alerts/evaluator.ts) on fleet rows made up
 * here, with the clock the test moves: each of the eight rules goes
 * pending, fires after its `for`, and resolves when its condition clears;
 * scoped rules see only their group or model; a device or a rule that goes
 * away resolves its alerts; a quiet tick changes nothing.
 */
import { describe, expect, it } from 'vitest';
import { evaluate, type AlertNotification, type AlertState } from '../fleet/alerts/evaluator.js';
import { parseRules, type AlertRule } from '../fleet/alerts/rules.js';
import type { FleetRow } from '../fleet/collector/store.js';
import { newRollout, parseWaves, PAUSED_BY_OPERATOR, type Rollout } from '../fleet/rollout/planner.js';
import { formatTime } from '../protocol/index.js';

const T0 = Date.parse('2026-12-04T10:00:00Z');
const MIN = 60_000;

function row(device: string, patch: Partial<FleetRow> = {}): FleetRow {
  return {
    device, online: true, groups: ['lab'], desired: null, models: [], agent: null, trust: null, inference: [], health: null,
    lastSeen: formatTime(T0), dropped: { count: 0, lastAt: null }, outbox: null, quarantined: 0, overQuota: 0, clockSkewed: 0, ...patch,
  };
}

const inference = (model: string, version: number, count: number, errors: number, p99: number | null) =>
  ({ model, version, ts: formatTime(T0), intervalS: 60, count, errors, p50: p99, p99 });
const health = (tempC: number | null, gpuUtil: (number | null)[] = []) => ({
  ts: formatTime(T0), cpuPct: 10, load1: 0.1, tempC, memUsedBytes: 1, memTotalBytes: 2,
  gpus: gpuUtil.map((u) => ({ name: 'Orin', utilPct: u, memUsedBytes: null, memTotalBytes: null, tempC: null })),
});

const rulesOf = (yaml: string): AlertRule[] => parseRules(yaml).rules;

/** The evaluator run tick after tick, its changes kept as the store keeps them. */
class Fleet {
  now = T0;
  rows: FleetRow[] = [];
  rollouts: Rollout[] = [];
  readonly alerts = new Map<string, AlertState>();
  readonly sent: AlertNotification[] = [];

  constructor(public rules: AlertRule[]) {}

  tick(advanceMs = 0): AlertNotification[] {
    this.now += advanceMs;
    const active = new Map([...this.alerts].filter(([, a]) => a.state !== 'resolved'));
    const result = evaluate(this.rules, { now: this.now, rows: this.rows, rollouts: this.rollouts }, active);
    for (const a of result.changed) this.alerts.set(a.fingerprint, a);
    for (const f of result.dropped) this.alerts.delete(f);
    this.sent.push(...result.notifications);
    return result.notifications;
  }

  states(): string[] {
    return [...this.alerts.values()].map((a) => `${a.state} ${Object.entries(a.labels).filter(([k]) => k !== 'alertname' && k !== 'severity').map(([k, v]) => `${k}=${v}`).join(',')}`).sort();
  }
}

const said = (ns: AlertNotification[]): string[] => ns.map((n) => `${n.status} ${n.labels.alertname} ${n.annotations.summary}`);

describe('alert evaluator', () => {
  it('EdgefleetErrorRateHigh: pending, firing after 5m, resolved; intervals without requests do not count', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetErrorRateHigh }]'));
    f.rows = [row('pi-001', { inference: [inference('mnist', 3, 1000, 42, 10)] }), row('pi-002', { inference: [inference('mnist', 3, 1000, 10, 10)] })];
    expect(f.tick()).toEqual([]);
    expect(f.states()).toEqual(['pending device=pi-001,model=mnist,version=3']);
    expect(f.tick(4 * MIN + 59_000)).toEqual([]);
    const fired = f.tick(1000);
    expect(said(fired)).toEqual(['firing EdgefleetErrorRateHigh pi-001 mnist v3: 4.2 % errors over the last interval']);
    expect(fired[0]).toMatchObject({ labels: { alertname: 'EdgefleetErrorRateHigh', severity: 'warning', device: 'pi-001', model: 'mnist', version: '3' }, startsAt: T0 + 5 * MIN, endsAt: null });
    expect(fired[0]?.annotations.description).toBe('42 of 1000 requests failed in the 60 s interval ending 2026-12-04T10:00:00.000Z; the rule fires above 1 %.');
    // Still firing: nothing more is said, nothing is written.
    expect(evaluate(f.rules, { now: f.now + MIN, rows: f.rows, rollouts: [] }, f.alerts)).toEqual({ changed: [], dropped: [], notifications: [] });
    f.rows = [row('pi-001', { inference: [inference('mnist', 3, 0, 0, null)] })];
    expect(said(f.tick(MIN))).toEqual(['resolved EdgefleetErrorRateHigh pi-001 mnist v3: 4.2 % errors over the last interval']);
    expect(f.sent.at(-1)).toMatchObject({ startsAt: T0 + 5 * MIN, endsAt: T0 + 6 * MIN });
  });

  it('a pending alert whose condition clears before its for is forgotten without a notification', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetLatencyP99High }]'));
    f.rows = [row('pi-001', { inference: [inference('mnist', 3, 100, 0, 812.4)] })];
    f.tick();
    expect(f.states()).toEqual(['pending device=pi-001,model=mnist,version=3']);
    f.rows = [row('pi-001', { inference: [inference('mnist', 3, 100, 0, 120)] })];
    expect(f.tick(MIN)).toEqual([]);
    expect(f.states()).toEqual([]);
    // It comes back: the for starts again from now.
    f.rows = [row('pi-001', { inference: [inference('mnist', 3, 100, 0, 812.4)] })];
    f.tick(MIN);
    expect(f.tick(4 * MIN)).toEqual([]);
    expect(said(f.tick(MIN))).toEqual(['firing EdgefleetLatencyP99High pi-001 mnist v3: p99 latency 812.4 ms over the last interval']);
    f.rows = [row('pi-001', { inference: [inference('mnist', 3, 100, 0, 499)] })];
    expect(said(f.tick(MIN))).toEqual(['resolved EdgefleetLatencyP99High pi-001 mnist v3: p99 latency 812.4 ms over the last interval']);
  });

  it('EdgefleetGpuBusy: one alert per GPU index', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetGpuBusy, for: 1m }]'));
    f.rows = [row('jet-1', { health: health(50, [95, 20, 99.5]) })];
    f.tick();
    expect(said(f.tick(MIN))).toEqual(['firing EdgefleetGpuBusy jet-1 GPU 0 (Orin): 95 % busy', 'firing EdgefleetGpuBusy jet-1 GPU 2 (Orin): 99.5 % busy']);
    f.rows = [row('jet-1', { health: health(50, [95, 20, null]) })];
    expect(said(f.tick(MIN))).toEqual(['resolved EdgefleetGpuBusy jet-1 GPU 2 (Orin): 99.5 % busy']);
    expect(f.states()).toEqual(['firing device=jet-1,gpu=0', 'resolved device=jet-1,gpu=2']);
  });

  it('EdgefleetDeviceOffline: the offline time counts from when it was last heard from', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetDeviceOffline }]'));
    // Its status said offline 4 minutes ago: pending, and firing one minute later.
    f.rows = [row('pi-001', { online: false, lastSeen: formatTime(T0 - 4 * MIN) }), row('pi-002', { lastSeen: formatTime(T0) })];
    expect(f.tick()).toEqual([]);
    expect(f.states()).toEqual(['pending device=pi-001']);
    expect(said(f.tick(MIN))).toEqual(['firing EdgefleetDeviceOffline pi-001 offline since 2026-12-04T09:56:00.000Z']);
    // pi-002 says it is online but has sent nothing for over 5 minutes: firing at once.
    expect(said(f.tick(4 * MIN + 1000))).toEqual(['firing EdgefleetDeviceOffline pi-002 offline since 2026-12-04T10:00:00.000Z']);
    expect(f.sent.at(-1)?.annotations.description).toBe('pi-002 was last heard from at 2026-12-04T10:00:00.000Z and it has sent nothing.');
    f.rows = [row('pi-001', { online: true, lastSeen: formatTime(f.now) }), row('pi-002', { lastSeen: formatTime(f.now) })];
    expect(said(f.tick(1000)).map((s) => s.split(' ').slice(0, 3).join(' '))).toEqual(['resolved EdgefleetDeviceOffline pi-001', 'resolved EdgefleetDeviceOffline pi-002']);
  });

  it('EdgefleetTemperatureHigh, with an edited threshold and for', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetTemperatureHigh, threshold: 70, for: 30s }]'));
    f.rows = [row('pi-001', { health: health(75.25) }), row('pi-002', { health: health(null) })];
    f.tick();
    expect(said(f.tick(30_000))).toEqual(['firing EdgefleetTemperatureHigh pi-001: board at 75.3 C']);
    f.rows = [row('pi-001', { health: health(70) })];
    expect(said(f.tick(15_000))).toEqual(['resolved EdgefleetTemperatureHigh pi-001: board at 75.3 C']);
  });

  it('EdgefleetTelemetryDropped fires at once and resolves when the last report is older than its window', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetTelemetryDropped }]'));
    f.rows = [row('pi-001', { dropped: { count: 120, lastAt: formatTime(T0 - MIN) } }), row('pi-002', { dropped: { count: 5, lastAt: formatTime(T0 - 20 * MIN) } })];
    expect(said(f.tick())).toEqual(['firing EdgefleetTelemetryDropped pi-001 dropped telemetry points (last report 2026-12-04T09:59:00.000Z)']);
    expect(f.tick(14 * MIN)).toEqual([]);
    expect(said(f.tick(MIN + 1))).toEqual(['resolved EdgefleetTelemetryDropped pi-001 dropped telemetry points (last report 2026-12-04T09:59:00.000Z)']);
  });

  it('EdgefleetDesiredFailed fires for failed and rejected, resolves when applied', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetDesiredFailed }]'));
    const desired = (status: 'applied' | 'failed' | 'rejected', error: string | null) => ({ source: 'device' as const, serial: 7, status, error });
    f.rows = [row('pi-001', { desired: desired('failed', 'sha256 mismatch') }), row('pi-002', { desired: desired('rejected', 'REPLAY') }), row('pi-003', { desired: desired('applied', null) })];
    expect(said(f.tick())).toEqual(['firing EdgefleetDesiredFailed pi-001: desired serial 7 failed', 'firing EdgefleetDesiredFailed pi-002: desired serial 7 rejected']);
    expect(f.sent[0]?.labels.severity).toBe('critical');
    expect(f.sent[0]?.annotations.description).toBe('pi-001 reports its desired-state document (serial 7, from its device) failed: sha256 mismatch.');
    f.rows = [row('pi-001', { desired: desired('applied', null) }), row('pi-002', { desired: desired('rejected', 'REPLAY') })];
    expect(said(f.tick(MIN))).toEqual(['resolved EdgefleetDesiredFailed pi-001: desired serial 7 failed']);
  });

  it('EdgefleetRolloutHalted: a gate pausing or failing the newest rollout of a group; an operator pause is not', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetRolloutHalted }]'));
    const spec = {
      group: 'lab', models: [{ name: 'mnist', version: 4, labels: [], manifest: { payloadType: 't', payload: '', signatures: [] } }], waves: parseWaves('1,100%'),
      canary: [], minApplied: 1, applyTimeoutMs: 60_000, soakMs: 0, maxErrorRate: 0.01, maxP99Increase: 0.25, minRequests: 10, shadow: null,
      onFailure: 'pause' as const, documentTtlMs: 86_400_000,
    };
    const r1 = { ...newRollout('r1', spec, ['a', 'b'], T0), status: 'paused' as const, reason: PAUSED_BY_OPERATOR };
    f.rollouts = [r1];
    expect(f.tick()).toEqual([]);
    f.rollouts = [{ ...r1, reason: 'wave 1: error-rate gate: 3 % > 1 %' }];
    expect(said(f.tick(MIN))).toEqual(['firing EdgefleetRolloutHalted rollout r1 (mnist v4 to group lab) paused']);
    expect(f.sent[0]?.labels).toEqual({ alertname: 'EdgefleetRolloutHalted', severity: 'critical', rollout: 'r1', model: 'mnist' });
    // Resumed: resolved. Then it fails: fires again.
    f.rollouts = [{ ...r1, status: 'running', reason: null }];
    expect(said(f.tick(MIN))[0]).toMatch(/^resolved /);
    f.rollouts = [{ ...r1, status: 'failed', reason: 'wave 2: p99 gate: +40 %' }];
    expect(said(f.tick(MIN))).toEqual(['firing EdgefleetRolloutHalted rollout r1 (mnist v4 to group lab) failed']);
    // A newer rollout for the group is what counts now.
    f.rollouts = [{ ...newRollout('r2', spec, ['a', 'b'], T0 + 10 * MIN) }, ...f.rollouts];
    expect(said(f.tick(MIN))).toEqual(['resolved EdgefleetRolloutHalted rollout r1 (mnist v4 to group lab) failed']);
  });

  it('scoped rules see only their group or model; two scopes of one alert are two alerts', () => {
    const f = new Fleet(rulesOf(`
rules:
  - { alert: EdgefleetErrorRateHigh, group: lab, threshold: 10, for: 0 }
  - { alert: EdgefleetErrorRateHigh, model: mnist, threshold: 2, for: 0 }
  - { alert: EdgefleetTemperatureHigh, model: resnet, for: 0 }
`));
    f.rows = [
      row('lab-1', { groups: ['lab'], inference: [inference('mnist', 1, 100, 5, 1), inference('resnet', 2, 100, 50, 1)], health: health(90) }),
      row('shop-1', { groups: ['shop'], inference: [inference('mnist', 1, 100, 5, 1), inference('resnet', 2, 100, 50, 1)], health: health(90) }),
      row('shop-2', { groups: ['shop'], models: [{ name: 'resnet', version: 2, state: 'serving', labels: [], executionProvider: null, sha256: null, progress: 1, error: null }], health: health(85) }),
    ];
    const fired = f.tick();
    expect(fired.map((n) => `${n.labels.alertname} ${n.labels.device} ${n.labels.model ?? ''}`)).toEqual([
      'EdgefleetErrorRateHigh lab-1 resnet',
      'EdgefleetErrorRateHigh lab-1 mnist',
      'EdgefleetErrorRateHigh shop-1 mnist',
      'EdgefleetTemperatureHigh lab-1 ',
      'EdgefleetTemperatureHigh shop-1 ',
      'EdgefleetTemperatureHigh shop-2 ',
    ]);
    // lab-1 mnist is caught by the model rule only (5 % is under the group rule's 10 %); distinct fingerprints per rule.
    expect(new Set(fired.map((n) => n.fingerprint)).size).toBe(fired.length);
  });

  it('a device that disappears, or a rule taken out of the file, resolves its alerts', () => {
    const f = new Fleet(rulesOf('rules: [{ alert: EdgefleetTemperatureHigh, for: 0 }, { alert: EdgefleetDesiredFailed }]'));
    f.rows = [row('pi-001', { health: health(90) }), row('pi-002', { health: health(95), desired: { source: 'group', group: 'lab', serial: 2, status: 'failed', error: null } })];
    expect(f.tick()).toHaveLength(3);
    f.rows = [row('pi-002', { health: health(95), desired: { source: 'group', group: 'lab', serial: 2, status: 'failed', error: null } })];
    expect(said(f.tick(MIN))).toEqual(['resolved EdgefleetTemperatureHigh pi-001: board at 90 C']);
    f.rules = rulesOf('rules: [{ alert: EdgefleetDesiredFailed }]');
    expect(said(f.tick(MIN))).toEqual(['resolved EdgefleetTemperatureHigh pi-002: board at 95 C']);
    // An edited threshold is the same rule: its firing alert stays, unannounced.
    f.rules = rulesOf('rules: [{ alert: EdgefleetDesiredFailed, severity: critical }]');
    expect(f.tick(MIN)).toEqual([]);
    expect(f.states()).toEqual(['resolved device=pi-001', 'resolved device=pi-002', 'firing device=pi-002'].sort());
  });
});
