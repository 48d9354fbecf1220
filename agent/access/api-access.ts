import type { Logger } from 'pino';
import type { AgentConfig } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import { BearerTokens } from './tokens.js';
import { TlsMaterial } from './tls-material.js';

/**
 * Who may reach the local APIs and how: optional TLS and optional bearer
 * tokens, shared by the HTTP and gRPC servers. Both are read at start (a bad
 * file stops the start, as a config error) and again on reload (SIGHUP), where
 * a bad file is logged and the previous certificate or tokens stay in use.
 */
export class ApiAccess {
  readonly tls: TlsMaterial | undefined;
  readonly tokens: BearerTokens | undefined;

  constructor(private readonly options: { config: AgentConfig['api']; logger: Logger }) {
    const { tls, tokensFile } = options.config;
    this.tls = tls && new TlsMaterial(tls);
    this.tokens = tokensFile === undefined ? undefined : new BearerTokens(tokensFile);
  }

  async start(): Promise<void> {
    await this.tls?.load();
    await this.tokens?.load();
    if (this.tls || this.tokens) this.options.logger.info({ tls: this.tls !== undefined, tokens: this.tokens?.count }, 'local API access: TLS and bearer tokens');
  }

  async stop(): Promise<void> {}

  /** Reads the certificate, key and tokens again; keeps the old ones when the new ones fail. */
  async reload(): Promise<void> {
    const { logger } = this.options;
    for (const [what, part] of [['TLS certificate and key', this.tls], ['bearer tokens', this.tokens]] as const) {
      if (!part) continue;
      try {
        await part.load();
        logger.info(`reloaded the local API's ${what}`);
      } catch (err) {
        logger.error({ err: errorMessage(err) }, `could not reload the local API's ${what}; the previous ones stay in use`);
      }
    }
  }

  /** Whether a request may go on: always without tokens configured. */
  allows(authorization: string | undefined): boolean {
    return this.tokens === undefined || this.tokens.accepts(authorization);
  }
}
