import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { EdgefleetError, errorMessage } from '../errors.js';
import { formatIssues } from './issues.js';
import { configSchema, type AgentConfig } from './schema.js';

/**
 * Environment overrides, applied on top of the file before validation so a bad
 * value is reported like any other. Documented in docs/configuration.md.
 */
export const ENV_OVERRIDES: Record<string, { path: string[]; type: 'string' | 'int' | 'list' }> = {
  EDGEFLEET_DEVICE_ID: { path: ['deviceId'], type: 'string' },
  EDGEFLEET_GROUPS: { path: ['groups'], type: 'list' },
  EDGEFLEET_STATE_DIR: { path: ['stateDir'], type: 'string' },
  EDGEFLEET_MQTT_URL: { path: ['mqtt', 'url'], type: 'string' },
  EDGEFLEET_HTTP_HOST: { path: ['http', 'host'], type: 'string' },
  EDGEFLEET_HTTP_PORT: { path: ['http', 'port'], type: 'int' },
  EDGEFLEET_MODELS_DIR: { path: ['models', 'dir'], type: 'string' },
  EDGEFLEET_LOG_LEVEL: { path: ['log', 'level'], type: 'string' },
};

export class ConfigError extends EdgefleetError {
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super('CONFIG', `invalid configuration in ${source}:\n  ${problems.join('\n  ')}`);
    this.problems = problems;
  }
}

function applyEnv(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): Record<string, unknown> {
  for (const [name, { path, type }] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    let node = raw;
    for (const key of path.slice(0, -1)) {
      const next = node[key];
      node[key] = next !== null && typeof next === 'object' ? next : {};
      node = node[key] as Record<string, unknown>;
    }
    const leaf = path[path.length - 1] as string;
    node[leaf] = type === 'int' ? (/^\d+$/.test(value) ? Number(value) : value) : type === 'list' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value;
  }
  return raw;
}

/** Validates a configuration object; relative paths resolve against `baseDir`. */
export function parseConfig(raw: unknown, options: { source?: string; env?: NodeJS.ProcessEnv; baseDir?: string } = {}): AgentConfig {
  const source = options.source ?? 'configuration';
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(source, ['(root): must be a JSON object']);
  const merged = applyEnv(structuredClone(raw) as Record<string, unknown>, options.env ?? {});
  const result = configSchema.safeParse(merged);
  if (!result.success) throw new ConfigError(source, formatIssues(result.error.issues, configSchema));
  const config = result.data;
  const problems: string[] = [];
  if (config.mqtt && !config.trust) problems.push('trust: required when mqtt is set (the trust root verifies every rollout)');
  if (config.mqtt && (config.mqtt.cert === undefined) !== (config.mqtt.key === undefined)) problems.push('mqtt: cert and key must be given together');
  if (problems.length > 0) throw new ConfigError(source, problems);
  return resolvePaths(config, options.baseDir ?? process.cwd());
}

function resolvePaths(config: AgentConfig, baseDir: string): AgentConfig {
  const abs = (p: string | undefined): string | undefined => (p === undefined ? undefined : resolve(baseDir, p));
  return {
    ...config,
    stateDir: resolve(baseDir, config.stateDir),
    trust: abs(config.trust),
    mqtt: config.mqtt && { ...config.mqtt, ca: abs(config.mqtt.ca), cert: abs(config.mqtt.cert), key: abs(config.mqtt.key), passwordFile: abs(config.mqtt.passwordFile) },
    models: { ...config.models, dir: abs(config.models.dir) },
    runtime: { ...config.runtime, onnxruntimePath: abs(config.runtime.onnxruntimePath) },
  };
}

/** Reads and validates a JSON config file; every problem is reported at once. */
export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${errorMessage(err)}`]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(file, [`not valid JSON: ${errorMessage(err)}`]);
  }
  return parseConfig(raw, { source: file, env, baseDir: dirname(resolve(file)) });
}
