import type { Logger } from 'pino';
import type { Desired } from '../../protocol/desired.js';
import { verifyDesired } from '../../protocol/desired.js';
import { ProtocolError, isProtocolError } from '../../protocol/errors.js';
import { verifyManifest, type Manifest } from '../../protocol/manifest.js';
import { parseTopic, topics, type Target } from '../../protocol/names.js';
import type { AgentConfig } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import type { VersionLoader } from '../serving/loader.js';
import type { ModelRegistry } from '../serving/registry.js';
import type { ShadowTap } from '../serving/shadow/tap.js';
import type { AgentDatabase, KvStore } from '../store/database.js';
import { NoSpaceError } from '../store/no-space.js';
import { agentVersion } from '../version.js';
import { DesiredSource, targetKey, type Candidate } from './desired-source.js';
import type { DesiredOrigin, RolloutEvents } from './events.js';
import { RolloutError, classify, failureCode } from './errors.js';
import { StepExecutor } from './executor.js';
import type { MqttConnection } from '../mqtt/connection.js';
import type { RefusedPacket } from '../mqtt/packet-size-guard.js';
import type { ModelStore } from './model-store.js';
import { plan, stillNeeded, type CurrentState, type DesiredVersion, type Step } from './planner.js';
import { RefusalLimiter } from './refused-messages.js';
import { RolloutState, type ActiveDesired, type Blocked, type ServingSet } from './rollout-state.js';
import { cleanStagingAtStart, discardAbandonedStaging, discardStaging } from './staging-cleanup.js';
import { TrustChain } from './trust-chain.js';
import type { TrustStore } from './trust-store.js';

export interface RolloutOptions {
  config: AgentConfig;
  connection: MqttConnection | undefined;
  trust: TrustStore;
  /** What the rollout does, for report-projection.ts (and anyone else) to follow. */
  events: RolloutEvents;
  database: AgentDatabase;
  kv: KvStore;
  store: ModelStore;
  loader: VersionLoader;
  registry: ModelRegistry;
  /** Where shadow evaluations run (section 11); without it versions switch without one. */
  shadows?: ShadowTap | undefined;
  logger: Logger;
}

/**
 * Reconciles the device with its signed desired state (docs/protocol.md sections
 * 3 to 7): receives trust rotations and desired documents over MQTT, verifies
 * them, and drives the planner and executor until the device serves exactly
 * what is listed. What served before keeps serving through every failure.
 */
export class Rollout {
  private readonly source: DesiredSource;
  private readonly executor: StepExecutor;
  private readonly log: Logger;
  private readonly state: RolloutState;
  private active: ActiveDesired | undefined;
  private manifests = new Map<string, Manifest>();
  private blocked: Blocked[] = [];
  private wake: (() => void) | undefined;
  /** Set by kick(): something changed since the loop last looked (a wake-up that came while it was planning is not lost). */
  private kicked = false;
  private loop: Promise<void> | undefined;
  /** The step being applied, and how to abandon it when a newer document no longer needs it. */
  private inProgress: { step: Step; abort: AbortController } | undefined;
  /** Tries of each step (by its JSON) for the document in force; a newly accepted one starts afresh. */
  private readonly attempts = new Map<string, number>();
  private stopped = false;
  private unsubscribe: (() => void) | undefined;
  private unlistenRefused: (() => void) | undefined;
  /** Reports of desired and trust messages dropped for their size, rate limited. */
  private readonly refusals = new RefusalLimiter();
  private readonly trustChain: TrustChain;
  /** A desired document came while the trust chain was being walked: verify it when the walk ends. */
  private evaluationDeferred = false;
  /** A full disk (NO_SPACE): the document is reported `failed` until a step or an acceptance goes through. */
  private waiting = false;
  /** Accepting a document found no room: evaluated again after this timer, with capped backoff. */
  private evaluateRetry: { timer: NodeJS.Timeout; tries: number } | undefined;
  /** Evaluates again when a fallback's wait ends (deferFallback). */
  private fallbackTimer: NodeJS.Timeout | undefined;

