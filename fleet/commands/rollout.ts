/**
 * `edgefleet rollout start|status|list|pause|resume|abort`: staged rollouts.
 * Every subcommand reads and writes the collector's store (--db), so it works
 * from any host that reaches it; the collector given --rollout-key runs them
 * (fleet/rollout/controller.ts).
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { GROUP_RE, DEVICE_ID_RE, parseTime } from '../../protocol/index.js';
import { parseOrUsage, requiredList } from '../args.js';
import { DB_HELP, openStore, resolveDb } from '../collector/open-store.js';
import { RevisionConflict } from '../collector/rollout-records.js';
import { ROLLOUT_ID_RE as ID_RE, rolloutSummary as summaryOf } from '../collector/rollout-view.js';
import type { FleetStore } from '../collector/store.js';
import type { Command, CommandIo } from '../command.js';
import { FailureError, UsageError } from '../errors.js';
import { collectManifests, manifestKey } from '../manifests.js';
import type { GateResult, Rollout, RolloutRequest, RolloutSpec, ShadowSpec } from '../rollout/planner.js';
import { PERCENT_RE, formatDuration, formatPercent, newRollout, parseWaves } from '../rollout/planner.js';
import { formatTextTable, terminalSafe } from '../terminal-text.js';
import { parseRef } from './deploy.js';

/** `90s`, `15m`, `2h`. */
export function durationOption(value: string, flag: string): number {
  const m = /^(\d+)(s|m|h)$/.exec(value);
  if (!m) throw new UsageError(`--${flag} must be a duration such as 90s, 15m or 2h, got "${value}"`);
  return Number(m[1]) * { s: 1_000, m: 60_000, h: 3_600_000 }[m[2] as 's' | 'm' | 'h'];
}

/** `25%` or `0.25` as a fraction; within [min, max]. */
export function shareOption(value: string, flag: string, max = 1, min = 0): number {
  const p = PERCENT_RE.exec(value);
  const x = p ? Number(p[1]) / 100 : /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
  if (!(x >= min && x <= max)) throw new UsageError(`--${flag} must be a share such as 25% or 0.25 (${formatPercent(min)} to ${formatPercent(max)}), got "${value}"`);
  return x;
}

function countOption(value: string | undefined, flag: string, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min) throw new UsageError(`--${flag} must be a whole number >= ${min}, got "${value}"`);
  return Number(value);
}

function slackOption(value: string | undefined): number {
  if (value === undefined) return 1;
  const ms = /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
  if (!(ms >= 0 && ms <= 60_000)) throw new UsageError(`--p99-slack-ms must be milliseconds from 0 to 60000, got "${value}"`);
  return ms;
}

async function withStore<T>(db: string | undefined, io: CommandIo, fn: (store: FleetStore) => Promise<T>): Promise<T> {
  const store = openStore(resolveDb(db), { cwd: io.cwd, mustExist: true });
  try {
    await store.init();
    return await fn(store);
  } finally {
    await store.close();
  }
}

const START_OPTIONS = {
  db: { type: 'string' },
  group: { type: 'string' },
  manifests: { type: 'string', multiple: true },
  waves: { type: 'string' },
  canary: { type: 'string' },
  'min-applied': { type: 'string' },
  'apply-timeout': { type: 'string' },
  soak: { type: 'string' },
  'max-error-rate': { type: 'string' },
  'max-p99-increase': { type: 'string' },
  'min-requests': { type: 'string' },
  'p99-slack-ms': { type: 'string' },
  'shadow-rate': { type: 'string' },
  'shadow-samples': { type: 'string' },
  'min-agreement': { type: 'string' },
  'shadow-timeout': { type: 'string' },
  'on-failure': { type: 'string' },
  expires: { type: 'string' },
  name: { type: 'string' },
  json: { type: 'boolean' },
} as const;

