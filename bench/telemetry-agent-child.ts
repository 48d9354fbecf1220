/**
 * The real agent in its own process, like bench/agent-child.ts, with one
 * bench-only switch: SIGUSR2 turns inference recording on and SIGHUP off at
 * run time, so "recording on" and "recording off" are measured in the same
 * process, with the same MQTT connection, reporter, rollout, uploader and
 * health sampler running either way. The agent's config has no such switch
 * (telemetry exists exactly when `mqtt` is set), so the switch wraps
 * InferenceRecorder.prototype.record: while off, the wrapper returns before
 * calling the real record(), so nothing is counted, no series fills, and
 * cut() finds nothing to append. While on it counts the calls and calls the
 * real record(). Both modes pay the wrapper's one boolean test. The
 * outbox's calls (append, lease, ack, reportDrops: synchronous SQLite on the
 * event loop) are timed, observing only.
 *
 * Usage: node --import tsx bench/telemetry-agent-child.ts '<config JSON>' [on|off]
 * Prints `READY <port>` on stdout; writes `RECORDING on|off <calls recorded so far> #<line number>
 * outbox <ms in outbox calls> <outbox calls> <longest call ms>` to stderr at start and after every
 * SIGUSR2 or SIGHUP. SIGTERM stops the agent cleanly.
 */
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import { InferenceRecorder, type Outcome } from '../agent/telemetry/recorder.js';
import { runAgentProcess } from './agent-process.js';

const raw = process.argv[2];
if (!raw) throw new Error('usage: telemetry-agent-child.ts <config JSON> [on|off]');
let recording = process.argv[3] !== 'off';
let recorded = 0;
let said = 0;

const proto = InferenceRecorder.prototype;
const realRecord = Object.getOwnPropertyDescriptor(proto, 'record')?.value as InferenceRecorder['record'];
proto.record = function record(this: InferenceRecorder, model: string, version: number, outcome: Outcome, latencyMs: number): void {
  if (!recording) return;
  recorded++;
  realRecord.call(this, model, version, outcome, latencyMs);
};
// Observing only: time spent in the outbox's synchronous SQLite calls (each a
// transaction, most with an fsync at synchronous=FULL), all on the event loop.
let outboxMs = 0;
let outboxCalls = 0;
let outboxMaxMs = 0;
for (const name of ['append', 'lease', 'ack', 'reportDrops'] as const) {
  const real = Object.getOwnPropertyDescriptor(TelemetryOutbox.prototype, name)?.value as (...args: unknown[]) => unknown;
  Object.defineProperty(TelemetryOutbox.prototype, name, {
    configurable: true,
    writable: true,
    value: function timed(this: TelemetryOutbox, ...args: unknown[]): unknown {
      const t0 = performance.now();
      try {
        return real.apply(this, args);
      } finally {
        const ms = performance.now() - t0;
        outboxMs += ms;
        outboxCalls++;
        outboxMaxMs = Math.max(outboxMaxMs, ms);
      }
    },
  });
}

const say = (): boolean =>
  process.stderr.write(`RECORDING ${recording ? 'on' : 'off'} ${recorded} #${++said} outbox ${outboxMs.toFixed(3)} ${outboxCalls} ${outboxMaxMs.toFixed(3)}\n`);
// Absolute, not a toggle: a signal that arrives twice (or is coalesced) cannot invert the state.
process.on('SIGUSR2', () => {
  recording = true;
  say();
});
process.on('SIGHUP', () => {
  recording = false;
  say();
});

await runAgentProcess(raw, say);
