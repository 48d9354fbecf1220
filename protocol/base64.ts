/**
 * Strict base64. Buffer.from(s, 'base64') silently skips invalid characters,
 * which would let a corrupted payload decode to "something"; we refuse instead.
 * Standard and URL-safe alphabets are both accepted (not mixed), padded or not.
 */
const STANDARD = /^[A-Za-z0-9+/]*={0,2}$/;
const URL_SAFE = /^[A-Za-z0-9_-]*={0,2}$/;

export function decodeBase64(text: string): Buffer | undefined {
  if (!STANDARD.test(text) && !URL_SAFE.test(text)) return undefined;
  const body = text.replace(/=+$/, '');
  if (body.length % 4 === 1) return undefined;
  if (text.length !== body.length && text.length % 4 !== 0) return undefined;
  const bytes = Buffer.from(body, URL_SAFE.test(body) ? 'base64url' : 'base64');
  // Non-canonical trailing bits would let two strings mean the same bytes.
  if (bytes.toString('base64url') !== body.replace(/\+/g, '-').replace(/\//g, '_')) return undefined;
  return bytes;
}

export function encodeBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}
