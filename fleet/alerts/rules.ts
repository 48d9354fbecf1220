/**
 * The alert rules file of `edgefleet collect --alerts FILE` (docs/alerts.md):
 * YAML or JSON naming the webhook receivers and the rules, each one of the
 * eight alerts the Prometheus rules also define (same names, labels and
 * default conditions), with its threshold and `for` editable and an
 * optional group or model scope. One schema gives the type, the checks and
 * the defaults; every problem is reported at once with its path.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { GROUP_RE, MODEL_NAME_RE } from '../../protocol/index.js';
import { formatPath } from '../../protocol/validate.js';
import { FailureError, errorMessage } from '../errors.js';

export const ALERT_NAMES = [
  'EdgefleetErrorRateHigh',
  'EdgefleetLatencyP99High',
  'EdgefleetGpuBusy',
  'EdgefleetDeviceOffline',
  'EdgefleetTemperatureHigh',
  'EdgefleetTelemetryDropped',
  'EdgefleetDesiredFailed',
  'EdgefleetRolloutHalted',
] as const;
export type AlertName = (typeof ALERT_NAMES)[number];

/** What each alert's condition compares, and its defaults (the shared contract's table). */
export interface AlertDefaults {
  /** The threshold's unit, or null for an alert without one. */
  unit: '%' | 'ms' | 'C' | null;
  threshold: number | null;
  forMs: number;
  /** How far back dropped points count (TelemetryDropped only). */
  windowMs: number | null;
  severity: string;
}

const MINUTE = 60_000;
export const ALERT_DEFAULTS: Readonly<Record<AlertName, AlertDefaults>> = {
  EdgefleetErrorRateHigh: { unit: '%', threshold: 1, forMs: 5 * MINUTE, windowMs: null, severity: 'warning' },
  EdgefleetLatencyP99High: { unit: 'ms', threshold: 500, forMs: 5 * MINUTE, windowMs: null, severity: 'warning' },
  EdgefleetGpuBusy: { unit: '%', threshold: 90, forMs: 5 * MINUTE, windowMs: null, severity: 'warning' },
  EdgefleetDeviceOffline: { unit: null, threshold: null, forMs: 5 * MINUTE, windowMs: null, severity: 'critical' },
  EdgefleetTemperatureHigh: { unit: 'C', threshold: 80, forMs: 5 * MINUTE, windowMs: null, severity: 'warning' },
  EdgefleetTelemetryDropped: { unit: null, threshold: null, forMs: 0, windowMs: 15 * MINUTE, severity: 'warning' },
  EdgefleetDesiredFailed: { unit: null, threshold: null, forMs: 0, windowMs: null, severity: 'critical' },
  EdgefleetRolloutHalted: { unit: null, threshold: null, forMs: 0, windowMs: null, severity: 'critical' },
};

export interface AlertRule {
  /** Stable identity of the rule: the alert and its scope (`EdgefleetErrorRateHigh group=pis`). */
  id: string;
  alert: AlertName;
  threshold: number | null;
  forMs: number;
  windowMs: number | null;
  severity: string;
  group: string | null;
  model: string | null;
}

export interface Receiver {
  name: string;
  url: string;
  /** Sent with every request (e.g. Authorization); never logged. */
  headers: Record<string, string>;
  timeoutMs: number;
}

export interface AlertRules {
  /** The dashboard's address as receivers should link to it (Alertmanager's externalURL); '' when not given. */
  externalURL: string;
  receivers: Receiver[];
  rules: AlertRule[];
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: MINUTE, h: 60 * MINUTE, d: 24 * 60 * MINUTE };
const DURATION_RE = /^(\d{1,9})(ms|s|m|h|d)$/;

/** `30s`, `5m`, `1h`, `0` as milliseconds; undefined when it is none of those. */
export function parseDuration(value: unknown): number | undefined {
  if (value === 0 || value === '0') return 0;
  const m = typeof value === 'string' ? DURATION_RE.exec(value) : null;
  return m ? Number(m[1]) * (DURATION_UNITS[m[2] as string] as number) : undefined;
}

