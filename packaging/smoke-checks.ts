/**
 * Checks shared by the arm64 smoke test (smoke-arm64.ts) and the package tests
 * (test/packaging.test.ts): answers compared across machines, and the execution-provider
 * report an agent logs compared with the one docs/execution-providers.md quotes.
 */
import { isDeepStrictEqual } from 'node:util';
import type { Arch } from './parts.js';

/** Rows of scores per "model api", e.g. "mlp tfs". */
export type Answers = Record<string, number[][]>;

export interface Comparison {
  ok: boolean;
  rows: { name: string; count: number; argmaxEqual: number; maxAbsDiff: number }[];
}

const argmax = (row: readonly number[]): number => row.reduce((best, v, i) => (v > row[best]! ? i : best), 0);

/** Equal when every row has the same argmax and the same length on both sides; the largest absolute difference is reported, not judged. */
export function compareAnswers(got: Answers, want: Answers): Comparison {
  const rows = Object.keys(want).map((name) => {
    const gotRows = got[name] ?? [];
    let argmaxEqual = 0;
    let maxAbsDiff = 0;
    want[name]!.forEach((wantRow, r) => {
      const gotRow = gotRows[r];
      if (!gotRow || gotRow.length !== wantRow.length) {
        maxAbsDiff = Number.POSITIVE_INFINITY;
        return;
      }
      if (argmax(gotRow) === argmax(wantRow)) argmaxEqual++;
      wantRow.forEach((v, i) => (maxAbsDiff = Math.max(maxAbsDiff, Math.abs(v - gotRow[i]!))));
    });
    return { name, count: want[name]!.length, argmaxEqual, maxAbsDiff };
  });
  return { ok: rows.every((r) => r.count > 0 && r.argmaxEqual === r.count), rows };
}

/**
 * The report docs/execution-providers.md quotes for a platform: the ```json block after
 * the line `<!-- provider report: linux/ARCH -->`.
 */
export function documentedReport(doc: string, arch: Arch): unknown {
  const marker = `<!-- provider report: linux/${arch} -->`;
  const at = doc.indexOf(marker);
  if (at < 0) throw new Error(`docs/execution-providers.md has no "${marker}" line`);
  const block = /```json\n([\s\S]*?)\n```/.exec(doc.slice(at));
  if (!block) throw new Error(`docs/execution-providers.md: no json block after "${marker}"`);
  return JSON.parse(block[1]!);
}

/** The report from the agent's "execution providers probed" log line. */
export function loggedReport(output: string): unknown {
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as { msg?: string; providers?: unknown };
    if (entry.msg === 'execution providers probed') return entry.providers;
  }
  throw new Error(`the agent logged no "execution providers probed" line:\n${output.slice(-2000)}`);
}

/** The logged report, which must be exactly what the docs quote for this platform. */
export function providerReportFrom(output: string, doc: string, arch: Arch): unknown {
  const logged = loggedReport(output);
  const documented = documentedReport(doc, arch);
  if (!isDeepStrictEqual(logged, documented)) {
    throw new Error(`the linux/${arch} agent reports ${JSON.stringify(logged)}, docs/execution-providers.md quotes ${JSON.stringify(documented)}`);
  }
  return logged;
}
