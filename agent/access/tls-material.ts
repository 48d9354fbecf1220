import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { EdgefleetError } from '../errors.js';

export interface CertificateAndKey {
  cert: Buffer;
  key: Buffer;
}

/**
 * The certificate chain and private key the local APIs serve TLS with, read from
 * the files the config names and read again on reload (SIGHUP), so a renewed
 * certificate takes effect for new connections without a restart.
 */
export class TlsMaterial {
  private current: CertificateAndKey | undefined;
  private readonly listeners = new Set<(material: CertificateAndKey) => void>();

  constructor(private readonly files: { cert: string; key: string }) {}

  get material(): CertificateAndKey {
    if (!this.current) throw new Error('TLS material used before it was loaded');
    return this.current;
  }

  /** Reads both files and checks that they make a usable pair; nothing changes when that fails. */
  async load(): Promise<void> {
    const read = (what: 'cert' | 'key'): Promise<Buffer> =>
      readFile(this.files[what]).catch((err: unknown) => {
        throw new EdgefleetError('CONFIG', `api.tls.${what}: cannot read ${this.files[what]}: ${(err as Error).message}`);
      });
    const [cert, key] = await Promise.all([read('cert'), read('key')]);
    try {
      createSecureContext({ cert, key });
    } catch (err) {
      throw new EdgefleetError('CONFIG', `api.tls: ${this.files.cert} and ${this.files.key} are not a usable certificate and key: ${(err as Error).message}`);
    }
    this.current = { cert, key };
    for (const listener of this.listeners) listener(this.current);
  }

  /** Called with the material now (if loaded) and after every successful reload. */
  subscribe(listener: (material: CertificateAndKey) => void): () => void {
    this.listeners.add(listener);
    if (this.current) listener(this.current);
    return () => this.listeners.delete(listener);
  }
}