export const rolloutStart: Command = {
  name: 'rollout start',
  summary: 'plan a staged rollout of model versions to a group, gated on their health',
  help: `usage: edgefleet rollout start --group NAME NAME:VERSION[=LABELS] ... --manifests DIR [options]

Records a rollout in the collector's store and prints its id and plan: which
devices are in which wave (stable for a given id). The collector run with
--rollout-key carries it out: each wave's devices get a signed device document
listing the versions (with a shadow block when --shadow-rate is given), must
report them applied, soak, and pass the gates before the next wave; the last
wave publishes the group document and removes the device documents.

Options:
${DB_HELP}
  --group NAME              the group to move (devices reporting it now make the plan)
  --manifests PATH[,...]    manifest files, or directories of *.manifest.json
  --waves LIST              cumulative wave sizes, counts or shares (default 1,10%,50%,100%)
  --canary DEV[,DEV...]     devices that make up the first wave
  --min-applied SHARE       share of a wave that must apply (default 100%)
  --apply-timeout D         how long a wave may take to apply (default 15m)
  --soak D                  how long a wave serves before its gates are judged (default 10m)
  --max-error-rate SHARE    highest error rate on the new versions (default 1%)
  --max-p99-increase SHARE  highest p99 increase over the old version (default 25%)
  --p99-slack-ms MS         a p99 increase of at most MS milliseconds passes whatever its
                            share (default 1: sub-millisecond latencies swing by multiples)
  --min-requests N          requests a wave must serve before it is judged (default 100)
  --shadow-rate R           share of live requests a candidate also answers, on the device (0-1)
  --shadow-samples N        comparisons before the verdict (default 200)
  --min-agreement SHARE     agreement needed to switch (default 98%)
  --shadow-timeout D        longest shadow evaluation (default 15m; then rejected)
  --on-failure rollback|pause  what a failed wave does (default rollback)
  --expires D               lifetime of each document published (default 30d as 720h)
  --name ID                 the rollout id (default NAME-vVERSION-RANDOM)
  --json                    print the record as JSON

Durations take s, m, h.`,

  async run(args, io) {
    const { values, positionals } = parseOrUsage(() => parseArgs({ args, options: START_OPTIONS, strict: true, allowPositionals: true }));
    const group = values.group;
    if (group === undefined) throw new UsageError('missing --group NAME');
    if (!GROUP_RE.test(group)) throw new UsageError(`--group "${group}" is not a group name (1-64 of letters, digits, '_', '.', '-')`);
    const refs = positionals.map(parseRef);
    if (refs.length === 0) throw new UsageError('name at least one NAME:VERSION to roll out');
    const paths = requiredList(values.manifests, 'manifests', 'DIR|FILE');
    const found = await collectManifests(paths);
    const now = Date.now();
    const models = refs.map((ref) => {
      const file = found.get(manifestKey(ref.name, ref.version));
      if (file === undefined) throw new FailureError(`no manifest for ${manifestKey(ref.name, ref.version)} in ${paths.join(', ')}`);
      const expires = file.manifest.expiresAt === undefined ? undefined : parseTime(file.manifest.expiresAt);
      if (expires !== undefined && expires <= now) throw new FailureError(`the manifest of ${manifestKey(ref.name, ref.version)} (${file.path}) expired at ${file.manifest.expiresAt}`);
      return { ...ref, manifest: file.envelope };
    });
    const canary = values.canary === undefined ? [] : values.canary.split(',').filter((d) => d !== '');
    for (const d of canary) if (!DEVICE_ID_RE.test(d)) throw new UsageError(`--canary "${d}" is not a device id`);
    const onFailure = values['on-failure'] ?? 'rollback';
    if (onFailure !== 'rollback' && onFailure !== 'pause') throw new UsageError(`--on-failure must be rollback or pause, got "${onFailure}"`);
    let waves;
    try {
      waves = parseWaves(values.waves ?? '1,10%,50%,100%');
    } catch (err) {
      throw new UsageError(`--waves: ${(err as Error).message}`);
    }
    const shadow: ShadowSpec | null =
      values['shadow-rate'] === undefined
        ? null
        : {
            sampleRate: shareOption(values['shadow-rate'], 'shadow-rate'),
            minSamples: countOption(values['shadow-samples'], 'shadow-samples', 200),
            maxDurationS: durationOption(values['shadow-timeout'] ?? '15m', 'shadow-timeout') / 1000,
            compare: 'argmax', atol: 1e-4, rtol: 1e-3,
            minAgreement: shareOption(values['min-agreement'] ?? '98%', 'min-agreement'),
            onTimeout: 'reject',
          };
    if (shadow === null && (values['shadow-samples'] ?? values['min-agreement'] ?? values['shadow-timeout']) !== undefined) {
      throw new UsageError('--shadow-samples, --min-agreement and --shadow-timeout need --shadow-rate');
    }
    const spec: RolloutSpec = {
      group, models, waves, canary, onFailure, shadow,
      minApplied: shareOption(values['min-applied'] ?? '100%', 'min-applied', 1, 0.01),
      applyTimeoutMs: durationOption(values['apply-timeout'] ?? '15m', 'apply-timeout'),
      soakMs: values.soak === '0' ? 0 : durationOption(values.soak ?? '10m', 'soak'),
      maxErrorRate: shareOption(values['max-error-rate'] ?? '1%', 'max-error-rate'),
      maxP99Increase: shareOption(values['max-p99-increase'] ?? '25%', 'max-p99-increase', 100),
      p99SlackMs: slackOption(values['p99-slack-ms']),
      minRequests: countOption(values['min-requests'], 'min-requests', 100, 0),
      documentTtlMs: durationOption(values.expires ?? '720h', 'expires'),
    };
    const id = values.name ?? `${refs[0]?.name}-v${refs[0]?.version}-${randomBytes(3).toString('hex')}`;
    if (!ID_RE.test(id)) throw new UsageError(`--name "${id}" must be 1-64 of letters, digits, '_', '.', '-'`);
    const r = await withStore(values.db, io, async (store) => {
      const devices = (await store.fleetStatus({ group })).map((row) => row.device);
      if (devices.length === 0) throw new FailureError(`no device reports being in group ${group}: nothing to roll out to`);
      const missing = canary.filter((d) => !devices.includes(d));
      if (missing.length > 0) throw new UsageError(`--canary ${missing.join(', ')}: not in group ${group}`);
      const active = (await store.rollouts.list({ active: true })).find((x) => x.spec.group === group);
      if (active) throw new FailureError(`rollout ${active.id} is still ${active.status} on group ${group}: abort it first`);
      const record = newRollout(id, spec, devices, now);
      try {
        await store.rollouts.save(record, null);
      } catch (err) {
        if (err instanceof RevisionConflict) throw new UsageError(`a rollout named ${id} exists already; pick another --name`);
        throw err;
      }
      return record;
    });
    if (values.json) {
      io.out(JSON.stringify(summaryOf(r), null, 2));
      return;
    }
    io.out(`rollout ${r.id}: ${refs.map((m) => `${m.name}:${m.version}`).join(' ')} to group ${group}, ${r.waves.length} wave(s)`);
    r.waves.forEach((w, i) => io.out(`  wave ${i + 1}: ${w.devices.length} device(s): ${terminalSafe(w.devices.join(', '))}`));
    io.out(`gates: error rate <= ${formatPercent(spec.maxErrorRate)}, p99 +${formatPercent(spec.maxP99Increase)} or +${spec.p99SlackMs} ms at most, ${spec.minRequests} requests; soak ${formatDuration(spec.soakMs)}; on failure ${onFailure}`);
    io.note("the collector run with --rollout-key carries it out; follow it with 'edgefleet rollout status --watch'");
  },
};

