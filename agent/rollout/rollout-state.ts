import type { Logger } from 'pino';
import { z } from 'zod';
import { errorMessage } from '../errors.js';
import type { KvStore } from '../store/database.js';

/*
 * The rollout's durable state, one schema per kv key. Key names and JSON
 * shapes are those earlier agents wrote, so a device upgrades in place. The
 * schemas check shape, not protocol rules: what was accepted once is not
 * refused on boot because a rule tightened since.
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
  models: z.array(z.object({ name, version, labels: z.array(z.string()), manifest: z.unknown() })),
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

export class RolloutState {
  /** Keys already reported as unreadable, so a bad value is logged once, not on every plan. */
  private readonly warned = new Set<string>();

  constructor(
    private readonly kv: KvStore,
    private readonly logger: Logger,
  ) {}

  active(): ActiveDesired | undefined {
    return this.read(KEYS.active, activeSchema);
  }
  setActive(value: ActiveDesired): void {
    this.write(KEYS.active, value);
  }
  clearActive(): void {
    this.kv.delete(KEYS.active);
  }

  serving(): ServingSet {
    return this.read(KEYS.serving, servingSchema) ?? [];
  }
  setServing(value: ServingSet): void {
    this.write(KEYS.serving, value);
  }

  blocked(): Blocked[] {
    return this.read(KEYS.blocked, blockedSchema) ?? [];
  }
  setBlocked(value: readonly Blocked[]): void {
    this.write(KEYS.blocked, value);
  }

  activation(): PendingActivation | undefined {
    return this.read(KEYS.activation, activationSchema);
  }
  setActivation(value: PendingActivation): void {
    this.write(KEYS.activation, value);
  }
  clearActivation(): void {
    this.kv.delete(KEYS.activation);
  }

  previous(): Record<string, number> {
    return this.read(KEYS.previous, previousSchema) ?? {};
  }
  setPrevious(model: string, value: number): void {
    this.write(KEYS.previous, { ...this.previous(), [model]: value });
  }

  /** sha256 of the last document accepted from a target, so its retained re-delivery is a no-op. */
  desiredHash(target: string): string | undefined {
    return this.read(KEYS.desiredHash(target), z.string());
  }
  /** The last serial accepted from a target; a document must be above it. */
  desiredSerial(target: string): number | undefined {
    return this.read(KEYS.desiredSerial(target), serial);
  }
  /** Records a document accepted from a target: its serial and its bytes' hash. */
  accept(target: string, acceptedSerial: number, hash: string): void {
    this.write(KEYS.desiredSerial(target), acceptedSerial);
    this.write(KEYS.desiredHash(target), hash);
  }

  private write(key: string, value: unknown): void {
    this.kv.setJson(key, value);
    this.warned.delete(key);
  }

  /** A value that is not JSON or fails its schema counts as absent: the agent boots and re-plans. */
  private read<S extends z.ZodType>(key: string, schema: S): z.infer<S> | undefined {
    let raw: unknown;
    try {
      raw = this.kv.getJson(key);
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
