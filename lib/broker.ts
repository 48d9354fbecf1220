/**
 * What the agent and the fleet tools both need to reach an MQTT broker: which
 * URLs name one, the TLS material and password files the settings point at,
 * and URLs fit to print. Each side spells the settings its own way ("mqtt.ca"
 * in the agent's config, "--ca" on the command line) and throws its own error
 * type, so both are passed in.
 */
import { readFile } from 'node:fs/promises';

/** Schemes MQTT.js connects over (TCP, TLS, WebSocket, secure WebSocket), then a host. */
const BROKER_URL_RE = /^(mqtts?|wss?|tcp|ssl|tls):\/\/[^/]/;

/** Whether `url` names a broker MQTT.js can connect to: a known scheme, a host, a valid port. */
export function isBrokerUrl(url: string): boolean {
  return BROKER_URL_RE.test(url) && URL.canParse(url);
}

/** `url` without its user:password part, for logs and messages. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.username === '' && u.password === '') return url;
    u.username = '';
    u.password = '';
    return u.toString();
  } catch {
    // Not a URL, yet it may still carry "//user:password@".
    return url.replace(/\/\/[^@/]*@/, '//');
  }
}

/** The files a broker connection may need, by setting. */
export interface BrokerFiles {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  passwordFile?: string | undefined;
}

/** What those files hold, ready for MQTT.js's client options. */
export interface BrokerSecrets {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  password?: Buffer;
}

/** How each setting is spelled where the operator wrote it. */
export type BrokerFileNames = Record<keyof BrokerFiles, string>;

/** The problem with a client certificate given without its key or the other way round, or undefined. */
export function mutualTlsProblem(files: BrokerFiles, names: BrokerFileNames): string | undefined {
  if ((files.cert === undefined) === (files.key === undefined)) return undefined;
  return `${names.cert} and ${names.key} must be set together for mutual TLS`;
}

/**
 * Reads the files `files` names. A file that cannot be read fails with
 * `error("<setting>: cannot read <path> (<code>)")`: the setting and the path,
 * never the contents.
 */
export async function readBrokerFiles(
  files: BrokerFiles,
  options: { names: BrokerFileNames; error: (message: string, cause: unknown) => Error },
): Promise<BrokerSecrets> {
  const read = async (setting: keyof BrokerFiles, path: string): Promise<Buffer> => {
    try {
      return await readFile(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : String(err));
      throw options.error(`${options.names[setting]}: cannot read ${path} (${code})`, err);
    }
  };
  const secrets: BrokerSecrets = {};
  if (files.ca !== undefined) secrets.ca = await read('ca', files.ca);
  if (files.cert !== undefined) secrets.cert = await read('cert', files.cert);
  if (files.key !== undefined) secrets.key = await read('key', files.key);
  if (files.passwordFile !== undefined) {
    // First line only: editors and `echo` add a trailing newline that is not part of the password.
    const text = (await read('passwordFile', files.passwordFile)).toString('utf8');
    secrets.password = Buffer.from(text.split(/\r?\n/)[0] ?? '');
  }
  return secrets;
}
