/**
 * What a device publishes (docs/protocol.md section 7): status, reported state,
 * events and telemetry batches. The agent builds these types and the
 * collector parses them. Readers ignore unknown fields (objects strip them)
 * and unknown telemetry kinds, so devices can be newer than the collector.
 */
import { z } from 'zod';
import { deviceIdSchema, groupSchema, modelNameSchema, modelVersionSchema, sha256HexSchema, timeSchema } from './names.js';
import { parsePayload } from './validate.js';

export const statusSchema = z.object({
  online: z.boolean(),
  // Absent in the MQTT last will, which is fixed when the connection opens.
  ts: timeSchema.optional(),
});
export type Status = z.infer<typeof statusSchema>;

export const DESIRED_STATUSES = ['applying', 'applied', 'failed', 'rejected'] as const;
export type DesiredStatus = (typeof DESIRED_STATUSES)[number];

export const MODEL_STATES = [
  'pending', 'downloading', 'verifying', 'loading', 'serving', 'failed', 'rejected', 'rolled_back',
  // Section 11 (revision 2): loaded beside the serving version, compared on live requests before a switch.
  'shadowing',
] as const;
export type ModelState = (typeof MODEL_STATES)[number];

const count = z.number().int().min(0);

export const reportedStateSchema = z.object({
  schema: z.literal(1, 'schema must be 1'),
  device: deviceIdSchema,
  groups: z.array(groupSchema),
  ts: timeSchema,
  // null until a desired document has been received.
  desired: z
    .object({
      source: z.enum(['device', 'group']),
      /** Which group's document counts, when source is "group". */
      group: groupSchema.optional(),
      serial: count,
      status: z.enum(DESIRED_STATUSES),
      error: z.string().nullable(),
    })
    .nullable(),
  models: z.array(
    z.object({
      name: modelNameSchema,
      version: modelVersionSchema,
      state: z.enum(MODEL_STATES),
      labels: z.array(z.string()),
      executionProvider: z.string().nullable(),
      sha256: sha256HexSchema.nullable(),
      progress: z.number().min(0).max(1),
      error: z.string().nullable(),
    }),
  ),
  agent: z.object({
    version: z.string(),
    arch: z.string(),
    startedAt: timeSchema,
    executionProviders: z.object({
      available: z.array(z.string()),
      unavailable: z.record(z.string(), z.string()),
    }),
  }),
  /**
   * The trust in force and the last problem with trust: a rotation refused, a
   * broken link in the chain of `{root}/trust/{version}`, a version that skips
   * ahead with nothing to walk. Added beside revision 2 of the contract, so
   * optional: older devices do not send it, older readers drop it.
   */
  trust: z
    .object({
      version: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
      expiresAt: timeSchema,
      // null while no problem has been seen since the last accepted version (or the start).
      error: z.string().nullable(),
    })
    .optional(),
});
export type ReportedState = z.infer<typeof reportedStateSchema>;
export type ReportedModel = ReportedState['models'][number];
export type ReportedTrust = NonNullable<ReportedState['trust']>;

export const EVENT_TYPES = [
  'desired.received', 'desired.rejected', 'download.started', 'download.completed', 'verify.failed',
  'selftest.failed', 'activated', 'rolled_back', 'unloaded', 'trust.updated', 'trust.rejected',
  // Not in PROTOCOL.md: an oversized message on a desired, group or trust topic the device dropped unparsed (MQTT 3.1.1).
  'message.refused',
  // Section 11's evaluation began, and its verdict (docs/rollout.md#shadow-evaluation).
  'shadow.started', 'shadow.completed',
] as const;
/** Known event types; readers accept others too. */
export type KnownEventType = (typeof EVENT_TYPES)[number];

export const eventSchema = z.object({
  ts: timeSchema,
  type: z.string().min(1),
  model: modelNameSchema.optional(),
  version: modelVersionSchema.optional(),
  detail: z.string().optional(),
});
export type DeviceEvent = z.infer<typeof eventSchema> & { type: KnownEventType | (string & {}) };

const pointBase = { seq: count.max(Number.MAX_SAFE_INTEGER), ts: timeSchema };
const nonNegative = z.number().min(0);

export const inferencePointSchema = z.object({
  ...pointBase,
  kind: z.literal('inference'),
  model: modelNameSchema,
  version: modelVersionSchema,
  intervalS: z.number().positive(),
  count,
  errors: count,
  // null when count is 0: no latency to report.
  latencyMs: z
    .object({ p50: nonNegative, p90: nonNegative, p99: nonNegative, max: nonNegative, mean: nonNegative })
    .nullable(),
});
export type InferencePoint = z.infer<typeof inferencePointSchema>;

const gpuSchema = z.object({
  name: z.string(),
  utilPct: nonNegative.nullable().optional(),
  memUsedBytes: count.nullable().optional(),
  memTotalBytes: count.nullable().optional(),
  tempC: z.number().nullable().optional(),
});