  constructor(private readonly o: RolloutOptions) {
    this.log = o.logger;
    this.state = new RolloutState(o.kv, o.logger);
    this.source = new DesiredSource(o.config.groups);
    this.executor = new StepExecutor({
      config: o.config.rollout,
      topicRoot: this.topicRoot,
      store: o.store,
      loader: o.loader,
      registry: o.registry,
      shadows: o.shadows,
      events: o.events,
      database: o.database,
      state: this.state,
      logger: o.logger,
      client: () => (o.connection ? o.connection.client : undefined),
      verifyManifest: (envelope, name, version) => this.checkManifest(envelope, name, version, this.active?.acceptedAt ?? Date.now()),
      verifyManifestIgnoringExpiry: (envelope, name, version) => this.checkManifest(envelope, name, version, 0),
      onServingChanged: () => this.saveServing(),
    });
    this.trustChain = new TrustChain({ store: o.trust, events: o.events, topicRoot: this.topicRoot, logger: o.logger, onWalked: (accepted) => this.onTrustWalked(accepted) });
  }

  private get topicRoot(): string {
    return this.o.config.mqtt?.topicRoot ?? 'edgefleet';
  }

  async start(): Promise<void> {
    await this.o.store.init();
    this.blocked = this.state.blocked();
    await this.restore();
    this.resume(this.state.active());
    await this.cleanStaging(() => cleanStagingAtStart(this.o.store, this.o.database, this.wantedArtifacts(), this.log));
    this.trustChain.start();
    const conn = this.o.connection;
    if (conn) {
      this.unsubscribe = conn.onMessage((topic, payload) => void this.onMessage(topic, payload));
      this.unlistenRefused = conn.onRefused((packet) => this.onRefused(packet));
      const { deviceId, groups } = this.o.config;
      const list = [topics.trustVersions(this.topicRoot), topics.trust(this.topicRoot), topics.device(this.topicRoot, deviceId, 'desired'), ...groups.map((g) => topics.groupDesired(this.topicRoot, g))];
      // Not awaited: without a broker the SUBSCRIBE waits for the connection, and serving
      // must not. The retained documents arrive whenever the broker does.
      conn.subscribe(list).then(
        () => this.log.debug({ topics: list }, 'subscribed to trust and desired state'),
        (err: unknown) => {
          if (!this.stopped) this.log.error({ topics: list, err: errorMessage(err) }, 'could not subscribe to trust and desired state; no rollout reaches this device');
        },
      );
    }
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.evaluateRetry?.timer);
    clearTimeout(this.fallbackTimer);
    this.unsubscribe?.();
    this.unlistenRefused?.();
    await this.trustChain.stop();
    this.executor.stop();
    this.kick();
    await this.loop;
  }

  /**
   * Picks up the document being applied before the restart. Under a rotated
   * trust its manifests may no longer verify (a retired models key): then it
   * is dropped and reported, and the agent starts all the same.
   */
  private resume(active: ActiveDesired | undefined): void {
    if (!active) return;
    const origin = originOf(active);
    try {
      this.manifests = this.verifyAll(active.models, active.acceptedAt);
    } catch (err) {
      const error = `serial ${active.serial} no longer verifies under trust version ${this.o.trust.current.version}: ${errorMessage(err)}`;
      this.log.error({ err: error }, 'active desired state dropped');
      this.state.clearActive();
      this.o.events.emit({ type: 'desired.dropped', origin, serial: active.serial, error });
      return;
    }
    this.active = active;
    this.o.events.emit({ type: 'desired.resumed', origin, serial: active.serial });
  }

  /** Brings back what served before the restart; a version that was mid health window when the agent died is rolled back. */
  private async restore(): Promise<void> {
    const pending = this.state.activation();
    let serving = this.state.serving();
    if (pending) {
      const reason = `${pending.name} version ${pending.version} rolled back: the agent stopped during its health window`;
      this.block({ name: pending.name, version: pending.version, reason, status: 'failed' });
      serving = serving.filter((s) => !(s.name === pending.name && s.version === pending.version));
      if (pending.previous !== undefined && !serving.some((s) => s.name === pending.name && s.version === pending.previous)) {
        serving.push({ name: pending.name, version: pending.previous, isDefault: true });
      }
      for (const s of serving) if (s.name === pending.name) s.isDefault = s.version === pending.previous;
      this.o.events.emit({ type: 'rolled-back', name: pending.name, version: pending.version, reason });
      this.state.clearActivation();
    }
    const onDisk = await this.o.store.list();
    for (const s of serving.sort((a, b) => Number(a.isDefault) - Number(b.isDefault))) {
      const stored = onDisk.find((d) => d.name === s.name && d.version === s.version);
      if (!stored) continue;
      try {
        await this.executor.restore(s.name, s.version, stored.sha256, s.isDefault);
      } catch (err) {
        this.log.error({ model: s.name, version: s.version, err: errorMessage(err) }, 'could not restore a model version that served before the restart');
      }
    }
    this.saveServing();
  }

  private async onMessage(topic: string, payload: Buffer): Promise<void> {
    const parsed = parseTopic(this.topicRoot, topic);
    // Trust versions are subscribed first, so the retained chain is in hand before the head and the desired documents.
    if (parsed?.kind === 'trust-version') {
      this.trustChain.offerVersion(parsed.version, payload);
    } else if (parsed?.kind === 'trust') {
      this.trustChain.offerHead(payload);
    } else if (parsed?.kind === 'desired') {
      this.source.offer(parsed.target, payload);
      if (payload.length === 0) this.removed(parsed.target);
      // Verified under the trust the walk reaches, not refused under the one it is leaving.
      if (this.trustChain.walking) this.evaluationDeferred = true;
      else this.evaluate();
    }
  }

  /**
   * A zero-length retained message removed a target's document (section 10).
   * Its serial stays; its hash goes, so only a higher serial brings it back.
   * evaluate() then falls back to the next document in order, if any.
   */
  private removed(target: Target): void {
    const key = targetKey(target);
    this.state.forgetDesiredHash(key);
    const next = this.source.counting();
    this.log.info({ target: key, fallback: next?.key ?? null }, next ? 'desired document removed; the next one in order counts' : 'desired document removed; no other document for this device, what serves keeps serving');
  }

  /** A desired or trust message too big to read: the fleet hears why the device ignores it. */
  private onRefused({ topic, bytes, limit }: RefusedPacket): void {
    const kind = topic === undefined ? undefined : parseTopic(this.topicRoot, topic)?.kind;
    if (topic === undefined || (kind !== 'desired' && kind !== 'trust' && kind !== 'trust-version')) return;
    const report = this.refusals.offer({ topic, bytes, limit });
    if (report) this.o.events.emit({ type: 'message.refused', ...report });
  }

  /** A newer trust may let the counting document verify (or no longer). */
  private onTrustWalked(accepted: boolean): void {
    const deferred = this.evaluationDeferred;
    this.evaluationDeferred = false;
    if (accepted || deferred) this.evaluate();
  }

  private checkManifest(envelope: unknown, name: string, version: number, now: number): Manifest {
    return verifyManifest(this.o.trust.current, envelope, { name, version, now, arch: process.arch, agentVersion: agentVersion() });
  }

  /** Verifies every manifest of a document; an error names the manifest that failed. */
  private verifyAll(models: ActiveDesired['models'], now: number): Map<string, Manifest> {
    return new Map(
      models.map((m) => {
        try {
          return [`${m.name}@${m.version}`, this.checkManifest(m.manifest, m.name, m.version, now)];
        } catch (err) {
          if (!isProtocolError(err)) throw err;
          throw new RolloutError('MANIFEST', `manifest of ${m.name} version ${m.version}: ${err.message}`, { cause: err });
        }
      }),
    );
  }

  /** Verifies the document that counts now; accepted ones replace the active one. */
  private evaluate(): void {
    const candidate = this.source.counting();
    if (!candidate || this.deferFallback(candidate)) return;
    // The document last accepted from this target, byte for byte: a retained re-delivery changes
    // nothing, but after the document that counted instead was removed (section 10) it is the
    // fallback and comes back into force. Its serial is the one recorded: not a replay.
    const known = this.state.desiredHash(candidate.key) === candidate.hash;
    if (known && (this.active === undefined || this.active.key === candidate.key)) return;
    const origin: DesiredOrigin = candidate.target.group !== undefined ? { source: 'group', group: candidate.target.group } : { source: 'device' };
    let desired: Desired;
    let manifests: Map<string, Manifest>;
    const now = Date.now();
    try {
      const envelope = parseEnvelopeJson(candidate.payload);
      desired = verifyDesired(this.o.trust.current, envelope, {
        topicTarget: candidate.target,
        deviceId: this.o.config.deviceId,
        groups: this.o.config.groups,
        lastSerial: known ? undefined : this.state.desiredSerial(candidate.key),
        now,
      });
      manifests = this.verifyAll(desired.models, now);
    } catch (err) {
      this.reject(candidate, origin, err);
      return;
    }
    const active: ActiveDesired = { key: candidate.key, ...origin, serial: desired.serial, acceptedAt: now, models: desired.models.map((m) => ({ name: m.name, version: m.version, labels: [...m.labels], manifest: m.manifest, ...(m.shadow && { shadow: m.shadow }) })) };
    if (!this.acceptDurably(candidate.key, candidate.hash, active, manifests)) return;
    this.active = active;
    this.manifests = manifests;
    this.blocked = [];
    this.attempts.clear();
    const models = desired.models.map((m) => ({ name: m.name, version: m.version, labels: [...m.labels], sha256: manifests.get(`${m.name}@${m.version}`)?.artifact.sha256 ?? null }));
    const { registry } = this.o;
    const available = registry.names().flatMap((name) => registry.availableVersions(name).map((version) => ({ name, version })));
    this.o.events.emit({ type: 'desired.accepted', origin, serial: desired.serial, from: candidate.key, models, available });
    this.supersede(desired.serial);
    // Staging files the new document does not list go now, but for a pull still running: an
    // abandoned one's goes once it has stopped (run, below), a wanted one's is listed anyway.
    const running = this.inProgress?.step;
    void this.freeStaging(running?.kind === 'fetch' ? [running.sha256] : []);
    this.kick();
  }

  /** Section 10's fallback may have to wait (DesiredSource.fallbackWaitMs); evaluated again when the wait ends. */
  private deferFallback(candidate: Candidate): boolean {
    const waitMs = this.source.fallbackWaitMs(candidate, this.active?.key);
    if (waitMs === 0) {
      clearTimeout(this.fallbackTimer);
      this.fallbackTimer = undefined;
      return false;
    }
    if (this.fallbackTimer === undefined) {
      this.log.info({ target: candidate.key, inForce: this.active?.key, waitMs }, 'the document in force is absent from the broker; falling back to the next one unless it comes');
      this.fallbackTimer = setTimeout(() => {
        this.fallbackTimer = undefined;
        if (this.trustChain.walking) this.evaluationDeferred = true;
        else this.evaluate();
      }, waitMs);
    }
    return true;
  }

  /**
   * A newer document supersedes work in progress: a download or switch it no
   * longer needs is abandoned now, not after its timeouts, and the loop
   * re-plans. An abandoned pull's staging file and recorded blocks are
   * deleted once it has stopped: a later document bringing the version back
   * pulls it again (issue 12: abandoned staging files do not hold space).
   */
  private supersede(serial: number): void {
    const running = this.inProgress;
    if (!running || running.abort.signal.aborted || stillNeeded(running.step, this.desiredVersions())) return;
    const { step } = running;
    this.log.info({ step, serial }, 'step abandoned: the newer desired document no longer needs it');
    running.abort.abort(new RolloutError('SUPERSEDED', `${step.kind} of ${step.name} abandoned: desired serial ${serial} no longer needs it`));
  }

  /**
   * Records the document as accepted (serial, hash, active, nothing blocked)
   * before acting on it. Without room nothing changes: the document is
   * reported `failed` with why, and evaluated again later.
   */
  private acceptDurably(key: string, hash: string, active: ActiveDesired, manifests: ReadonlyMap<string, Manifest>): boolean {
    try {
      this.state.acceptDocument(key, active.serial, hash, active);
    } catch (err) {
      if (!(err instanceof NoSpaceError)) throw err;
      this.log.warn({ target: key, serial: active.serial, err: err.message }, 'desired state cannot be recorded; trying again later');
      this.o.events.emit({ type: 'desired.waiting', origin: originOf(active), serial: active.serial, error: err.message });
      void this.freeStaging([...manifests.values()].map((m) => m.artifact.sha256));
      const tries = (this.evaluateRetry?.tries ?? 0) + 1;
      clearTimeout(this.evaluateRetry?.timer);
      const cfg = this.o.config.rollout;
      const timer = setTimeout(() => this.evaluate(), Math.min(cfg.retryMaxMs, cfg.retryBaseMs * 2 ** (tries - 1)));
      this.evaluateRetry = { timer, tries };
      return false;
    }
    clearTimeout(this.evaluateRetry?.timer);
    this.evaluateRetry = undefined;
    this.waiting = false;
    return true;
  }

  /** The artifacts (sha256) of the document in force: their staging files are kept. */
  private wantedArtifacts(): Set<string> {
    return new Set([...this.manifests.values()].map((m) => m.artifact.sha256));
  }

  /**
   * Deletes the staging files and pull progress of artifacts the document in
   * force (and `alsoKeep`) does not list: after a supersede, and when the
   * filesystem is full.
   */
  private async freeStaging(alsoKeep: readonly string[] = []): Promise<void> {
    await this.cleanStaging(() => discardAbandonedStaging(this.o.store, this.o.database, new Set([...this.wantedArtifacts(), ...alsoKeep]), this.log));
  }

  /** Staging clean-up never stops the rollout: a failure is logged. */
  private async cleanStaging(clean: () => Promise<unknown>): Promise<void> {
    try {
      await clean();
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'could not delete abandoned staging files');
    }
  }

  private reject(candidate: Candidate, origin: DesiredOrigin, err: unknown): void {
    const message = errorMessage(err);
    let serial = isProtocolError(err) ? err.serial : undefined;
    if (serial === undefined) serial = peekSerial(candidate.payload);
    this.log.warn({ target: candidate.key, serial, err: message }, 'desired state rejected; nothing changes');
    this.o.events.emit({ type: 'desired.rejected', origin, serial: serial ?? 0, code: failureCode(err), error: message });
  }

  private block(entry: Blocked): void {
    this.blocked = [...this.blocked.filter((b) => !(b.name === entry.name && b.version === entry.version)), entry];
    this.state.setBlocked(this.blocked);
  }

  /** Model names the fleet manages: listed in the active document or serving from an earlier one. */
  private managedNames(): Set<string> {
    return new Set([...(this.active?.models.map((m) => m.name) ?? []), ...this.state.serving().map((s) => s.name)]);
  }

  /** The fleet-managed serving set, persisted so a restart serves it again before any network. */
  private saveServing(): void {
    const names = this.managedNames();
    const serving: ServingSet = [];
    for (const name of names) {
      const def = this.o.registry.defaultOf(name);
      for (const s of this.o.registry.availableVersions(name)) serving.push({ name, version: s, isDefault: s === def });
    }
    this.state.setServing(serving);
  }

  private async current(): Promise<CurrentState> {
    const names = this.managedNames();
    const serving: CurrentState['serving'][number][] = [];
    const labels: Record<string, Record<string, number>> = {};
    for (const name of names) {
      const pinned = this.o.registry.pinnedDefault(name);
      for (const v of this.o.registry.availableVersions(name)) serving.push({ name, version: v, isDefault: pinned === v });
      const l = this.o.registry.labelsOf(name);
      if (Object.keys(l).length > 0) labels[name] = l;
    }
    return { serving, onDisk: await this.o.store.list(), blocked: this.blocked, labels, previous: this.state.previous() };
  }

  private desiredVersions(): DesiredVersion[] {
    return (this.active?.models ?? []).map((m) => ({ name: m.name, version: m.version, labels: m.labels, sha256: this.manifests.get(`${m.name}@${m.version}`)?.artifact.sha256 ?? '', shadow: m.shadow }));
  }

  /** Plan → run the first step → plan again, until nothing is left; retryable failures back off. */
  /** Wakes the loop; if it is busy planning, it plans again instead of going to sleep on what it read before. */
  private kick(): void {
    this.kicked = true;
    this.wake?.();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      this.kicked = false;
      const active = this.active;
      const steps = active ? plan(this.desiredVersions(), await this.current()) : [];
      const step = steps[0];
      if (!active || !step) {
        if (active) this.finish(active);
        // A document accepted while current() was awaited woke nobody: look again rather than sleep.
        if (this.kicked || this.stopped) continue;
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      const envelopes = new Map(active.models.map((m) => [`${m.name}@${m.version}`, m.manifest]));
      const abort = new AbortController();
      this.inProgress = { step, abort };
      try {
        await this.executor.run(step, envelopes, abort.signal);
        this.attempts.delete(JSON.stringify(step));
        if (this.waiting) {
          this.waiting = false;
          this.o.events.emit({ type: 'desired.resumed', origin: originOf(active), serial: active.serial });
        }
      } catch (err) {
        if (this.stopped) return;
        // Whatever else went wrong, the step is no longer wanted: neither a failure nor a retry.
        if (abort.signal.aborted && (step.kind === 'fetch' || step.kind === 'activate')) {
          this.o.events.emit({ type: 'step.superseded', step: step.kind, name: step.name, version: step.version, serial: this.active?.serial ?? active.serial });
          if (step.kind === 'fetch') await this.freeStaging();
        } else await this.onStepFailed(step, err);
      } finally {
        this.inProgress = undefined;
      }
    }
  }

  private async onStepFailed(step: Step, err: unknown): Promise<void> {
    const { attempts } = this;
    const outcome = classify(err);
    const id = JSON.stringify(step);
    const n = (attempts.get(id) ?? 0) + 1;
    attempts.set(id, n);
    const version = 'version' in step ? step.version : undefined;
    this.log.warn({ step, attempt: n, err: outcome.message }, 'rollout step failed');
    const cfg = this.o.config.rollout;
    const retrying = outcome.retryable && (outcome.untilFixed || n < cfg.maxAttempts);
    this.o.events.emit({ type: 'step.failed', name: step.name, version, outcome, attempt: n, maxAttempts: cfg.maxAttempts, retrying });
    if (outcome.untilFixed && this.active) {
      this.waiting = true;
      this.o.events.emit({ type: 'desired.waiting', origin: originOf(this.active), serial: this.active.serial, error: outcome.message });
    }
    if (outcome.code === 'NO_SPACE') await this.freeStaging();
    // A pull that failed for good will not be resumed.
    if (!outcome.retryable && step.kind === 'fetch') await this.cleanStaging(() => discardStaging(this.o.store, this.o.database, step.sha256, this.log));
    if (retrying) {
      const delay = Math.min(cfg.retryMaxMs, cfg.retryBaseMs * 2 ** (n - 1));
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      return;
    }
    attempts.delete(id);
    if (version === undefined) return;
    this.block({ name: step.name, version, reason: outcome.message, status: outcome.status });
  }

  private finish(active: ActiveDesired): void {
    this.waiting = false;
    const worst = this.blocked.find((b) => b.status === 'rejected') ?? this.blocked[0];
    const settled = worst ? { status: worst.status, error: worst.reason } : { status: 'applied' as const, error: null };
    this.o.events.emit({ type: 'desired.settled', origin: originOf(active), serial: active.serial, ...settled });
  }
}

function originOf(active: ActiveDesired): DesiredOrigin {
  return { source: active.source, ...(active.group && { group: active.group }) };
}

function parseEnvelopeJson(payload: Buffer): unknown {
  try {
    return JSON.parse(payload.toString('utf8'));
  } catch {
    // The parser's message would quote the sender's bytes into the retained state.
    throw new ProtocolError('MALFORMED', `desired document is not JSON (${payload.length} bytes); expected a DSSE envelope`);
  }
}

function peekSerial(payload: Buffer): number | undefined {
  try {
    const env = JSON.parse(payload.toString('utf8')) as { payload?: unknown };
    if (typeof env.payload !== 'string') return undefined;
    const doc = JSON.parse(Buffer.from(env.payload, 'base64').toString('utf8')) as { serial?: unknown };
    return typeof doc.serial === 'number' ? doc.serial : undefined;
  } catch {
    return undefined;
  }
}
