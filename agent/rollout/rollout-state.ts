import type { Logger } from 'pino';
import { z } from 'zod';
import { shadowSchema } from '../../protocol/desired.js';
import { errorMessage } from '../errors.js';
import type { KvStore } from '../store/database.js';
import { NoSpaceError } from '../store/no-space.js';

/*
 * The rollout's durable state, one schema per kv key. Key names and JSON
 * shapes are those earlier agents wrote, so a device upgrades in place. The
 * schemas check shape, not protocol rules: what was accepted once is not
 * refused on boot because a rule tightened since.
 *
 * A full filesystem (agent/store/no-space.ts) splits the writes in two.
 * Commits come before the agent acts on them (a document accepted, a switch
 * about to start): they throw NoSpaceError, and the act does not happen.
 * Records say what has already happened (the serving set, a switch that
 * ended, blocked versions): they may use the space reserve, and if even that
 * fails they are kept in memory, read from there, and written with the next
 * write that finds room, so nothing the agent did is undone by a full disk
 * while it runs.
 */

const name = z.string().min(1);
const version = z.number().int().min(1);
const serial = z.number().int().min(0);

const activeSchema = z.object({
  /** `device` or `group:{name}`: the target the serial belongs to. */
  key: z.string().min(1),
  source: z.enum(['device', 'group']),
  group: z.string().optional(),
  serial,
  acceptedAt: z.number(),
  // The manifest stays the signed envelope; it is verified again on every resume.
  models: z.array(z.object({ name, version, labels: z.array(z.string()), manifest: z.unknown(), shadow: shadowSchema.optional() })),
});

const servingSchema = z.array(z.object({ name, version, isDefault: z.boolean() }));

const blockedSchema = z.array(z.object({ name, version, reason: z.string(), status: z.enum(['failed', 'rejected']) }));

const activationSchema = z.object({ name, version, previous: version.optional(), since: z.string() });

const previousSchema = z.record(z.string(), version);

/** The accepted desired document being applied; persisted so a restart resumes it offline. */
export type ActiveDesired = z.infer<typeof activeSchema>;
/** The fleet-managed serving set, so a restart serves it again before any network. */
export type ServingSet = z.infer<typeof servingSchema>;
/** Versions not to try again for the active document, and why. */
export type Blocked = z.infer<typeof blockedSchema>[number];
/** A version whose switch has not yet passed its health window; persisted to survive a crash. */
export type PendingActivation = z.infer<typeof activationSchema>;

const KEYS = {
  active: 'rollout.active',
  serving: 'rollout.serving',
  blocked: 'rollout.blocked',
  activation: 'rollout.activation',
  /** Per model name, the default version before the last successful switch. */
  previous: 'rollout.previous',
  desiredHash: (target: string) => `desired.hash.${target}`,
  desiredSerial: (target: string) => `desired.serial.${target}`,
} as const;

/** An unsaved record that deletes its key. */
const DELETED = Symbol('deleted');

export class RolloutState {
  /** Keys already reported as unreadable, so a bad value is logged once, not on every plan. */
  private readonly warned = new Set<string>();
  /** Records not yet written for lack of space, by key, in the order they were made. */
  private readonly unsaved = new Map<string, unknown>();

  constructor(
    private readonly kv: KvStore,
    private readonly logger: Logger,
  ) {}

  active(): ActiveDesired | undefined {
    return this.read(KEYS.active, activeSchema);
  }
  setActive(value: ActiveDesired): void {
    this.commit(() => this.kv.setJson(KEYS.active, value), [KEYS.active]);
  }
  clearActive(): void {
    this.record(KEYS.active, DELETED);
  }

  serving(): ServingSet {
    return this.read(KEYS.serving, servingSchema) ?? [];
  }
  setServing(value: ServingSet): void {
    this.record(KEYS.serving, value);
  }

  blocked(): Blocked[] {
    return this.read(KEYS.blocked, blockedSchema) ?? [];
  }
  setBlocked(value: readonly Blocked[]): void {
    this.record(KEYS.blocked, value);
  }

  activation(): PendingActivation | undefined {
    return this.read(KEYS.activation, activationSchema);
  }
  /** Written before the switch: without room for it (NoSpaceError) there is no switch. */
  setActivation(value: PendingActivation): void {
    this.commit(() => this.kv.setJson(KEYS.activation, value), [KEYS.activation]);
  }
  clearActivation(): void {
    this.record(KEYS.activation, DELETED);
  }

  previous(): Record<string, number> {
    return this.read(KEYS.previous, previousSchema) ?? {};
  }
  setPrevious(model: string, value: number): void {
    this.record(KEYS.previous, { ...this.previous(), [model]: value });
  }