export const healthPointSchema = z.object({
  ...pointBase,
  kind: z.literal('health'),
  cpuPct: nonNegative,
  load1: nonNegative,
  memUsedBytes: count,
  memTotalBytes: count,
  // null on boards without a readable temperature sensor.
  tempC: z.number().nullable(),
  diskFreeBytes: count,
  rssBytes: count,
  uptimeS: nonNegative,
  gpus: z.array(gpuSchema),
  // Section 13 (revision 2): points waiting in the device's buffer.
  outboxRows: count.optional(),
  outboxBytes: count.optional(),
});
export type HealthPoint = z.infer<typeof healthPointSchema>;

/**
 * Section 13 (revision 2): points the device had to drop (outbox bound);
 * `oldestSeq`..`newestSeq` are the seqs lost. Agents before revision 2 wrote
 * `fromSeq`/`toSeq` and no reason; those read back under the new names.
 */
export const droppedPointSchema = z.preprocess(
  (value) => {
    if (typeof value !== 'object' || value === null) return value;
    const v = value as Record<string, unknown>;
    return { ...v, oldestSeq: v.oldestSeq ?? v.fromSeq, newestSeq: v.newestSeq ?? v.toSeq, reason: v.reason ?? 'buffer full' };
  },
  z
    .object({
      ...pointBase,
      kind: z.literal('dropped'),
      count,
      oldestSeq: count.max(Number.MAX_SAFE_INTEGER),
      newestSeq: count.max(Number.MAX_SAFE_INTEGER),
      reason: z.string().max(200),
    })
    .refine((p) => p.oldestSeq <= p.newestSeq, { message: 'oldestSeq must not be above newestSeq', path: ['oldestSeq'] }),
);
export type DroppedPoint = z.infer<typeof droppedPointSchema>;

/**
 * Section 11 (revision 2): a shadow evaluation's figures so far, every interval
 * while it runs and once at its verdict. Counts and latencies cover the whole
 * evaluation, not the interval; `agreement` is null before the first sample.
 */
export const shadowPointSchema = z.object({
  ...pointBase,
  kind: z.literal('shadow'),
  model: modelNameSchema,
  version: modelVersionSchema,
  baseVersion: modelVersionSchema,
  samples: count,
  agreed: count,
  agreement: z.number().min(0).max(1).nullable(),
  // null before the first comparison whose outputs had numbers to subtract.
  maxAbsDiff: nonNegative.nullable(),
  latencyMs: z.object({ p50: nonNegative, p99: nonNegative }).nullable(),
  baseLatencyMs: z.object({ p50: nonNegative, p99: nonNegative }).nullable(),
  verdict: z.enum(['activated', 'rejected']).nullable(),
});
export type ShadowPoint = z.infer<typeof shadowPointSchema>;

export type TelemetryPoint = InferencePoint | HealthPoint | DroppedPoint | ShadowPoint;
const KNOWN_KINDS: ReadonlySet<string> = new Set(['inference', 'health', 'dropped', 'shadow']);
const knownPointSchema = z.union([inferencePointSchema, healthPointSchema, droppedPointSchema, shadowPointSchema]);

/** A known point, or null for a point of an unknown kind (skipped by readers). */
const pointSchema = z.unknown().transform((value, ctx): TelemetryPoint | null => {
  const kind = typeof value === 'object' && value !== null ? (value as { kind?: unknown }).kind : undefined;
  if (typeof kind === 'string' && !KNOWN_KINDS.has(kind)) return null;
  const schema = kind === 'inference' ? inferencePointSchema : kind === 'health' ? healthPointSchema : kind === 'dropped' ? droppedPointSchema : kind === 'shadow' ? shadowPointSchema : knownPointSchema;
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  // Re-raise with their paths, which zod prefixes with this point's position.
  for (const issue of result.error.issues) ctx.addIssue({ ...issue });
  return z.NEVER;
});

export const telemetryBatchSchema = z.object({
  schema: z.literal(1, 'schema must be 1'),
  device: deviceIdSchema,
  points: z.array(pointSchema).transform((points) => points.filter((p): p is TelemetryPoint => p !== null)),
});
export type TelemetryBatch = z.output<typeof telemetryBatchSchema>;

/**
 * Section 12 (revision 2): a collector's acknowledgement, retained on
 * `{root}/devices/{id}/telemetry/ack`: every seq at or below `upTo` is stored.
 */
export const telemetryAckSchema = z.object({
  schema: z.literal(1, 'schema must be 1'),
  device: deviceIdSchema,
  upTo: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
});
export type TelemetryAck = z.infer<typeof telemetryAckSchema>;
export const parseTelemetryAck = (bytes: Uint8Array | string): TelemetryAck => parsePayload(telemetryAckSchema, bytes, 'telemetry ack');

export const parseStatus = (bytes: Uint8Array | string): Status => parsePayload(statusSchema, bytes, 'status');
export const parseReportedState = (bytes: Uint8Array | string): ReportedState =>
  parsePayload(reportedStateSchema, bytes, 'reported state');
export const parseEvent = (bytes: Uint8Array | string): DeviceEvent => parsePayload(eventSchema, bytes, 'event');
export const parseTelemetryBatch = (bytes: Uint8Array | string): TelemetryBatch =>
  parsePayload(telemetryBatchSchema, bytes, 'telemetry batch');
