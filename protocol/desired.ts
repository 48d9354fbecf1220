/**
 * The desired-state document (docs/protocol.md section 6), signed by the `rollout`
 * role and published retained on a device's or a group's `desired` topic.
 */
import { z } from 'zod';
import { envelopeSchema } from './dsse.js';
import { ProtocolError } from './errors.js';
import { deviceIdSchema, groupSchema, labelSchema, modelNameSchema, modelVersionSchema, parseTime, timeSchema, toMillis } from './names.js';
import type { Target } from './names.js';
import { PAYLOAD_TYPES, requireUnexpiredTrust, verifyRoleEnvelope } from './trust.js';
import type { Trust } from './trust.js';
import { parsePayload } from './validate.js';

export const targetSchema = z
  .strictObject({ device: deviceIdSchema.optional(), group: groupSchema.optional() })
  .refine((t) => (t.device === undefined) !== (t.group === undefined), 'target must be {"device": id} or {"group": name}')
  .transform((t): Target => (t.device !== undefined ? { device: t.device } : { group: t.group ?? '' }));

const tolerance = (what: string) => z.number(`${what} must be a number`).min(0, `${what} must be >= 0`).max(1e9, `${what} must be <= 1e9`);

/**
 * Shadow evaluation before a switch (docs/protocol.md section 11). Every field
 * has a default (SHADOW_DEFAULTS, documented in docs/rollout.md), so
 * `"shadow": {}` means "shadow with the defaults". Unknown keys are refused:
 * a misspelt `minSample` must not silently become the default.
 */
export const SHADOW_DEFAULTS = {
  sampleRate: 0.1,
  minSamples: 200,
  maxDurationS: 900,
  compare: 'argmax',
  atol: 0.0001,
  rtol: 0.001,
  minAgreement: 0.98,
  onTimeout: 'reject',
} as const;

export const shadowSchema = z.strictObject({
  sampleRate: z
    .number('sampleRate must be a number')
    .gt(0, 'sampleRate must be above 0 (a share of live requests, at most 1)')
    .max(1, 'sampleRate must be at most 1')
    .default(SHADOW_DEFAULTS.sampleRate),
  minSamples: z.number().int('minSamples must be an integer').min(1, 'minSamples must be >= 1').max(1_000_000, 'minSamples must be <= 1000000').default(SHADOW_DEFAULTS.minSamples),
  maxDurationS: z.number().gt(0, 'maxDurationS must be above 0').max(7 * 86_400, 'maxDurationS must be at most 7 days (604800)').default(SHADOW_DEFAULTS.maxDurationS),
  compare: z.enum(['argmax', 'allclose'], 'compare must be "argmax" or "allclose"').default(SHADOW_DEFAULTS.compare),
  atol: tolerance('atol').default(SHADOW_DEFAULTS.atol),
  rtol: tolerance('rtol').default(SHADOW_DEFAULTS.rtol),
  minAgreement: z.number().min(0, 'minAgreement must be between 0 and 1').max(1, 'minAgreement must be between 0 and 1').default(SHADOW_DEFAULTS.minAgreement),
  onTimeout: z.enum(['activate', 'reject'], 'onTimeout must be "activate" or "reject"').default(SHADOW_DEFAULTS.onTimeout),
});
export type Shadow = z.infer<typeof shadowSchema>;

const desiredModelSchema = z.object({
  name: modelNameSchema,
  version: modelVersionSchema,
  labels: z.array(labelSchema).default([]),
  // Shape only here: the manifest is verified on its own with verifyManifest.
  manifest: envelopeSchema,
  // Revision 2, section 11; absent in revision-1 documents.
  shadow: shadowSchema.optional(),
});
export type DesiredModel = z.infer<typeof desiredModelSchema>;

export const desiredSchema = z
  .object({
    schema: z.literal(1, 'schema must be 1'),
    target: targetSchema,
    serial: z.number().int('serial must be an integer').min(0, 'serial must be >= 0').max(Number.MAX_SAFE_INTEGER),
    issuedAt: timeSchema,
    expiresAt: timeSchema,
    models: z.array(desiredModelSchema),
  })
  .superRefine((d, ctx) => {
    const issued = parseTime(d.issuedAt);
    const expires = parseTime(d.expiresAt);
    if (issued !== undefined && expires !== undefined && expires <= issued) {
      ctx.addIssue({ code: 'custom', path: ['expiresAt'], message: 'must be after issuedAt' });
    }
    const versions = new Set<string>();
    const labels = new Map<string, number>();
    d.models.forEach((m, i) => {
      const key = `${m.name}@${m.version}`;
      if (versions.has(key)) ctx.addIssue({ code: 'custom', path: ['models', i], message: `${m.name} version ${m.version} is listed twice` });
      versions.add(key);
      for (const label of m.labels) {
        const other = labels.get(`${m.name}/${label}`);
        if (other !== undefined && other !== m.version) {
          ctx.addIssue({ code: 'custom', path: ['models', i, 'labels'], message: `label "${label}" already names ${m.name} version ${other}` });
        }
        labels.set(`${m.name}/${label}`, m.version);
      }
    });
  });
export type Desired = z.infer<typeof desiredSchema>;

export interface DesiredContext {
  /** The target of the topic the document came on (see parseTopic). */
  topicTarget: Target;
  deviceId: string;
  /** This device's configured groups. */
  groups: readonly string[];
  /** Serial last applied from this target; undefined when none was. */
  lastSerial: number | undefined;
  now: Date | number;
}

export function describeTarget(target: Target): string {
  return target.device !== undefined ? `device "${target.device}"` : `group "${target.group}"`;
}

function sameTarget(a: Target, b: Target): boolean {
  return a.device !== undefined ? a.device === b.device : a.group === b.group && b.device === undefined;
}

/** Signature (role `rollout`), schema, target, serial and expiry of a desired-state envelope. */
export function verifyDesired(trust: Trust, envelope: unknown, ctx: DesiredContext): Desired {
  requireUnexpiredTrust(trust, ctx.now);
  const bytes = verifyRoleEnvelope(trust, 'rollout', envelope, PAYLOAD_TYPES.desired);
  const desired = parsePayload(desiredSchema, bytes, 'desired state');
  const { target, serial } = desired;
  const reject = (code: 'WRONG_TARGET' | 'REPLAY' | 'EXPIRED', message: string): ProtocolError =>
    new ProtocolError(code, message, { serial });
  if (!sameTarget(target, ctx.topicTarget)) {
    throw reject('WRONG_TARGET', `document targets ${describeTarget(target)} but came on the topic of ${describeTarget(ctx.topicTarget)}`);
  }
  const mine = target.device !== undefined ? target.device === ctx.deviceId : ctx.groups.includes(target.group);
  if (!mine) {
    throw reject('WRONG_TARGET', `document targets ${describeTarget(target)}, not device "${ctx.deviceId}" or its groups [${ctx.groups.join(', ')}]`);
  }
  if (ctx.lastSerial !== undefined && serial <= ctx.lastSerial) {
    throw reject('REPLAY', `serial ${serial} from ${describeTarget(target)} is not above ${ctx.lastSerial}, the last one applied; publish with a higher serial`);
  }
  if (toMillis(ctx.now) >= (parseTime(desired.expiresAt) ?? 0)) {
    throw reject('EXPIRED', `desired state serial ${serial} for ${describeTarget(target)} expired at ${desired.expiresAt}; publish it again with a later expiresAt`);
  }
  return desired;
}
