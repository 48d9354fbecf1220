import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { EdgefleetError } from '../errors.js';

/**
 * Bearer tokens for the local APIs, from a file of their SHA-256 digests (the
 * tokens themselves are never stored on the device). One per line:
 * `sha256:<64 hex digits>`, optionally followed by a name for the operator;
 * `#` starts a comment. Make one with
 * `token=$(openssl rand -hex 32); printf %s "$token" | sha256sum`.
 */
export class BearerTokens {
  private digests: Buffer[] = [];

  constructor(private readonly file: string) {}

  get count(): number {
    return this.digests.length;
  }

  /** Reads the file; every malformed line is named. Nothing changes when it fails. */
  async load(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      throw new EdgefleetError('CONFIG', `api.tokensFile: cannot read ${this.file}: ${(err as Error).message}`);
    }
    const digests: Buffer[] = [];
    const problems: string[] = [];
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/#.*/, '').trim();
      if (line === '') return;
      const m = /^sha256:([0-9a-fA-F]{64})(?:\s+\S.*)?$/.exec(line);
      if (m) digests.push(Buffer.from(m[1] as string, 'hex'));
      else problems.push(`line ${i + 1} is not "sha256:<64 hex digits> [name]"`);
    });
    if (problems.length > 0) throw new EdgefleetError('CONFIG', `api.tokensFile ${this.file}: ${problems.join('; ')}`);
    // An empty file would lock every client out for good: say so rather than serve no one.
    if (digests.length === 0) throw new EdgefleetError('CONFIG', `api.tokensFile ${this.file} holds no token digests`);
    this.digests = digests;
  }

  /** Whether an Authorization header carries one of the tokens. Every digest is compared, in constant time each. */
  accepts(authorization: string | undefined): boolean {
    const m = authorization === undefined ? null : /^Bearer +([!-~]+) *$/i.exec(authorization);
    if (!m) return false;
    const digest = createHash('sha256').update(m[1] as string, 'utf8').digest();
    let ok = false;
    for (const d of this.digests) ok = timingSafeEqual(d, digest) || ok;
    return ok;
  }
}