const STATUS_OPTIONS = { db: { type: 'string' }, json: { type: 'boolean' }, watch: { type: 'boolean' }, 'interval-ms': { type: 'string' } } as const;

export const rolloutStatus: Command = {
  name: 'rollout status',
  summary: 'a rollout: waves, devices per state, each gate against its threshold',
  help: `usage: edgefleet rollout status [ID] [--db URL] [--watch] [--json]

Without ID, the newest rollout. Per wave: its devices and how many applied,
each gate's measured figure against its threshold, and why the rollout
stopped or paused. --watch prints it again as it changes, until it ends.

Options:
${DB_HELP}
  --watch       follow it until it succeeds, fails or is aborted
  --json        print the record as JSON`,

  async run(args, io) {
    const { values, positionals } = parseOrUsage(() => parseArgs({ args, options: STATUS_OPTIONS, strict: true, allowPositionals: true }));
    if (positionals.length > 1) throw new UsageError('name at most one rollout id');
    const intervalMs = countOption(values['interval-ms'], 'interval-ms', 2_000, 50);
    await withStore(values.db, io, async (store) => {
      let last = '';
      for (;;) {
        const r = positionals[0] === undefined ? (await store.rollouts.list({ limit: 1 }))[0] : await store.rollouts.load(positionals[0]);
        if (r === undefined) throw new FailureError(positionals[0] === undefined ? 'no rollout recorded yet' : `no rollout ${positionals[0]}`);
        const text = values.json ? JSON.stringify(summaryOf(r), null, 2) : formatRollout(r, Date.now());
        if (text !== last) io.out(text);
        last = text;
        if (!values.watch || ['succeeded', 'failed', 'aborted'].includes(r.status)) return;
        await new Promise((resolve) => setTimeout(resolve, intervalMs));
      }
    });
  },
};

function gateLine(g: GateResult): string {
  const mark = g.ok === null ? '..' : g.ok ? 'ok' : 'FAIL';
  return `    ${mark.padEnd(4)} ${g.name}: ${terminalSafe(g.detail)}`;
}

