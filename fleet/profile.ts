/**
 * Profiles: the settings an operator would otherwise repeat on every command
 * (broker URL, TLS files, signing keys, store, topic root), named and kept in
 * one JSON file, as kubectl contexts and AWS CLI profiles are. A flag given on
 * the command line always wins over the profile.
 *
 * The file is `$EDGEFLEET_CONFIG`, else `$XDG_CONFIG_HOME/edgefleet/profiles.json`,
 * else `~/.config/edgefleet/profiles.json`. The profile is the one `--profile`
 * names, else `$EDGEFLEET_PROFILE`, else the file's `default`, else none.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { isBrokerUrl } from '../lib/broker.js';
import { checkTopicRoot, formatIssues } from '../protocol/index.js';
import { FailureError, UsageError, errorMessage } from './errors.js';

export const PROFILE_OPTIONS = { profile: { type: 'string' } } as const;

export const PROFILE_HELP = `  --profile NAME          take unset options from this profile (default: $EDGEFLEET_PROFILE,
                          else the profile file's "default"); see docs/operator-guide.md`;

const PROFILE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

const path = z.string().min(1, 'must be a file path');
const paths = z.array(path).min(1, 'must list at least one key file');

const topicRoot = z.string().superRefine((value, ctx) => {
  try {
    checkTopicRoot(value);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: errorMessage(err) });
  }
});

const settingsSchema = z.strictObject({
  broker: z.string().refine(isBrokerUrl, 'must be a URL such as mqtt://host:1883 or mqtts://host:8883').optional(),
  topicRoot: topicRoot.optional(),
  ca: path.optional(),
  clientCert: path.optional(),
  clientKey: path.optional(),
  username: z.string().min(1).optional(),
  passwordFile: path.optional(),
  mqttVersion: z.union([z.literal(4), z.literal(5)], 'must be 4 (MQTT 3.1.1) or 5 (MQTT 5)').optional(),
  signingKeys: z.strictObject({ models: paths.optional(), rollout: paths.optional() }).optional(),
  db: z.string().regex(/^(sqlite:|postgres(ql)?:\/\/)/, 'must be sqlite:PATH or postgres://...').optional(),
});

/** What a profile may set; paths in it are absolute once loaded. */
export type ProfileSettings = z.infer<typeof settingsSchema>;

const fileSchema = z.strictObject({
  default: z.string().optional(),
  profiles: z.record(z.string(), settingsSchema),
});

export interface Profile {
  /** null: no profile chosen (every setting comes from flags, the environment or defaults). */
  name: string | null;
  file: string;
  settings: ProfileSettings;
}

/** Where profiles are read from. */
export function profileFile(env: NodeJS.ProcessEnv = process.env): string {
  if (env.EDGEFLEET_CONFIG) return resolve(env.EDGEFLEET_CONFIG);
  const base = env.XDG_CONFIG_HOME ? resolve(env.XDG_CONFIG_HOME) : join(homedir(), '.config');
  return join(base, 'edgefleet', 'profiles.json');
}

/** How a setting is named in messages: the flag, or the profile's field. */
export function settingName(profile: Profile, flag: string, field: string): string {
  return profile.name === null ? `--${flag}` : `--${flag} (from "${field}" of profile "${profile.name}" in ${profile.file})`;
}

/**
 * The profile `--profile` (`flag`), `$EDGEFLEET_PROFILE` or the file's
 * `default` names. A named profile that does not exist is an error; with none
 * named, a missing file means no profile.
 */
export async function loadProfile(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<Profile> {
  const file = profileFile(env);
  const asked = flag ?? (env.EDGEFLEET_PROFILE || undefined);
  const how = flag !== undefined ? '--profile' : 'EDGEFLEET_PROFILE';
  if (asked !== undefined && !PROFILE_NAME_RE.test(asked)) throw new UsageError(`${how} "${asked}" is not a profile name (1-64 letters, digits, '_', '.', '-')`);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && asked === undefined) return { name: null, file, settings: {} };
    const why = code === 'ENOENT' ? 'no such file' : (code ?? errorMessage(err));
    const wanted = asked === undefined ? '' : ` for ${how} ${asked}`;
    throw new FailureError(`cannot read the profile file ${file}${wanted}: ${why} (set EDGEFLEET_CONFIG to use another file)`);
  }
  const parsed = parseProfileFile(text, file);
  const name = asked ?? parsed.default;
  if (name === undefined) return { name: null, file, settings: {} };
  const settings = parsed.profiles[name];
  if (settings === undefined) {
    const known = Object.keys(parsed.profiles);
    throw new UsageError(`${how} "${name}": ${file} has no such profile (${known.length > 0 ? `it has ${known.join(', ')}` : 'it has none'})`);
  }
  return { name, file, settings: absolute(settings, dirname(file)) };
}

/** The file's content, validated; every problem named with its field, in one error. */
export function parseProfileFile(text: string, file: string): z.infer<typeof fileSchema> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new FailureError(`profile file ${file} is not valid JSON: ${errorMessage(err)}`);
  }
  const result = fileSchema.safeParse(value);
  const problems = result.success ? [] : formatIssues(result.error.issues);
  // Checked apart from the schema, so it is reported together with any other problem.
  const { default: name, profiles } = (typeof value === 'object' && value !== null ? value : {}) as { default?: unknown; profiles?: unknown };
  const names = typeof profiles === 'object' && profiles !== null ? Object.keys(profiles) : [];
  for (const bad of names.filter((n) => !PROFILE_NAME_RE.test(n))) {
    problems.push(`profiles: "${bad}" is not a profile name (1-64 letters, digits, '_', '.', '-', starting with a letter or digit)`);
  }
  if (typeof name === 'string' && !names.includes(name)) problems.push(`default: "${name}" names no profile in "profiles"`);
  if (!result.success || problems.length > 0) throw new FailureError(`profile file ${file} is invalid: ${problems.join('; ')}`);
  return result.data;
}

/** Relative paths in a profile are relative to the file, not to wherever the command runs. */
function absolute(s: ProfileSettings, dir: string): ProfileSettings {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(dir, p));
  const out: ProfileSettings = { ...s };
  if (s.ca !== undefined) out.ca = abs(s.ca);
  if (s.clientCert !== undefined) out.clientCert = abs(s.clientCert);
  if (s.clientKey !== undefined) out.clientKey = abs(s.clientKey);
  if (s.passwordFile !== undefined) out.passwordFile = abs(s.passwordFile);
  if (s.signingKeys !== undefined) {
    const { models, rollout } = s.signingKeys;
    out.signingKeys = { ...(models && { models: models.map(abs) }), ...(rollout && { rollout: rollout.map(abs) }) };
  }
  if (s.db?.startsWith('sqlite:')) {
    const p = s.db.slice('sqlite:'.length);
    if (p !== '' && !p.startsWith('/')) out.db = `sqlite:${resolve(dir, p)}`;
  }
  return out;
}
