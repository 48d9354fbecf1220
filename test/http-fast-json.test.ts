import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import { parseV1Json, parseV2Json } from '../agent/codec/fast-json.js';
import { mulberry32 } from '../models/onnx/zoo.js';

/** JSON.parse's answer with every Float64Array the fast reader may produce turned back into an array. */
function plain(v: unknown): unknown {
  if (v instanceof Float64Array) return Array.from(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

/** Deep equality that tells -0 from 0 and compares key order too. */
function same(a: unknown, b: unknown): boolean {
  if (typeof a === 'number' || typeof b === 'number') return Object.is(a, b);
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]));
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    return ka.join('\u0000') === kb.join('\u0000') && ka.every((k) => same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return a === b;
}

/** The fast reader either gives up or agrees with JSON.parse. Returns whether it answered. */
function check(text: string | Buffer, end?: number, read: (body: Buffer, end: number) => unknown = parseV2Json): boolean {
  const body = typeof text === 'string' ? Buffer.from(text) : text;
  const n = end ?? body.length;
  const fast = read(body, n);
  let expected: unknown;
  let threw = false;
  try {
    expected = JSON.parse(body.toString('utf8', 0, n));
  } catch {
    threw = true;
  }
  if (fast === undefined) return false;
  expect(threw, `fast reader accepted invalid JSON: ${body.toString('utf8', 0, Math.min(n, 200))}`).toBe(false);
  const ok = same(plain(fast), expected);
  if (!ok) expect(plain(fast)).toEqual(expected);
  expect(ok, body.toString('utf8', 0, Math.min(n, 200))).toBe(true);
  return true;
}

const rand = mulberry32(2024);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
const digits = (k: number): string => Array.from({ length: k }, () => String(Math.floor(rand() * 10))).join('');

/** Number literals of every shape JSON allows, biased to the edges of the exact fast path. */
function numberLiteral(): string {
  const sign = rand() < 0.3 ? '-' : '';
  const int = rand() < 0.3 ? '0' : String(1 + Math.floor(rand() * 9)) + digits(Math.floor(rand() * 20));
  const frac = rand() < 0.6 ? `.${digits(1 + Math.floor(rand() * 22))}` : '';
  const exp = rand() < 0.3 ? `${pick(['e', 'E'])}${pick(['', '+', '-'])}${Math.floor(rand() * 30 + (rand() < 0.1 ? 300 : 0))}` : '';
  return sign + int + frac + exp;
}

const EDGES = [
  '0', '-0', '0.0', '-0.0', '1', '-1', '0.1', '0.2', '0.3', '1e23', '1e22', '1e-22', '1e-23', '9007199254740993', '9007199254740992',
  '123456789012345', '1234567890123456', '999999999999999', '0.000000000000000000001', '4.9e-324', '5e-324', '2.2250738585072014e-308',
  '1.7976931348623157e308', '1.7976931348623159e308', '1e309', '-1e400', '1e-400', '0e0', '0E+0', '1E-0', '0.5', '2.5e-1', '100e-2',
  '0.00000000000000000000000000000001', '123.456e3', '3.4028234663852886e38', '1.401298464324817e-45', '0.988', '0.027',
];

