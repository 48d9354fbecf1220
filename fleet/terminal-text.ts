/**
 * Text a device reported, made safe to print on an operator's terminal.
 *
 * A device controls its reported state, events and error messages, so
 * printing them raw lets it forge table rows (newline, carriage return),
 * send escape sequences (ESC, CSI, OSC: retitle the window, rewrite the
 * screen, hyperlinks) or reorder what the operator reads (bidi overrides).
 * Every table the CLI prints passes each cell through `terminalSafe`, and
 * pads with `padCell`, so widths are counted on what is printed.
 */

/** C0, DEL, C1, line/paragraph separators, the format characters that reorder or hide text, and the backslash that introduces our escapes. */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb\\]/g;

const NAMED: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t', '\u001b': '\\e', '\\': '\\\\' };

function escapeOne(ch: string): string {
  const named = NAMED[ch];
  if (named !== undefined) return named;
  const code = ch.charCodeAt(0);
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * `text` with every control character (C0, DEL, C1), line and paragraph
 * separator, bidi control, zero-width character and backslash written as a
 * visible escape (`\n`, `\e`, `\x9b`, `\u202e`, `\\`), so what is printed is
 * one line, in order, and cannot be mistaken for an escape the device wrote.
 */
export function terminalSafe(text: string): string {
  UNSAFE.lastIndex = 0;
  return UNSAFE.test(text) ? text.replace(UNSAFE, escapeOne) : text;
}

/** Columns `text` takes (code points; terminalSafe text has no zero-width ones left). */
export function cellWidth(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/**
 * Rows of cells as aligned text: every cell made terminal-safe, columns
 * padded to their widest cell, two spaces apart, trailing blanks trimmed.
 */
export function formatTextTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const safe = rows.map((r) => r.map(terminalSafe));
  const widths = header.map((h, i) => Math.max(cellWidth(h), ...safe.map((c) => cellWidth(c[i] ?? ''))));
  const line = (c: readonly string[]): string =>
    c.map((v, i) => v + ' '.repeat(Math.max(0, (widths[i] ?? 0) - cellWidth(v)))).join('  ').trimEnd();
  return [line(header), ...safe.map(line)].join('\n');
}
