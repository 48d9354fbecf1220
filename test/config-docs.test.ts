/**
 * docs/configuration.md must not drift from the config schema: every key path
 * the schema accepts has a row in the doc's key tables, every row names a key
 * the schema has, the documented defaults and name patterns are the schema's,
 * and every environment override is named on its key's row.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ENV_OVERRIDES } from '../agent/config/load.js';
import { configSchema } from '../agent/config/schema.js';
import { REPO } from './helpers/child.js';

/** A record's key in a documented path, as in `models.config.{name}.labels`. */
const RECORD_KEY = '{name}';

/** Optional, default, prefault, nullable and the like wrap the schema that says what the value is. */
function unwrap(schema: z.ZodType): z.ZodType {
  const def = schema.def as { innerType?: z.ZodType };
  if (def.innerType) return unwrap(def.innerType);
  if (schema instanceof z.ZodPipe) return unwrap(schema.in as z.ZodType);
  return schema;
}

/** The regular expressions a string, a list of strings or a record's keys are checked against. */
function patternsOf(schema: z.ZodType): string[] {
  const inner = unwrap(schema);
  const target = inner instanceof z.ZodArray ? unwrap(inner.element as z.ZodType) : inner instanceof z.ZodRecord ? unwrap(inner.keyType as z.ZodType) : inner;
  return (target.def.checks ?? []).flatMap((check) => {
    const { pattern } = check._zod.def as { pattern?: RegExp };
    return pattern ? [pattern.source] : [];
  });
}

interface KeyPaths {
  /** Keys holding a value (a string, a number, a list, a union of forms). */
  leaves: string[];
  /** Keys holding an object whose own keys are listed too. */
  objects: string[];
  /** Name patterns by key: of the value, of a list's items, or of a record's keys. */
  patterns: Map<string, string[]>;
}

/** Walks objects and records of objects; anything else (unions included) is one documented value. */
function keyPaths(schema: z.ZodType, path = '', out: KeyPaths = { leaves: [], objects: [], patterns: new Map() }): KeyPaths {
  const inner = unwrap(schema);
  const at = (key: string): string => (path === '' ? key : `${path}.${key}`);
  if (path !== '') out.patterns.set(path, patternsOf(inner));
  if (inner instanceof z.ZodObject) {
    if (path !== '') out.objects.push(path);
    for (const [key, child] of Object.entries(inner.shape)) keyPaths(child, at(key), out);
  } else if (inner instanceof z.ZodRecord && unwrap(inner.valueType as z.ZodType) instanceof z.ZodObject) {
    out.objects.push(path);
    keyPaths(inner.valueType as z.ZodType, at(RECORD_KEY), out);
  } else {
    out.leaves.push(path);
  }
  return out;
}

interface DocRow {
  cells: string[];
  line: number;
}

/** The rows of the tables under "## Keys", by the key in their first cell. */
function documentedKeys(markdown: string): Map<string, DocRow> {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => l.trim() === '## Keys');
  if (start < 0) throw new Error('docs/configuration.md has no "## Keys" section');
  const rows = new Map<string, DocRow>();
  for (let i = start + 1; i < lines.length; i++) {
    const line = lines[i] as string;
    if (line.startsWith('## ')) break;
    if (!line.startsWith('|')) continue;
    const cells = line.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim());
    const key = /^`([^`]+)`$/.exec(cells[0] ?? '')?.[1];
    if (key === undefined) continue; // header and separator rows
    if (rows.has(key)) throw new Error(`docs/configuration.md:${i + 1}: \`${key}\` has a second row`);
    rows.set(key, { cells, line: i + 1 });
  }
  return rows;
}

