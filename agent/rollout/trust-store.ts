import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { acceptRotation, claimedTrustVersion, loadTrust, ProtocolError } from '../../protocol/index.js';
import type { Trust } from '../../protocol/index.js';
import { EdgefleetError, errorMessage } from '../errors.js';
import { writeFileAtomic } from '../store/fs-atomic.js';

/**
 * The device's current trust (docs/protocol.md section 3): the provisioned document,
 * or a later one accepted by rotation (on `{root}/trust` or, walking the chain,
 * `{root}/trust/{version}`: trust-chain.ts) and persisted as
 * `{stateDir}/trust.json`. Whichever of the two has the higher version counts,
 * so re-provisioning a device with a newer document also works.
 */

export const TRUST_FILE = 'trust.json';

export interface TrustStoreOptions {
  /** The provisioned trust file (config `trust`). */
  provisionedPath: string | undefined;
  stateDir: string;
  logger: Logger;
  /** Called after a rotation has been persisted and taken into use. */
  onChange?: (trust: Trust) => void;
}

export interface RotationSource {
  /** The N of `{root}/trust/N` the envelope came on: its document must be that version. */
  topicVersion?: number;
}

export interface RotationResult {
  accepted: boolean;
  version?: number;
  /** Why the rotation was refused; absent for an accepted one and for a harmless repeat. */
  error?: ProtocolError;
}

type Loaded = { trust: Trust } | { error: string } | undefined;

export class TrustStore {
  readonly persistedPath: string;
  private readonly opts: TrustStoreOptions;
  private readonly log: Logger;
  private trust: Trust | undefined;
  /** Rotations run one at a time, so each is checked against the trust the previous one left. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(options: TrustStoreOptions) {
    this.opts = options;
    this.log = options.logger;
    this.persistedPath = join(options.stateDir, TRUST_FILE);
  }

  get current(): Trust {
    if (!this.trust) throw new Error('trust store is not loaded');
    return this.trust;
  }

  /**
   * Loads the provisioned and the persisted document and keeps the higher
   * version. A corrupt persisted file is logged and ignored; with no usable
   * document at all the start fails with a message naming the files.
   */
  async load(): Promise<Trust> {
    const provisioned = await this.read('provisioned', this.opts.provisionedPath);
    const persisted = await this.read('persisted', this.persistedPath);
    const candidates: Trust[] = [];
    if (provisioned && 'trust' in provisioned) candidates.push(provisioned.trust);
    if (persisted && 'trust' in persisted) candidates.push(persisted.trust);
    if (persisted && 'error' in persisted) {
      this.log.error({ path: this.persistedPath, err: persisted.error }, 'persisted trust document is unusable; falling back to the provisioned one');
    }
    if (provisioned && 'error' in provisioned && candidates.length > 0) {
      this.log.warn({ path: this.opts.provisionedPath, err: provisioned.error }, 'provisioned trust document is unusable; using the persisted one');
    }
    const best = candidates.reduce<Trust | undefined>((a, b) => (a && a.version >= b.version ? a : b), undefined);
    if (!best) throw this.noTrustError(provisioned);
    this.trust = best;
    this.log.info({ version: best.version, expiresAt: best.document.expiresAt }, 'trust loaded');
    return best;
  }

  private noTrustError(provisioned: Loaded): EdgefleetError {
    if (this.opts.provisionedPath === undefined) {
      return new EdgefleetError('CONFIG', 'no trust document: set "trust" in the configuration to the provisioned trust file');
    }
    const why = provisioned && 'error' in provisioned ? provisioned.error : 'not found';
    return new EdgefleetError('CONFIG', `trust: cannot use ${this.opts.provisionedPath}: ${why}`);
  }

  /** A file's trust, its problem in words, or undefined when it does not exist. */
  private async read(which: string, path: string | undefined): Promise<Loaded> {
    if (path === undefined) return undefined;
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return which === 'persisted' ? undefined : { error: 'file not found' };
      return { error: `cannot read (${code ?? errorMessage(err)})` };
    }
    try {
      return { trust: loadTrust(bytes) };
    } catch (err) {
      return { error: errorMessage(err) };
    }
  }

  /**
   * Handles a message on `{root}/trust`. The retained envelope comes again on
   * every reconnect, so the same or an older version (or an empty, cleared
   * message) is a silent no-op. A newer one must pass acceptRotation; it is
   * persisted before it is used. Rejects only when persisting fails, leaving
   * the current trust in place (the retained message will be retried).
   */
  handleRotation(payload: Buffer, source: RotationSource = {}): Promise<RotationResult> {
    const run = this.queue.then(() => this.rotate(payload, source));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async rotate(payload: Buffer, { topicVersion }: RotationSource): Promise<RotationResult> {
    const current = this.current;
    if (payload.length === 0) return { accepted: false };
    let envelope: unknown;
    try {
      envelope = JSON.parse(payload.toString('utf8'));
    } catch (err) {
      return this.refused(new ProtocolError('MALFORMED', `trust message is not JSON: ${errorMessage(err)}`, { cause: err }));
    }
    const claimed = claimedTrustVersion(envelope);
    // A repeat decides nothing, so reading the (not yet verified) version to skip it is safe.
    if (claimed !== undefined && claimed <= current.version && (topicVersion === undefined || claimed === topicVersion)) {
      return { accepted: false, version: claimed };
    }
    let next: Trust;
    try {
      next = acceptRotation(current, envelope);
      // Checked on the verified document: version N of the chain is what {root}/trust/N must carry.
      if (topicVersion !== undefined && next.version !== topicVersion) {
        throw new ProtocolError('TRUST_VERSION', `it carries trust version ${next.version}, not version ${topicVersion} as its topic says`);
      }
    } catch (err) {
      if (err instanceof ProtocolError) return this.refused(err);
      throw err;
    }
    await writeFileAtomic(this.persistedPath, `${JSON.stringify(next.document, null, 2)}\n`, 0o644);
    this.trust = next;
    this.log.info({ from: current.version, to: next.version, expiresAt: next.document.expiresAt }, 'trust rotated');
    try {
      this.opts.onChange?.(next);
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, 'trust onChange listener threw');
    }
    return { accepted: true, version: next.version };
  }

  private refused(error: ProtocolError): RotationResult {
    this.log.warn({ code: error.code, err: error.message, current: this.trust?.version }, 'trust rotation rejected');
    return { accepted: false, error };
  }
}
