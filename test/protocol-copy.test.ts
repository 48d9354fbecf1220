/**
 * The docs must work in a plain clone: docs/protocol.md is the repository's
 * copy of the shared wire contract and stays identical to it, and every
 * relative link in the docs lands on a file (and heading) inside the repository.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from './helpers/child.js';

const SHARED = resolve(REPO, '..', 'shared', 'PROTOCOL.md');
const COPY = join(REPO, 'docs', 'protocol.md');

/** docs/protocol.md is one header paragraph, a blank line, then the shared file byte for byte. */
function splitCopy(text: string): { header: string; body: string } {
  const cut = text.indexOf('\n\n');
  return { header: text.slice(0, cut), body: text.slice(cut + 2) };
}

const revisionOf = (title: string): string | undefined => /^# .*\(revision (\d+)\)$/m.exec(title)?.[1];

describe('docs/protocol.md', () => {
  it("says in its header that it is the shared contract's copy, and which revision", () => {
    const { header, body } = splitCopy(readFileSync(COPY, 'utf8'));
    expect(header).toMatch(/^> This is edgefleet's copy of the shared wire contract, revision \d+\b/);
    expect(revisionOf(body), 'the copied contract should start with its "# ... (revision N)" title').toBeDefined();
    expect(header).toContain(`revision ${revisionOf(body)},`);
  });

  it('is identical to ../shared/PROTOCOL.md below its header', (ctx) => {
    if (!existsSync(SHARED)) ctx.skip(`no shared contract at ${SHARED} beside this checkout (a plain clone); nothing to compare`);
    const shared = readFileSync(SHARED, 'utf8');
    const { body } = splitCopy(readFileSync(COPY, 'utf8'));
    expect(revisionOf(body), 'docs/protocol.md is at another revision than the shared contract: copy it again').toBe(revisionOf(shared));
    expect(body === shared, 'docs/protocol.md differs from ../shared/PROTOCOL.md: copy the shared file below the header again').toBe(true);
  });
});

/** The markdown files a newcomer reads: README.md, fleet/README.md and docs/*.md. */
const DOCS = [
  'README.md',
  join('fleet', 'README.md'),
  ...readdirSync(join(REPO, 'docs')).filter((f) => f.endsWith('.md')).map((f) => join('docs', f)),
];

interface Link {
  target: string;
  line: number;
}

/** Inline links and images, and reference definitions, outside fenced code blocks and code spans. */
function linksOf(markdown: string): Link[] {
  const links: Link[] = [];
  let fenced = false;
  markdown.split('\n').forEach((raw, i) => {
    if (/^\s*(```|~~~)/.test(raw)) fenced = !fenced;
    if (fenced) return;
    const line = raw.replace(/`[^`]*`/g, '');
    for (const m of line.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) links.push({ target: m[1] as string, line: i + 1 });
    const ref = /^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)/.exec(line);
    if (ref) links.push({ target: ref[1] as string, line: i + 1 });
  });
  return links;
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, -1, -2... for repeats. */
function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    const heading = fenced ? null : /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!heading) continue;
    const base = (heading[1] as string).toLowerCase().replace(/[^\p{L}\p{N}\p{M} _-]/gu, '').replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

const isExternal = (target: string): boolean => /^[a-z][a-z0-9+.-]*:/i.test(target);

describe('relative links in README.md, fleet/README.md and docs/*.md', () => {
  it('finds the docs and their links (sanity check of the parser)', () => {
    expect(DOCS).toEqual(expect.arrayContaining(['README.md', join('docs', 'protocol.md'), join('docs', 'configuration.md')]));
    const readmeLinks = linksOf(readFileSync(join(REPO, 'README.md'), 'utf8')).map((l) => l.target);
    expect(readmeLinks).toEqual(expect.arrayContaining(['docs/protocol.md', 'docs/configuration.md']));
    expect(linksOf('see [x](../a.md "t") and `[y](b.md)`\n```\n[z](c.md)\n```\n[r]: <d.md>').map((l) => l.target)).toEqual(['../a.md', 'd.md']);
    expect(anchorsOf('## 9. Agent configuration (the keys)\n## `mqtt`: the broker\n## A\n## A')).toEqual(
      new Set(['9-agent-configuration-the-keys', 'mqtt-the-broker', 'a', 'a-1']),
    );
  });

  it('land on files inside the repository, at headings that exist', () => {
    const broken: string[] = [];
    for (const doc of DOCS) {
      const text = readFileSync(join(REPO, doc), 'utf8');
      for (const { target, line } of linksOf(text)) {
        if (isExternal(target)) continue;
        const where = `${doc}:${line}: ${target}`;
        const [pathPart = '', anchor] = target.split('#', 2) as [string, string | undefined];
        const file = pathPart === '' ? join(REPO, doc) : resolve(REPO, dirname(doc), decodeURIComponent(pathPart));
        const rel = relative(REPO, file);
        if (rel.startsWith(`..${sep}`) || rel === '..') {
          broken.push(`${where} (leaves the repository; breaks in a clone)`);
        } else if (!existsSync(file)) {
          broken.push(`${where} (no such file)`);
        } else if (anchor !== undefined && file.endsWith('.md') && !anchorsOf(readFileSync(file, 'utf8')).has(anchor)) {
          broken.push(`${where} (no heading #${anchor} in ${rel})`);
        }
      }
    }
    expect(broken, `broken links:\n${broken.join('\n')}`).toEqual([]);
  });
});
