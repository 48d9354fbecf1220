/**
 * Names, times and MQTT topics of the wire protocol (docs/protocol.md sections 1, 3, 5-7).
 */
import { z } from 'zod';
import { ProtocolError } from './errors.js';

export const DEVICE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
export const GROUP_RE = DEVICE_ID_RE;
export const MODEL_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
/** Version labels ("stable", "canary"), whether the desired state or the agent's config sets them. */
export const LABEL_RE = DEVICE_ID_RE;
/** Topic roots may have several levels (`acme/edgefleet`) but no wildcards, NULs or empty levels. */
export const TOPIC_ROOT_RE = /^[^/+#\0]+(?:\/[^/+#\0]+)*$/;
export const SHA256_HEX_RE = /^[0-9a-f]{64}$/;
export const DEFAULT_TOPIC_ROOT = 'edgefleet';

const NAME_RULE = "1-64 characters from letters, digits, '_', '.', '-', starting with a letter or digit";

export const deviceIdSchema = z.string().regex(DEVICE_ID_RE, `device id must be ${NAME_RULE}`);
export const groupSchema = z.string().regex(GROUP_RE, `group must be ${NAME_RULE}`);
export const labelSchema = z.string().regex(LABEL_RE, `label must be ${NAME_RULE}`);
export const modelNameSchema = z
  .string()
  .regex(MODEL_NAME_RE, "model name must be 1-63 characters from a-z, 0-9, '_', '-', starting with a-z or 0-9");
export const modelVersionSchema = z
  .number()
  .int('model version must be an integer')
  .min(1, 'model version must be at least 1')
  .max(Number.MAX_SAFE_INTEGER, 'model version must be at most 2^53-1');
export const sha256HexSchema = z.string().regex(SHA256_HEX_RE, 'must be 64 lowercase hex digits (SHA-256)');

/*
 * RFC 3339 in UTC: `Z` (or `+00:00`, which many libraries emit for UTC), optional
 * fraction. Other offsets are refused: the contract says UTC, and a local offset
 * usually means a clock configured wrongly.
 */
const TIME_RE = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|\+00:00)$/;

/** Milliseconds since the epoch, or undefined when `text` is not an RFC 3339 UTC time. */
export function parseTime(text: string): number | undefined {
  const m = TIME_RE.exec(text);
  if (!m) return undefined;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const ms = Date.UTC(y, mo - 1, d, h, mi, s);
  const back = new Date(ms);
  // Date.UTC rolls 2026-02-30 over to March; a round trip catches impossible dates.
  if (back.getUTCFullYear() !== y || back.getUTCMonth() !== mo - 1 || back.getUTCDate() !== d) return undefined;
  if (h > 23 || mi > 59 || s > 59) return undefined;
  const fraction = (m[7] ?? '.').slice(1).padEnd(3, '0').slice(0, 3);
  return ms + Number(fraction);
}

export const timeSchema = z
  .string()
  .refine((s) => parseTime(s) !== undefined, 'must be an RFC 3339 UTC time such as 2026-11-21T08:00:00Z');

/** RFC 3339 UTC with millisecond precision, as `Date.toISOString` writes it. */
export function formatTime(time: Date | number = Date.now()): string {
  return new Date(time).toISOString();
}

/** `now` as milliseconds; accepts a Date or epoch milliseconds. */
export function toMillis(now: Date | number): number {
  return typeof now === 'number' ? now : now.getTime();
}

// ---- topics -------------------------------------------------------------

export type DeviceChannel = 'desired' | 'status' | 'state' | 'events' | 'telemetry';
export const DEVICE_CHANNELS: readonly DeviceChannel[] = ['desired', 'status', 'state', 'events', 'telemetry'];

export type Target = { device: string; group?: never } | { group: string; device?: never };

export type ParsedTopic =
  | { kind: 'trust' }
  /** `{root}/trust/{version}`: one version of the trust chain (section 3, revision 2). */
  | { kind: 'trust-version'; version: number }
  | { kind: 'block'; sha256: string; index: number }
  | { kind: 'desired'; target: Target }
  | { kind: 'status' | 'state' | 'events' | 'telemetry'; deviceId: string }
  /** `{root}/devices/{id}/telemetry/ack`: what a collector has stored (section 12, revision 2). */
  | { kind: 'telemetry-ack'; deviceId: string };