describe('fast v2 JSON reader', () => {
  it('reads numbers exactly as JSON.parse does', () => {
    for (const lit of EDGES) expect(check(`{"inputs":[{"data":[${lit}]}],"n":${lit}}`)).toBe(true);
    for (let i = 0; i < 20000; i++) {
      const lit = numberLiteral();
      expect(check(`{"inputs":[{"data":[${lit},${numberLiteral()}]}],"x":[${lit}]}`), lit).toBe(true);
    }
  });

  it('reads runs of zeros (read without parsing) exactly, across scratch growth, next to other zeros and when cut short', () => {
    const zeroish = ['0', '0', '0', '0', '-0', '0.0', '0e0', '0.5', '7', ' 0', '0 '];
    for (let i = 0; i < 2000; i++) {
      const n = 1 + Math.floor(rand() * (i % 50 === 0 ? 9000 : 40)); // some pass the 4096-number scratch
      const items = Array.from({ length: n }, () => (rand() < 0.8 ? '0' : pick(zeroish)));
      const text = `{"inputs":[{"data":[${items.join(rand() < 0.1 ? ', ' : ',')}]}]}`;
      expect(check(text), text.slice(0, 120)).toBe(true);
    }
    for (const bad of ['[0,0,]', '[0,0', '[0,,0]', '[0,00]', '[0,0 0]', '[0,0,-]', '[0,0,0x]']) check(`{"inputs":[{"data":${bad}}]}`);
    const body = Buffer.from('{"inputs":[{"data":[0,0,0,0]}]}');
    for (let cut = 20; cut <= body.length; cut++) check(body, cut);
  });

  it('turns only inputs[k].data number arrays into Float64Arrays', () => {
    const body = JSON.stringify({
      id: 'r1', parameters: { data: [1, 2] },
      inputs: [
        { name: 'x', shape: [1, 3], datatype: 'FP32', data: [1, -0, 0.5] },
        { name: 'y', data: [[1, 2]] }, { name: 'z', data: [1, 'NaN'] }, { name: 'e', data: [] }, { name: 'b', data: [true] },
      ],
      outputs: [{ name: 'o', data: [3] }],
    }).replace('[1,0,0.5]', '[1,-0,0.5]'); // JSON.stringify writes -0 as 0
    const out = parseV2Json(Buffer.from(body), Buffer.byteLength(body)) as { inputs: { data: unknown }[]; parameters: { data: unknown }; outputs: { data: unknown }[] };
    expect(out.inputs[0]?.data).toBeInstanceOf(Float64Array);
    expect(Object.is((out.inputs[0]?.data as Float64Array)[1], -0)).toBe(true);
    for (const k of [1, 2, 3, 4]) expect(Array.isArray(out.inputs[k]?.data)).toBe(true);
    expect(Array.isArray(out.parameters.data)).toBe(true);
    expect(Array.isArray(out.outputs[0]?.data)).toBe(true);
    expect(check(body)).toBe(true);
    // Nested "inputs" deeper down is not the request's inputs.
    const nested = Buffer.from('{"a":{"inputs":[{"data":[1]}]}}');
    const deep = parseV2Json(nested, nested.length) as { a: { inputs: { data: unknown }[] } };
    expect(Array.isArray(deep.a.inputs[0]?.data)).toBe(true);
  });

  it('agrees with JSON.parse on random documents', () => {
    const value = (d: number): unknown => {
      const r = rand();
      if (d > 4 || r < 0.3) return pick([0, -1.5, 1e21, 'x', 'with space', '', true, false, null, 123456789]);
      if (r < 0.6) return Array.from({ length: Math.floor(rand() * 4) }, () => value(d + 1));
      return Object.fromEntries(Array.from({ length: Math.floor(rand() * 4) }, () => [pick(['a', 'data', 'inputs', '1', '0', 'name', 'constructor']), value(d + 1)]));
    };
    for (let i = 0; i < 3000; i++) {
      const doc = { inputs: Array.from({ length: 3 }, () => ({ name: 'x', data: rand() < 0.5 ? Array.from({ length: 5 }, () => Number(numberLiteral())) : value(2) })), other: value(0) };
      const text = JSON.stringify(doc, null, rand() < 0.3 ? 2 : undefined);
      expect(check(text)).toBe(true);
    }
  });

  it('gives up, never differs, on invalid or unusual input', () => {
    const cases = [
      '', ' ', '{', '}', '{"inputs":[{"data":[1,2,]}]}', '{"inputs":[{"data":[1 2]}]}', '{"a":01}', '{"a":1.}', '{"a":.5}', '{"a":-}', '{"a":+1}',
      '{"a":1e}', '{"a":NaN}', '{"a":Infinity}', '{"a":tru}', '{"a":nul}', '{"a":"\\u0041"}', '{"a":"é"}', '{"é":1}', '{"a":"\t"}',
      '{"__proto__":{"x":1}}', '{"a":1}x', '{"a":1} ', '\ufeff{"a":1}', '[' .repeat(100) + ']'.repeat(100), '{"a":[1,2]', '"str"', '12', 'null',
      '{"inputs":[{"data":[1,2]}],"inputs":[{"data":[3]}]}', '{"a":1,"a":2}', '{"inputs":[{"data":[-0.0,1e400]}]}',
    ];
    for (const c of cases) check(c);
    expect(parseV2Json(Buffer.from('{"__proto__":{"x":1}}'), 21)).toBeUndefined();
    expect(parseV2Json(Buffer.from('{"a":"é"}'), Buffer.byteLength('{"a":"é"}'))).toBeUndefined();
    // Random corruptions of a valid body: whatever the reader answers, JSON.parse answers the same.
    const base = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 4], datatype: 'FP32', data: [0.5, -1, 2e-3, 7] }], outputs: [{ name: 'y' }] });
    for (let i = 0; i < 20000; i++) {
      const b = Buffer.from(base);
      for (let k = 0; k < 1 + Math.floor(rand() * 2); k++) b[Math.floor(rand() * b.length)] = pick([...Buffer.from('{}[],:"-+.eE0123456789 tfnx\\'), 0, 0xc3]);
      check(b);
    }
  });

  it('reads only up to the given length (the JSON header of a binary request)', () => {
    const json = '{"inputs":[{"name":"x","data":[1,2]}]}';
    const body = Buffer.concat([Buffer.from(json), Buffer.from([1, 2, 3, 0x5d])]);
    expect(check(body, json.length)).toBe(true);
    expect(parseV2Json(body, json.length - 1)).toBeUndefined();
  });
});

