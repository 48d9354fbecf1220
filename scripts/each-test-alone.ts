// Runs every it() of the given test files alone (vitest run FILE -t NAME), as a
// reviewer would with `vitest -t`, and prints one line per test: a test that
// passes only after the tests before it is a hidden dependency.
// Usage: npm run test:alone -- test/rollout-e2e.test.ts [more files]
// Names built at run time (it.each, template literals with ${}) are listed as skipped.
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: npm run test:alone -- <test files>');
  process.exit(2);
}
const itCall = /\bit(?:\.skipIf\([^)]*\))?\(\s*(['"`])((?:\\.|(?!\1).)*)\1/g;
let failed = 0;
let total = 0;
for (const file of files) {
  for (const [, quote, raw = ''] of readFileSync(join(repo, file), 'utf8').matchAll(itCall)) {
    if (quote === '`' && raw.includes('${')) {
      console.log(`SKIP ${file} :: ${raw} [name built at run time]`);
      continue;
    }
    const name = raw.replace(/\\(.)/g, '$1');
    total++;
    const started = Date.now();
    const pattern = name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const run = spawnSync('npx', ['vitest', 'run', file, '-t', pattern], { cwd: repo, encoding: 'utf8', timeout: 300_000 });
    const out = `${run.stdout ?? ''}${run.stderr ?? ''}`;
    const summary = /Tests\s+(.*)\n/.exec(out)?.[1]?.trim() ?? 'no summary';
    const ok = run.status === 0 && /passed/.test(summary) && !/failed/.test(summary);
    if (!ok) failed++;
    console.log(`${ok ? 'PASS' : 'FAIL'} ${((Date.now() - started) / 1000).toFixed(1)}s ${file} :: ${name} [${summary}]`);
    if (!ok) console.log(out.split('\n').filter((l) => /Error|FAIL|expected|timed out/.test(l)).slice(0, 8).join('\n'));
  }
}
console.log(`${total - failed} passed, ${failed} failed (each test alone)`);
process.exitCode = failed > 0 ? 1 : 0;