/** `root` when it matches TOPIC_ROOT_RE; a MALFORMED ProtocolError otherwise. */
export function checkTopicRoot(root: string): string {
  if (!TOPIC_ROOT_RE.test(root)) {
    throw new ProtocolError('MALFORMED', `topic root "${root}" must be non-empty levels without '+', '#' or empty parts`);
  }
  return root;
}

function checkName(value: string, re: RegExp, what: string): string {
  if (!re.test(value)) throw new ProtocolError('MALFORMED', `${what} "${value}" is not valid: ${NAME_RULE}`);
  return value;
}

export const topics = {
  trust: (root: string): string => `${checkTopicRoot(root)}/trust`,
  /** Where trust version `version` stays retained, so an offline device can walk the chain. */
  trustVersion(root: string, version: number): string {
    if (!Number.isSafeInteger(version) || version < 1) throw new ProtocolError('MALFORMED', `trust version ${version} must be an integer >= 1`);
    return `${checkTopicRoot(root)}/trust/${version}`;
  },
  /** Subscription filter for every retained trust version. */
  trustVersions: (root: string): string => `${checkTopicRoot(root)}/trust/+`,
  block(root: string, sha256: string, index: number): string {
    if (!SHA256_HEX_RE.test(sha256)) throw new ProtocolError('MALFORMED', 'artifact sha256 must be 64 lowercase hex digits');
    if (!Number.isSafeInteger(index) || index < 0) throw new ProtocolError('MALFORMED', `block index ${index} must be an integer >= 0`);
    return `${checkTopicRoot(root)}/artifacts/${sha256}/blocks/${index}`;
  },
  device: (root: string, deviceId: string, channel: DeviceChannel): string =>
    `${checkTopicRoot(root)}/devices/${checkName(deviceId, DEVICE_ID_RE, 'device id')}/${channel}`,
  groupDesired: (root: string, group: string): string =>
    `${checkTopicRoot(root)}/groups/${checkName(group, GROUP_RE, 'group')}/desired`,
  desired: (root: string, target: Target): string =>
    target.device !== undefined ? topics.device(root, target.device, 'desired') : topics.groupDesired(root, target.group),
  /** Where collectors acknowledge a device's stored telemetry (section 12, revision 2). */
  telemetryAck: (root: string, deviceId: string): string => `${topics.device(root, deviceId, 'telemetry')}/ack`,
  /** Subscription filter for one channel of every device, e.g. for the collector. */
  allDevices: (root: string, channel: DeviceChannel): string => `${checkTopicRoot(root)}/devices/+/${channel}`,
};

/** What kind of topic `topic` is under `root`, or undefined when it is none of ours. */
export function parseTopic(root: string, topic: string): ParsedTopic | undefined {
  const prefix = `${root}/`;
  if (!topic.startsWith(prefix)) return undefined;
  const parts = topic.slice(prefix.length).split('/');
  const [first, second, third, fourth] = parts;
  if (parts.length === 1 && first === 'trust') return { kind: 'trust' };
  if (parts.length === 2 && first === 'trust') {
    // Decimal as the publisher writes it: no sign, no leading zeros, so one version has one topic.
    if (!/^[1-9]\d*$/.test(second ?? '')) return undefined;
    const version = Number(second);
    return Number.isSafeInteger(version) ? { kind: 'trust-version', version } : undefined;
  }
  if (parts.length === 4 && first === 'artifacts' && third === 'blocks') {
    if (second === undefined || !SHA256_HEX_RE.test(second) || !/^(0|[1-9]\d*)$/.test(fourth ?? '')) return undefined;
    const index = Number(fourth);
    return Number.isSafeInteger(index) ? { kind: 'block', sha256: second, index } : undefined;
  }
  if (parts.length === 4 && first === 'devices' && third === 'telemetry' && fourth === 'ack') {
    return second !== undefined && DEVICE_ID_RE.test(second) ? { kind: 'telemetry-ack', deviceId: second } : undefined;
  }
  if (parts.length !== 3 || second === undefined) return undefined;
  if (first === 'groups' && third === 'desired' && GROUP_RE.test(second)) {
    return { kind: 'desired', target: { group: second } };
  }
  if (first !== 'devices' || !DEVICE_ID_RE.test(second)) return undefined;
  const channel = third ?? '';
  switch (channel) {
    case 'desired':
      return { kind: 'desired', target: { device: second } };
    case 'status':
    case 'state':
    case 'events':
    case 'telemetry':
      return { kind: channel, deviceId: second };
    default:
      return undefined;
  }
}