const doc = readFileSync(join(REPO, 'docs', 'configuration.md'), 'utf8');
const rows = documentedKeys(doc);
const schemaKeys = keyPaths(configSchema);
const squash = (s: string): string => s.replace(/[\s`]/g, '');

describe('docs/configuration.md', () => {
  it('walks the whole schema (sanity check of the walker)', () => {
    expect(schemaKeys.leaves).toEqual(expect.arrayContaining(['deviceId', 'mqtt.url', 'rollout.window', 'telemetry.upload.ackTimeoutMs', 'models.config.{name}.batching.maxBatchSize']));
    expect(schemaKeys.objects).toEqual(expect.arrayContaining(['mqtt', 'telemetry.health', 'models.config', 'models.config.{name}.batching']));
  });

  it('has a row for every key path of agent/config/schema.ts', () => {
    const missing = schemaKeys.leaves.filter((key) => !rows.has(key));
    expect(missing, `keys in the schema without a row under "## Keys" in docs/configuration.md: ${missing.join(', ')}`).toEqual([]);
  });

  it('documents no key the schema does not have', () => {
    const known = new Set([...schemaKeys.leaves, ...schemaKeys.objects]);
    const stale = [...rows].filter(([key]) => !known.has(key)).map(([key, row]) => `${key} (line ${row.line})`);
    expect(stale, `rows for keys the schema does not accept: ${stale.join(', ')}`).toEqual([]);
  });

  it('gives each row a type, a default column and a meaning', () => {
    for (const [key, { cells, line }] of rows) {
      expect(cells, `docs/configuration.md:${line} (${key}) should have 5 cells: key, type, default, env, meaning`).toHaveLength(5);
      expect(cells[1], `docs/configuration.md:${line} (${key}) has no type`).not.toBe('');
      expect(cells[4], `docs/configuration.md:${line} (${key}) has no meaning`).not.toBe('');
    }
  });

  it("states the schema's own defaults", () => {
    const defaults = configSchema.parse({ deviceId: 'docs' }) as Record<string, unknown>;
    const valueAt = (key: string): unknown => key.split('.').reduce<unknown>((node, k) => (node as Record<string, unknown> | undefined)?.[k], defaults);
    let checked = 0;
    for (const key of schemaKeys.leaves) {
      const value = valueAt(key);
      const row = rows.get(key);
      if (value === undefined || key === 'deviceId' || !row) continue;
      const expected = typeof value === 'string' ? value : JSON.stringify(value);
      expect(squash(row.cells[2] ?? ''), `docs/configuration.md:${row.line}: default of ${key} should say ${expected}`).toContain(squash(expected));
      checked++;
    }
    expect(checked).toBeGreaterThan(30);
  });

  it("quotes only the schema's own name patterns", () => {
    expect(schemaKeys.patterns.get('deviceId')).toHaveLength(1);
    expect(schemaKeys.patterns.get('models.config.{name}.labels')).toHaveLength(1);
    for (const [key, { cells, line }] of rows) {
      const quoted = cells.join(' ').match(/`\^[^`]*\$`/g) ?? [];
      for (const regex of quoted) {
        expect(schemaKeys.patterns.get(key), `docs/configuration.md:${line}: ${regex} is not the pattern the schema checks ${key} against`).toContain(regex.slice(1, -1));
      }
    }
  });

  it('names every environment override on its key row and in the overrides table', () => {
    const envSection = doc.slice(doc.indexOf('## Environment overrides'));
    for (const [name, { path }] of Object.entries(ENV_OVERRIDES)) {
      const key = path.join('.');
      const row = rows.get(key);
      expect(row?.cells[3], `the row of ${key} should name ${name} in its env column`).toBe(`\`${name}\``);
      expect(envSection, `the "Environment overrides" table should list ${name}`).toMatch(new RegExp(`\\| \`${name}\` \\| \`${key.replace(/\./g, '\\.')}\``));
    }
    const overridden = new Set(Object.values(ENV_OVERRIDES).map(({ path }) => path.join('.')));
    const extra = [...rows].filter(([key, row]) => row.cells[3] !== '' && !overridden.has(key)).map(([key]) => key);
    expect(extra, `rows naming an environment variable the agent does not read: ${extra.join(', ')}`).toEqual([]);
  });
});