const duration = z.unknown().transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is not a duration such as 30s, 5m, 1h` });
    return z.NEVER;
  }
  return ms;
});

const HEADER_NAME_RE = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

const receiverSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, "must be 1-64 letters, digits, '_', '.', '-'"),
  url: z.string().refine((u) => /^https?:\/\//.test(u) && URL.canParse(u), 'must be an http:// or https:// URL'),
  headers: z
    .record(z.string().regex(HEADER_NAME_RE, 'is not an HTTP header name'), z.string().refine((v) => !/[\r\n]/.test(v), 'must be one line'))
    .default({}),
  timeout: duration.default(10_000).refine((ms) => ms >= 100 && ms <= 5 * MINUTE, 'must be from 100ms to 5m'),
});

const ruleSchema = z.strictObject({
  alert: z.enum(ALERT_NAMES, { error: (issue) => `${JSON.stringify(issue.input)} is not one of ${ALERT_NAMES.join(', ')}` }),
  threshold: z.number({ error: (issue) => (issue.input === undefined ? 'is required' : 'must be a number') }).finite().min(0, 'must be 0 or more').optional(),
  for: duration.optional(),
  window: duration.optional(),
  severity: z.string().regex(/^[a-z]{1,32}$/, 'must be 1-32 lower-case letters, such as warning or critical').optional(),
  group: z.string().regex(GROUP_RE, "must be a group name: 1-64 letters, digits, '_', '.', '-'").optional(),
  model: z.string().regex(MODEL_NAME_RE, "must be a model name: 1-63 of a-z, 0-9, '_', '-'").optional(),
});

const fileSchema = z.strictObject({
  externalURL: z.string().refine((u) => /^https?:\/\//.test(u) && URL.canParse(u), 'must be an http:// or https:// URL').default(''),
  receivers: z.array(receiverSchema).default([]),
  rules: z.array(ruleSchema).min(1, 'must list at least one rule'),
});

type RuleInput = z.output<typeof ruleSchema>;

/** The checks that look at one rule as a whole, or at the file's lists together. */
function crossChecks(file: z.output<typeof fileSchema>): string[] {
  const problems: string[] = [];
  const names = new Set<string>();
  file.receivers.forEach((r, i) => {
    if (names.has(r.name)) problems.push(`receivers[${i}].name: "${r.name}" is named twice`);
    names.add(r.name);
  });
  const ids = new Map<string, number>();
  file.rules.forEach((r, i) => {
    const defaults = ALERT_DEFAULTS[r.alert];
    if (r.threshold !== undefined && defaults.threshold === null) problems.push(`rules[${i}].threshold: ${r.alert} has no threshold`);
    if (r.window !== undefined && defaults.windowMs === null) problems.push(`rules[${i}].window: only EdgefleetTelemetryDropped has a window`);
    if (r.window === 0) problems.push(`rules[${i}].window: must be more than 0`);
    const id = ruleId(r);
    const twin = ids.get(id);
    if (twin !== undefined) problems.push(`rules[${i}]: same alert and scope as rules[${twin}] (${id}); give one of them a group or model`);
    ids.set(id, i);
  });
  return problems;
}

function ruleId(r: Pick<RuleInput, 'alert' | 'group' | 'model'>): string {
  return [r.alert, ...(r.group === undefined ? [] : [`group=${r.group}`]), ...(r.model === undefined ? [] : [`model=${r.model}`])].join(' ');
}

function issueLine(issue: z.core.$ZodIssue): string {
  const where = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') return `${where}: unknown key(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  // Zod says "expected array, received undefined" for a missing key; say it plainly.
  if (issue.code === 'invalid_type' && issue.message.endsWith('received undefined')) return `${where}: is required`;
  return `${where}: ${issue.message}`;
}

/** The rules in `value` (a parsed YAML or JSON document), or an Error listing every problem, one per line. */
export function checkRules(value: unknown, source = 'alert rules'): AlertRules {
  const result = fileSchema.safeParse(value);
  const problems = result.success ? crossChecks(result.data) : result.error.issues.map(issueLine);
  if (!result.success || problems.length > 0) throw new FailureError(`${source} are invalid:\n  ${problems.join('\n  ')}`);
  const file = result.data;
  return {
    externalURL: file.externalURL.replace(/\/+$/, ''),
    receivers: file.receivers.map((r) => ({ name: r.name, url: r.url, headers: r.headers, timeoutMs: r.timeout })),
    rules: file.rules.map((r) => {
      const defaults = ALERT_DEFAULTS[r.alert];
      return {
        id: ruleId(r),
        alert: r.alert,
        threshold: defaults.threshold === null ? null : (r.threshold ?? defaults.threshold),
        forMs: r.for ?? defaults.forMs,
        windowMs: defaults.windowMs === null ? null : (r.window ?? defaults.windowMs),
        severity: r.severity ?? defaults.severity,
        group: r.group ?? null,
        model: r.model ?? null,
      };
    }),
  };
}

/** Parses rules text: JSON when it starts with `{`, YAML otherwise (YAML 1.2 reads JSON too, but its errors are less clear for it). */
export function parseRules(text: string, source = 'alert rules'): AlertRules {
  let value: unknown;
  try {
    value = text.trimStart().startsWith('{') ? JSON.parse(text) : parseYaml(text, { uniqueKeys: true, prettyErrors: true });
  } catch (err) {
    throw new FailureError(`${source} could not be read as YAML or JSON: ${errorMessage(err).split('\n')[0] ?? ''}`);
  }
  return checkRules(value, source);
}

export async function loadRules(path: string): Promise<AlertRules> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new FailureError(`cannot read the alert rules ${path}: ${errorMessage(err)}`);
  }
  return parseRules(text, `alert rules ${path}`);
}
