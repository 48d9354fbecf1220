/**
 * What the collector does to a device's message before any store sees it:
 * text normalised once (the same for both stores), clocks checked against
 * arrival, and per-device quotas. A device is not trusted: whatever it sends,
 * the collector must keep storing everyone else's data, and whatever it drops
 * it counts.
 */

const REPLACEMENT = '\uFFFD';
// NUL (PostgreSQL text cannot hold it) and UTF-16 surrogates without their pair (not valid UTF-8).
// eslint-disable-next-line no-control-regex -- NUL is exactly what this looks for
const BAD_TEXT = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * Replaces NUL and unpaired surrogates with U+FFFD in every string (keys
 * included) of a parsed JSON value. Returns the value and how many
 * characters were replaced; an unchanged value is returned as is.
 */
export function normaliseText(value: unknown): { value: unknown; replaced: number } {
  let replaced = 0;
  const fix = (s: string): string => {
    BAD_TEXT.lastIndex = 0;
    if (!BAD_TEXT.test(s)) return s;
    return s.replace(BAD_TEXT, () => {
      replaced++;
      return REPLACEMENT;
    });
  };
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return fix(v);
    if (Array.isArray(v)) return v.map(walk);
    if (typeof v === 'object' && v !== null) {
      const out: Record<string, unknown> = {};
      for (const [k, inner] of Object.entries(v)) out[fix(k)] = walk(inner);
      return out;
    }
    return v;
  };
  const out = walk(value);
  return { value: replaced === 0 ? value : out, replaced };
}

/**
 * Whether a store error is one retrying the same message cannot fix (the
 * message is quarantined and acknowledged) rather than a passing one
 * (database down, disk full, busy: the message stays unacknowledged and the
 * broker sends it again).
 */
export function isPermanentStoreError(err: unknown): boolean {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  if (typeof code !== 'string') return false;
  // PostgreSQL SQLSTATE: class 22 data exception (invalid text, out of range), 23 integrity constraint.
  if (/^2[23][0-9A-Z]{3}$/.test(code)) return true;
  // SQLite: the row itself is refused.
  return /^SQLITE_(CONSTRAINT|TOOBIG|MISMATCH|RANGE)/.test(code);
}

export interface QuotaLimits {
  /** Distinct model names one device may have inference points stored under. */
  maxModels: number;
  /** Messages one device may send per minute (all channels). */
  messagesPerMinute: number;
  /** Payload bytes one device may send per minute (all channels). */
  bytesPerMinute: number;
  /** Largest event payload stored, bytes. */
  maxEventBytes: number;
  /** Device times further than this from arrival are replaced with the arrival time. */
  maxSkewMs: number;
}

/**
 * Defaults sized from the agent's real rates with headroom (docs/collector.md):
 * a board sends about 8 telemetry batches a minute (inference points every
 * 10 s, health every 30 s; a few KiB), a state on every change and a few
 * events per rollout. After an outage it sends its whole buffer at once: at
 * most 32 MiB (telemetry.buffer.maxBytes) in batches of up to 256 KiB or 500
 * points, so 128 to 200 messages. 600 messages and 48 MiB a minute let that
 * catch-up through in one minute with room to spare; a device sending more
 * is not an agent behaving as configured by default.
 */
export const DEFAULT_QUOTAS: QuotaLimits = {
  maxModels: 64,
  messagesPerMinute: 600,
  bytesPerMinute: 48 * 1024 * 1024,
  maxEventBytes: 16 * 1024,
  maxSkewMs: 300_000,
};

interface Window {
  minute: number;
  messages: number;
  bytes: number;
}

/**
 * Per-device message and byte rates over fixed one-minute windows, and the
 * model names each device has used. Bounded: devices idle for a minute are
 * forgotten at the next window change.
 */
export class DeviceQuotas {
  private readonly windows = new Map<string, Window>();
  private readonly models = new Map<string, Set<string>>();
  private minute = 0;

  constructor(readonly limits: QuotaLimits) {}

  /** Counts a message; returns why it is over quota, or undefined when it is within. */
  admit(device: string, bytes: number, now = Date.now()): string | undefined {
    const minute = Math.floor(now / 60_000);
    if (minute !== this.minute) {
      for (const [d, w] of this.windows) if (w.minute < minute) this.windows.delete(d);
      this.minute = minute;
    }
    let w = this.windows.get(device);
    if (w === undefined) {
      w = { minute, messages: 0, bytes: 0 };
      this.windows.set(device, w);
    }
    w.messages++;
    w.bytes += bytes;
    if (w.messages > this.limits.messagesPerMinute) return `more than ${this.limits.messagesPerMinute} messages this minute`;
    if (w.bytes > this.limits.bytesPerMinute) return `more than ${this.limits.bytesPerMinute} bytes this minute`;
    return undefined;
  }

  /** Whether the device has its model names loaded (from the store, once). */
  knowsModels(device: string): boolean {
    return this.models.has(device);
  }

  setModels(device: string, names: Iterable<string>): void {
    this.models.set(device, new Set(names));
  }

  /** Whether a point under `model` may be stored: a name already used, or a new one within the limit. */
  admitModel(device: string, model: string): boolean {
    let names = this.models.get(device);
    if (names === undefined) {
      names = new Set();
      this.models.set(device, names);
    }
    if (names.has(model)) return true;
    if (names.size >= this.limits.maxModels) return false;
    names.add(model);
    return true;
  }
}

/** A device time as epoch ms, or the arrival time when it is further than `maxSkewMs` from it. */
export function arrivalClamped(deviceMs: number, arrivalMs: number, maxSkewMs: number): { ms: number; skewed: boolean } {
  if (Number.isFinite(deviceMs) && Math.abs(deviceMs - arrivalMs) <= maxSkewMs) return { ms: deviceMs, skewed: false };
  return { ms: arrivalMs, skewed: true };
}

/** Per-device counts of what was not stored as sent, added up between store writes. */
export interface DeviceCounts {
  quarantined: number;
  overQuota: number;
  clockSkewed: number;
}

export class CountBuffer {
  private pending = new Map<string, DeviceCounts>();

  add(device: string, what: keyof DeviceCounts, n = 1): void {
    let c = this.pending.get(device);
    if (c === undefined) {
      c = { quarantined: 0, overQuota: 0, clockSkewed: 0 };
      this.pending.set(device, c);
    }
    c[what] += n;
  }

  get size(): number {
    return this.pending.size;
  }

  /** Takes what was counted since the last call. */
  take(): Map<string, DeviceCounts> {
    const taken = this.pending;
    this.pending = new Map();
    return taken;
  }

  /** Puts counts back after a failed write, so none is lost. */
  restore(counts: Map<string, DeviceCounts>): void {
    for (const [device, c] of counts) {
      this.add(device, 'quarantined', c.quarantined);
      this.add(device, 'overQuota', c.overQuota);
      this.add(device, 'clockSkewed', c.clockSkewed);
    }
  }
}