export function formatRollout(r: Rollout, now: number): string {
  const lines = [
    `rollout ${r.id}: ${r.status}${r.status === 'running' ? ` (wave ${Math.min(r.wave + 1, r.waves.length)}/${r.waves.length}, ${r.phase} for ${formatDuration(Math.max(0, now - r.phaseSince))})` : ''}`,
    `  ${r.spec.models.map((m) => `${m.name}:${m.version}`).join(' ')} to group ${r.spec.group}` +
      (r.previous === null ? '' : ` (was ${r.previous.map((m) => `${m.name}:${m.version}`).join(' ') || 'nothing'})`),
  ];
  if (r.reason) lines.push(`  reason: ${terminalSafe(r.reason)}`);
  r.waves.forEach((w, i) => {
    lines.push(`  wave ${i + 1}: ${w.outcome}, ${w.devices.length} device(s)`);
    for (const g of w.gates) lines.push(gateLine(g));
  });
  return lines.join('\n');
}

const LIST_OPTIONS = { db: { type: 'string' }, json: { type: 'boolean' }, limit: { type: 'string' } } as const;

export const rolloutList: Command = {
  name: 'rollout list',
  summary: 'rollouts, newest first',
  help: `usage: edgefleet rollout list [--db URL] [--limit N] [--json]

Options:
${DB_HELP}
  --limit N     at most N rollouts (default 20)
  --json        print them as JSON`,
  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: LIST_OPTIONS, strict: true }));
    const limit = countOption(values.limit, 'limit', 20);
    const rows = await withStore(values.db, io, (store) => store.rollouts.list({ limit }));
    if (values.json) {
      io.out(JSON.stringify(rows.map(summaryOf), null, 2));
      return;
    }
    if (rows.length === 0) {
      io.note('no rollout recorded yet');
      return;
    }
    io.out(
      formatTextTable(
        ['ID', 'GROUP', 'MODELS', 'STATUS', 'WAVE', 'STARTED', 'REASON'],
        rows.map((r) => [
          r.id, r.spec.group, r.spec.models.map((m) => `${m.name}:${m.version}`).join(' '), r.status,
          `${Math.min(r.wave + 1, r.waves.length)}/${r.waves.length}`, new Date(r.createdAt).toISOString(), r.reason ?? '-',
        ]),
      ),
    );
  },
};

/** pause, resume and abort: a request on the record, taken by the controller at its next tick. */
function requestCommand(verb: 'pause' | 'resume' | 'abort', summary: string): Command {
  const options = { db: { type: 'string' }, rollback: { type: 'boolean' } } as const;
  return {
    name: `rollout ${verb}`,
    summary,
    help: `usage: edgefleet rollout ${verb} ID [--db URL]${verb === 'abort' ? ' [--rollback]' : ''}

${summary}; the collector leading the rollouts takes it at its next tick.${verb === 'abort' ? '\n  --rollback    also put every device that got the new versions back on the old ones' : ''}

Options:
${DB_HELP}`,
    async run(args, io) {
      const { values, positionals } = parseOrUsage(() => parseArgs({ args, options, strict: true, allowPositionals: true }));
      const id = positionals[0];
      if (id === undefined || positionals.length > 1) throw new UsageError(`name the rollout: edgefleet rollout ${verb} ID`);
      if (values.rollback && verb !== 'abort') throw new UsageError('--rollback goes with abort');
      const request: RolloutRequest = verb === 'abort' && values.rollback ? 'abort-rollback' : verb;
      await withStore(values.db, io, async (store) => {
        for (let attempt = 0; ; attempt++) {
          const r = await store.rollouts.load(id);
          if (r === undefined) throw new FailureError(`no rollout ${id}`);
          const allowed = verb === 'resume' ? r.status === 'paused' : verb === 'pause' ? r.status === 'running' : r.status === 'running' || r.status === 'paused';
          if (!allowed) throw new FailureError(`rollout ${id} is ${r.status}: cannot ${verb} it`);
          try {
            await store.rollouts.save({ ...r, requested: request, revision: r.revision + 1, updatedAt: Date.now() }, r.revision);
            break;
          } catch (err) {
            if (!(err instanceof RevisionConflict) || attempt >= 5) throw err;
          }
        }
      });
      io.out(`rollout ${id}: ${request} requested`);
    },
  };
}

export const rolloutPause = requestCommand('pause', 'hold a rollout where it is');
export const rolloutResume = requestCommand('resume', 'go on with a paused rollout (a wave that failed its gates soaks again)');
export const rolloutAbort = requestCommand('abort', 'stop a rollout for good');

export const ROLLOUT_COMMANDS: readonly Command[] = [rolloutStart, rolloutStatus, rolloutList, rolloutPause, rolloutResume, rolloutAbort];