describe('fast v1 JSON reader', () => {
  const checkV1 = (text: string | Buffer): boolean => check(text, undefined, parseV1Json);

  it('reads numbers exactly as JSON.parse does', () => {
    for (const lit of EDGES) expect(checkV1(`{"instances":[[${lit}],[${lit}]],"n":${lit}}`)).toBe(true);
    for (let i = 0; i < 5000; i++) expect(checkV1(`{"inputs":{"x":[[${numberLiteral()},${numberLiteral()}]]}}`)).toBe(true);
  });

  it('turns number rows at any depth under instances or inputs into Float64Arrays, and nothing else', () => {
    type Doc = { instances: unknown[]; signature_name: string; other: unknown[] };
    const body = '{"signature_name":"serving_default","other":[1,2],"instances":[[[1,2],[3,4]],{"x":[5],"y":{"b64":"AAE="},"z":[[6]]},[1,"NaN"],[],7]}';
    const out = parseV1Json(Buffer.from(body), body.length) as Doc;
    const [nested, named, mixed, empty, bare] = out.instances as [unknown[], Record<string, unknown>, unknown[], unknown[], number];
    expect(nested[0]).toBeInstanceOf(Float64Array);
    expect(nested[1]).toBeInstanceOf(Float64Array);
    expect(named.x).toBeInstanceOf(Float64Array);
    expect((named.z as unknown[])[0]).toBeInstanceOf(Float64Array);
    expect(named.y).toEqual({ b64: 'AAE=' });
    expect(Array.isArray(mixed) && Array.isArray(empty) && bare === 7).toBe(true);
    expect(Array.isArray(out.other)).toBe(true);
    expect(checkV1(body)).toBe(true);
    const columnar = parseV1Json(Buffer.from('{"inputs":[1,2,3]}'), 18) as { inputs: unknown };
    expect(columnar.inputs).toBeInstanceOf(Float64Array);
  });

  it('agrees with JSON.parse on random and corrupted documents', () => {
    const value = (d: number): unknown => {
      const r = rand();
      if (d > 4 || r < 0.3) return pick([0, -1.5, 1e21, 'x', '', true, null, 123456789, Number(numberLiteral())]);
      if (r < 0.7) return Array.from({ length: Math.floor(rand() * 4) }, () => value(d + 1));
      return Object.fromEntries(Array.from({ length: Math.floor(rand() * 3) }, () => [pick(['x', 'b64', 'instances', 'inputs']), value(d + 1)]));
    };
    for (let i = 0; i < 3000; i++) expect(checkV1(JSON.stringify({ [pick(['instances', 'inputs'])]: value(0), other: value(2) }))).toBe(true);
    const base = JSON.stringify({ instances: [[0.5, -1, 2e-3], [7, 8, 9]] });
    for (let i = 0; i < 10000; i++) {
      const b = Buffer.from(base);
      b[Math.floor(rand() * b.length)] = pick([...Buffer.from('{}[],:"-.e0123456789 x'), 0xc3]);
      checkV1(b);
    }
  });
});