  /** sha256 of the last document accepted from a target, so its retained re-delivery is a no-op. */
  desiredHash(target: string): string | undefined {
    return this.read(KEYS.desiredHash(target), z.string());
  }
  /**
   * A target's document was removed (section 10): forget its hash, keep its
   * serial, so the same document published again is a replay, not a re-delivery.
   */
  forgetDesiredHash(target: string): void {
    if (this.desiredHash(target) !== undefined) this.record(KEYS.desiredHash(target), DELETED);
  }
  /** The last serial accepted from a target; a document must be above it. */
  desiredSerial(target: string): number | undefined {
    return this.read(KEYS.desiredSerial(target), serial);
  }
  /** Records a document accepted from a target: its serial and its bytes' hash, together or not at all. */
  accept(target: string, acceptedSerial: number, hash: string): void {
    const keys = [KEYS.desiredSerial(target), KEYS.desiredHash(target)];
    this.commit(() => this.kv.transaction(() => this.writeAccepted(target, acceptedSerial, hash)), keys);
  }
  /**
   * Accepts a document: its serial and hash, and it as the active document
   * with nothing blocked, in one transaction. Without room (NoSpaceError)
   * nothing changes, so its re-delivery is evaluated again.
   */
  acceptDocument(target: string, acceptedSerial: number, hash: string, active: ActiveDesired): void {
    const keys = [KEYS.desiredSerial(target), KEYS.desiredHash(target), KEYS.active, KEYS.blocked];
    this.commit(
      () =>
        this.kv.transaction(() => {
          this.writeAccepted(target, acceptedSerial, hash);
          this.kv.setJson(KEYS.active, active);
          this.kv.setJson(KEYS.blocked, []);
        }),
      keys,
    );
  }

  /** Records kept in memory for lack of space, not yet written. */
  get unsavedRecords(): number {
    return this.unsaved.size;
  }

  private writeAccepted(target: string, acceptedSerial: number, hash: string): void {
    this.kv.setJson(KEYS.desiredSerial(target), acceptedSerial);
    this.kv.setJson(KEYS.desiredHash(target), hash);
  }

  /** A write the agent acts on only once it is durable: a full filesystem throws NoSpaceError. */
  private commit(write: () => void, keys: readonly string[]): void {
    this.flush();
    write();
    for (const key of keys) {
      this.unsaved.delete(key);
      this.warned.delete(key);
    }
  }

  /** A record of what has already happened: the space reserve, else memory until there is room. */
  private record(key: string, value: unknown): void {
    const clean = this.unsaved.size === 0;
    this.unsaved.delete(key);
    this.unsaved.set(key, value);
    this.warned.delete(key);
    const failure = this.flush();
    if (clean && failure) {
      this.logger.warn({ key, err: failure.message }, 'rollout state kept in memory until there is room to write it; a restart before then acts on the state last written');
    }
  }

  /** Writes the records kept in memory, oldest first, until one finds no room (returned). */
  private flush(): NoSpaceError | undefined {
    if (this.unsaved.size === 0) return undefined;
    const waiting = this.unsaved.size;
    for (const [key, value] of this.unsaved) {
      try {
        if (value === DELETED) this.kv.delete(key, { essential: true });
        else this.kv.setJson(key, value, { essential: true });
      } catch (err) {
        if (err instanceof NoSpaceError) return err;
        throw err;
      }
      this.unsaved.delete(key);
    }
    if (waiting > 1) this.logger.info({ records: waiting }, 'rollout state kept in memory for lack of space is written');
    return undefined;
  }

  /** A value that is not JSON or fails its schema counts as absent: the agent boots and re-plans. */
  private read<S extends z.ZodType>(key: string, schema: S): z.infer<S> | undefined {
    let raw: unknown;
    try {
      raw = this.unsaved.has(key) ? this.unsaved.get(key) : this.kv.getJson(key);
      if (raw === DELETED) return undefined;
    } catch (err) {
      this.warnOnce(key, errorMessage(err));
      return undefined;
    }
    if (raw === undefined) return undefined;
    const parsed = schema.safeParse(raw);
    if (parsed.success) return parsed.data;
    this.warnOnce(key, parsed.error.issues.map((i) => `${i.path.join('.') || '(value)'}: ${i.message}`).join('; '));
    return undefined;
  }

  private warnOnce(key: string, problem: string): void {
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.logger.warn({ key, problem }, 'stored rollout state does not fit its schema; treated as absent');
  }
}
