import type { RolloutEvent, RolloutEventType, RolloutListener } from './events.js';
import type { Reporter } from './reporter.js';

/** What the projection needs of the Reporter, which publishes and coalesces. */
export type ReportTarget = Pick<Reporter, 'setDesired' | 'setModel' | 'removeModel' | 'setTrust' | 'event' | 'snapshot'>;

type Handlers = { [T in RolloutEventType]: (r: ReportTarget, e: Extract<RolloutEvent, { type: T }>) => void };

/**
 * The one place rollout events become reported state and MQTT events
 * (docs/protocol.md section 7). A mapped type over the event union, so an event
 * without a handler does not compile.
 */
const HANDLERS: Handlers = {
  'desired.accepted': (r, e) => {
    r.event('desired.received', { detail: `serial ${e.serial} from ${e.from}` });
    const available = new Set(e.available.map((v) => `${v.name}@${v.version}`));
    const listed = new Set(e.models.map((m) => `${m.name}@${m.version}`));
    // Versions of an earlier document that no longer serve leave the report; serving ones stay until unloaded.
    for (const m of r.snapshot().models) {
      const key = `${m.name}@${m.version}`;
      if (!listed.has(key) && !available.has(key)) r.removeModel(m.name, m.version);
    }
    r.setDesired({ ...e.origin, serial: e.serial, status: 'applying', error: null });
    for (const m of e.models) {
      if (!available.has(`${m.name}@${m.version}`)) r.setModel(m.name, m.version, { state: 'pending', labels: [...m.labels], sha256: m.sha256, progress: 0, error: null });
      else r.setModel(m.name, m.version, { labels: [...m.labels] });
    }
  },
  'desired.rejected': (r, e) => {
    r.setDesired({ ...e.origin, serial: e.serial, status: 'rejected', error: e.error });
    r.event('desired.rejected', { detail: e.error });
    if (e.code === 'MANIFEST') r.event('verify.failed', { detail: e.error });
  },
  'desired.resumed': (r, e) => r.setDesired({ ...e.origin, serial: e.serial, status: 'applying', error: null }),
  'desired.waiting': (r, e) => r.setDesired({ ...e.origin, serial: e.serial, status: 'failed', error: e.error }),
  'desired.dropped': (r, e) => {
    r.setDesired({ ...e.origin, serial: e.serial, status: 'rejected', error: e.error });
    r.event('desired.rejected', { detail: e.error });
  },
  'desired.settled': (r, e) => r.setDesired({ ...e.origin, serial: e.serial, status: e.status, error: e.error }),
  'trust.loaded': (r, e) => r.setTrust({ version: e.version, expiresAt: e.expiresAt, error: null }),
  'trust.updated': (r, e) => {
    // An accepted version settles whatever problem came before it.
    r.setTrust({ version: e.version, expiresAt: e.expiresAt, error: null });
    r.event('trust.updated', { detail: `trust version ${e.version} from ${e.topic}` });
  },
  'trust.rejected': (r, e) => {
    r.setTrust({ version: e.current.version, expiresAt: e.current.expiresAt, error: e.error });
    r.event('trust.rejected', { detail: e.error });
  },
  'fetch.started': (r, e) => {
    r.setModel(e.name, e.version, { state: 'downloading', sha256: e.sha256, error: null });
    r.event('download.started', { model: e.name, version: e.version, detail: `${e.size} bytes in ${e.blocks} blocks` });
  },
  'fetch.progress': (r, e) => r.setModel(e.name, e.version, { progress: e.done / e.total }),
  'fetch.verifying': (r, e) => r.setModel(e.name, e.version, { state: 'verifying', progress: 1 }),
  'fetch.completed': (r, e) => r.event('download.completed', { model: e.name, version: e.version }),
  'verify.started': (r, e) => r.setModel(e.name, e.version, { state: 'verifying', sha256: e.sha256, error: null }),
  'load.started': (r, e) => r.setModel(e.name, e.version, { state: 'loading' }),
  'load.completed': (r, e) => r.setModel(e.name, e.version, { executionProvider: e.executionProvider }),
  'shadow.started': (r, e) => {
    r.setModel(e.name, e.version, { state: 'shadowing', progress: 0, error: null });
    const { sampleRate, minSamples, maxDurationS, compare, minAgreement, onTimeout } = e.spec;
    r.event('shadow.started', {
      model: e.name,
      version: e.version,
      detail: `beside version ${e.baseVersion}: sampleRate ${sampleRate}, minSamples ${minSamples}, compare ${compare}, minAgreement ${minAgreement}, maxDurationS ${maxDurationS}, onTimeout ${onTimeout}`,
    });
  },
  'shadow.progress': (r, e) => r.setModel(e.name, e.version, { progress: Math.min(1, e.samples / e.minSamples) }),
  // A rejection is reported by the step's failure (SHADOW_REJECTED); an activation by the switch that follows.
  'shadow.completed': (r, e) => r.event('shadow.completed', { model: e.name, version: e.version, detail: `${e.verdict} against version ${e.baseVersion}: ${e.reason}` }),
  added: (r, e) => r.setModel(e.name, e.version, { state: 'serving', progress: 1 }),
  restored: (r, e) => r.setModel(e.name, e.version, { state: 'serving', progress: 1, error: null }),
  activated: (r, e) => {
    r.setModel(e.name, e.version, { state: 'serving', progress: 1 });
    r.event('activated', { model: e.name, version: e.version, ...(e.previous !== undefined && { detail: `replaces version ${e.previous}` }) });
  },
  'rolled-back': (r, e) => {
    r.setModel(e.name, e.version, { state: 'rolled_back', error: e.reason });
    r.event('rolled_back', { model: e.name, version: e.version, detail: e.reason });
  },
  unloaded: (r, e) => {
    r.removeModel(e.name, e.version);
    r.event('unloaded', { model: e.name, version: e.version });
  },
  'step.failed': (r, e) => {
    const { outcome, version } = e;
    if (version === undefined) return; // label and prune steps have no version entry to report on
    if (e.retrying) {
      const attempt = outcome.untilFixed ? `attempt ${e.attempt}, retrying until it is fixed` : `attempt ${e.attempt} of ${e.maxAttempts}, retrying`;
      r.setModel(e.name, version, { error: `${outcome.message} (${attempt})` });
      return;
    }
    if (outcome.event) r.event(outcome.event, { model: e.name, version, detail: outcome.message });
    if (outcome.modelState) r.setModel(e.name, version, { state: outcome.modelState, error: outcome.message });
  },
  // The version left the report when the newer document was accepted (unless it serves); the event says why its work stopped.
  'step.superseded': (r, e) =>
    r.event('superseded', {
      model: e.name,
      version: e.version,
      detail:
        e.step === 'fetch'
          ? `download abandoned: serial ${e.serial} no longer lists this version; the blocks received are deleted unless it lists the same artifact`
          : `switch abandoned: serial ${e.serial} no longer switches to this version`,
    }),
  'message.refused': (r, e) =>
    r.event('message.refused', {
      detail:
        `message on ${e.topic} refused: ${e.bytes} bytes is over the limit of ${e.limit} bytes (mqtt.maxPacketBytes); dropped unread` +
        (e.suppressed > 0 ? `; ${e.suppressed} more refused on this topic since the last report` : ''),
    }),
};

/** A listener for RolloutEvents that keeps `reporter` in step with the rollout. */
export function reportProjection(reporter: ReportTarget): RolloutListener {
  // TypeScript cannot tie e.type to its handler's parameter; HANDLERS' type already does.
  return (e) => (HANDLERS[e.type] as (r: ReportTarget, e: RolloutEvent) => void)(reporter, e);
}
