import { Buffer } from 'node:buffer';
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { identityModel, multiIoModel, staticShapeModel, writeModelTree } from '../models/onnx/zoo.js';
import { getJson, postJson, startTestAgent, type TestAgent } from './helpers/agent.js';

/** A request the table sends: an object body is sent as JSON, a string or Buffer as is. */
interface Case {
  method?: string;
  path: string;
  body?: unknown;
  headers?: Record<string, string>;
  status: number;
  /** Fragments the error message must contain: the input it names and what was wrong. */
  says: (string | RegExp)[];
}

interface Reply { status: number; contentType: string | null; text: string }

async function send(base: string, c: Pick<Case, 'method' | 'path' | 'body' | 'headers'>): Promise<Reply> {
  const method = c.method ?? (c.body === undefined ? 'GET' : 'POST');
  const body = c.body === undefined || typeof c.body === 'string' || Buffer.isBuffer(c.body) ? c.body : JSON.stringify(c.body);
  const res = await fetch(`${base}${c.path}`, { method, headers: c.headers, body });
  return { status: res.status, contentType: res.headers.get('content-type'), text: await res.text() };
}

/** Sends `total` bytes with Transfer-Encoding: chunked (no Content-Length), in 1 KiB pieces. */
function sendChunked(base: string, path: string, total: number): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: res.headers['content-type'] ?? null, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.write('{"inputs": [');
    for (let sent = 0; sent < total; sent += 1024) req.write(' '.repeat(1024));
    req.end(']}');
  });
}

/** Checks a reply is `{"error": message}` with the status and every fragment. */
function expectError(reply: Reply, status: number, says: readonly (string | RegExp)[]): void {
  const text = reply.text.slice(0, 300);
  expect(reply.status, `never a 500: ${text}`).not.toBe(500);
  expect(reply.status, text).toBe(status);
  expect(reply.contentType).toMatch(/^application\/json/);
  const json = JSON.parse(reply.text) as Record<string, unknown>;
  expect(Object.keys(json)).toEqual(['error']);
  expect(typeof json.error).toBe('string');
  for (const s of says) {
    if (typeof s === 'string') expect(json.error).toContain(s);
    else expect(json.error).toMatch(s);
  }
}

const tensor = (name: string, datatype: string, shape: unknown, data: unknown): Record<string, unknown> => ({ name, datatype, shape, data });
const x = (shape: unknown, data: unknown, datatype = 'FP32'): Record<string, unknown> => tensor('x', datatype, shape, data);
const infer = (model: string, body: unknown, extra: Partial<Case> = {}): Omit<Case, 'status' | 'says'> => ({ path: `/v2/models/${model}/infer`, body, ...extra });
const predict = (model: string, body: unknown): Omit<Case, 'status' | 'says'> => ({ path: `/v1/models/${model}:predict`, body });
const pair = (name: string, rows = 1): Record<string, unknown> => tensor(name, 'FP32', [rows, 4], Array.from({ length: rows * 4 }, (_, i) => i));

/** A binary-extension body; `headerLength` overrides the true JSON length to make it lie. */
function binary(model: string, header: unknown, chunks: Buffer[], headerLength?: string): Omit<Case, 'status' | 'says'> {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  return {
    path: `/v2/models/${model}/infer`,
    body: Buffer.concat([json, ...chunks]),
    headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': headerLength ?? String(json.length) },
  };
}
const binX = (datatype: string, shape: number[], size: number): Record<string, unknown> => ({ inputs: [{ name: 'x', datatype, shape, parameters: { binary_data_size: size } }] });
const f32 = (...xs: number[]): Buffer => Buffer.from(new Float32Array(xs).buffer);

/** Nested deeper than JSON.stringify can recurse, but still valid JSON; built as text. */
const DEEP = 20_000;
const deepArray = '['.repeat(DEEP) + ']'.repeat(DEEP);
const deepObject = '{"a":'.repeat(DEEP) + '1' + '}'.repeat(DEEP);

const bad = (what: string, req: Omit<Case, 'status' | 'says'>, says: Case['says']): [string, Case] => [what, { ...req, status: 400, says }];
const missing = (what: string, req: Omit<Case, 'status' | 'says'>, says: Case['says']): [string, Case] => [what, { ...req, status: 404, says }];

const CASES: [string, Case][] = [
  // The body itself.
  bad('malformed JSON (v2)', infer('id-float32', '{"inputs": ['), [/JSON/]),
  bad('malformed JSON (v1)', predict('id-float32', '{"instances": [1,'), [/JSON/]),
  bad('empty body', infer('id-float32', ''), [/JSON/]),
  bad('body is an array (v2)', infer('id-float32', [1, 2]), ['must be a JSON object']),
  bad('body is a string (v1)', predict('id-float32', '"hello"'), ['must be a JSON object']),
  bad('body is null (v2)', infer('id-float32', 'null'), ['must be a JSON object']),
  bad('v1 with both instances and inputs', predict('id-float32', { instances: [[1]], inputs: [[1]] }), ['"instances"', '"inputs"']),
  bad('v1 with neither instances nor inputs', predict('id-float32', { signature_name: 'serving_default' }), ['"instances"', '"inputs"']),
  bad('v2 without inputs', infer('id-float32', { outputs: [] }), ['"inputs"']),
  // Shapes.
  bad('wrong rank on the static model (v2)', infer('static', { inputs: [x([6], [1, 2, 3, 4, 5, 6])] }), ['"x"', 'rank 1', '[2,3]']),
  bad('wrong fixed dim on the static model (v2)', infer('static', { inputs: [x([3, 2], [1, 2, 3, 4, 5, 6])] }), ['"x"', '[3,2]', 'dimension 0']),
  bad('wrong fixed dim on the static model (v1 row)', predict('static', { instances: [[1, 2, 3]] }), ['"x"', 'dimension 0']),
  bad('wrong rank on the static model (v1 columnar)', predict('static', { inputs: [1, 2, 3, 4, 5, 6] }), ['"x"', 'rank']),
  bad('element count differs from the shape product', infer('id-float32', { inputs: [x([2, 2], [1, 2, 3])] }), ['"x"', '3 elements', '[2,2]', 'needs 4']),
  bad('negative dimension in shape', infer('id-float32', { inputs: [x([-1, 2], [1, 2])] }), ['"x"', '"shape"']),
  bad('shape is not an array', infer('id-float32', { inputs: [x('2x2', [1, 2, 3, 4])] }), ['"x"', '"shape"']),
  // Datatypes and values.
  bad('datatype differs from the model', infer('id-float32', { inputs: [x([1, 2], [1, 2], 'INT32')] }), ['"x"', 'INT32', 'FP32']),
  bad('unknown datatype string', infer('id-float32', { inputs: [x([1, 2], [1, 2], 'FLOAT')] }), ['"x"', 'unknown datatype', 'FLOAT']),
  bad('ragged arrays (v2)', infer('id-float32', { inputs: [x([2, 2], [[1, 2], [3]])] }), ['"x"', 'ragged']),
  bad('ragged arrays (v1)', predict('id-float32', { instances: [[1, 2], [3]] }), ['"x"', 'ragged']),
  bad('array where a number belongs', infer('id-float32', { inputs: [x([1, 2], [1, [2]])] }), ['"x"', 'ragged']),
  bad('out-of-range INT8', infer('id-int8', { inputs: [x([1, 2], [1, 200], 'INT8')] }), ['"x"', '200', 'out of range for INT8']),
  bad('non-integer INT32', infer('id-int32', { inputs: [x([1, 2], [1, 1.5], 'INT32')] }), ['"x"', '1.5', 'not an integer']),
  bad('INT64 number beyond 2^53', infer('id-int64', '{"inputs":[{"name":"x","datatype":"INT64","shape":[1,1],"data":[9007199254740993]}]}'), ['"x"', '2^53']),
  bad('string other than NaN/Infinity in FP32', infer('id-float32', { inputs: [x([1, 1], ['nan'])] }), ['"x"', '"nan"']),
  bad('string in BOOL', infer('id-bool', { inputs: [x([1, 1], ['true'], 'BOOL')] }), ['"x"', 'BOOL']),
  bad('data is not an array', infer('id-float32', { inputs: [x([1, 1], 1)] }), ['"x"', '"data"']),
  // Input and output names.
  bad('unknown input name (v2)', infer('multi', { inputs: [pair('a'), pair('b'), pair('c')] }), ['"c"', 'unknown input']),
  bad('unknown input name (v1)', predict('multi', { inputs: { a: [[1, 2, 3, 4]], b: [[1, 2, 3, 4]], c: [[1]] } }), ['"c"', 'unknown input']),
  bad('missing input (v2)', infer('multi', { inputs: [pair('a')] }), ['"b"', 'missing']),
  bad('missing input (v1)', predict('multi', { instances: [{ a: [1, 2, 3, 4] }] }), ['"b"', 'missing']),
  bad('duplicate input', infer('multi', { inputs: [pair('a'), pair('a'), pair('b')] }), ['"a"', 'more than once']),
  bad('unknown requested output', infer('id-float32', { inputs: [x([1, 1], [1])], outputs: [{ name: 'nope' }] }), ['"nope"', 'unknown output']),
  bad('inputs disagree in a dimension the model names alike', infer('multi', { inputs: [pair('a', 2), pair('b', 3)] }), ['"multi"', 'rejected', '"batch"', '"a"', '"b"']),
  // Models, versions, labels and endpoints.
  missing('unknown model (v2 infer)', infer('nope', { inputs: [x([1, 1], [1])] }), ['"nope"']),
  missing('unknown model (v1 predict)', predict('nope', { instances: [[1]] }), ['"nope"']),
  missing('unknown model (v2 metadata)', { path: '/v2/models/nope' }, ['"nope"']),
  missing('unknown model (v2 ready)', { path: '/v2/models/nope/ready' }, ['"nope"']),
  missing('unknown model (v1 status)', { path: '/v1/models/nope' }, ['"nope"']),
  missing('unknown version (v2 infer)', { path: '/v2/models/id-float32/versions/9/infer', body: { inputs: [x([1, 1], [1])] } }, ['"id-float32"', 'version 9']),
  missing('unknown version (v2 metadata)', { path: '/v2/models/id-float32/versions/9' }, ['version 9']),
  missing('unknown version (v1 status)', { path: '/v1/models/id-float32/versions/9' }, ['version 9']),
  missing('unknown version (v1 predict)', { path: '/v1/models/id-float32/versions/9:predict', body: { instances: [[1]] } }, ['version 9']),
  missing('unknown label (v1 status)', { path: '/v1/models/id-float32/labels/nope' }, ['label "nope"']),
  missing('unknown label (v1 predict)', { path: '/v1/models/id-float32/labels/nope:predict', body: { instances: [[1]] } }, ['label "nope"']),
  bad('non-numeric version (v2)', { path: '/v2/models/id-float32/versions/abc' }, ['"abc"', 'version']),
  bad('non-numeric version (v2 infer)', { path: '/v2/models/id-float32/versions/1x/infer', body: { inputs: [x([1, 1], [1])] } }, ['"1x"']),
  bad('non-numeric version (v1 predict)', { path: '/v1/models/id-float32/versions/abc:predict', body: { instances: [[1]] } }, ['"abc"']),
  missing('unknown endpoint', { path: '/v3/models/id-float32' }, ['/v3/models/id-float32']),
  missing('model list is not an endpoint', { path: '/v2/models' }, ['/v2/models']),
  missing('wrong method: GET infer', { method: 'GET', path: '/v2/models/id-float32/infer' }, ['GET']),
  missing('wrong method: GET :predict', { method: 'GET', path: '/v1/models/id-float32:predict' }, ['GET']),
  missing('wrong method: POST health', { method: 'POST', path: '/v2/health/live', body: '{}' }, ['POST']),
  missing('wrong method: DELETE model', { method: 'DELETE', path: '/v2/models/id-float32' }, ['DELETE']),
  missing('wrong method: PUT metrics', { method: 'PUT', path: '/metrics', body: '' }, ['PUT']),
  // Bytes.
  bad('bad b64', predict('id-string', { instances: [[{ b64: 'not*base64!' }]] }), ['"x"', 'base64']),
  bad('bad b64 padding', predict('id-string', { inputs: { x: [[{ b64: 'YQ=' }]] } }), ['"x"', 'base64']),
  // Binary tensor extension.
  bad('header length longer than the body', binary('id-float32', binX('FP32', [1, 2], 8), [], '100000'), ['Inference-Header-Content-Length', '100000']),
  bad('non-numeric header length', binary('id-float32', binX('FP32', [1, 2], 8), [f32(1, 2)], 'abc'), ['Inference-Header-Content-Length', 'abc']),
  bad('negative header length', binary('id-float32', binX('FP32', [1, 2], 8), [f32(1, 2)], '-5'), ['Inference-Header-Content-Length']),
  bad('header length cuts the JSON short', binary('id-float32', binX('FP32', [1, 2], 8), [f32(1, 2)], '10'), [/JSON/]),
  bad('binary_data_size sum below the bytes that follow', binary('id-float32', binX('FP32', [1, 2], 8), [f32(1, 2, 3)]), ['"x"', '8', '12 bytes']),
  bad('binary_data_size beyond the bytes that follow', binary('id-float32', binX('FP32', [1, 3], 12), [f32(1, 2)]), ['"x"', 'binary_data_size 12', '8 bytes']),
  bad('binary_data_size ≠ element count × element size', binary('id-float32', binX('FP32', [1, 2], 4), [f32(1)]), ['"x"', 'binary_data_size 4', '2 FP32']),
  bad('binary_data_size without the header', infer('id-float32', binX('FP32', [1, 2], 8)), ['"x"', 'Inference-Header-Content-Length']),
  bad('binary_data_size and data both', infer('id-float32', { inputs: [{ ...x([1, 1], [1]), parameters: { binary_data_size: 4 } }] }), ['"x"', '"data"']),
  bad('binary_data_size not a byte count', infer('id-float32', { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 1], parameters: { binary_data_size: -4 } }] }), ['"x"', 'binary_data_size']),
  bad('BYTES length prefix runs past the data', binary('id-string', binX('BYTES', [1, 1], 6), [Buffer.from([9, 0, 0, 0, 0x61, 0x62])]), ['"x"', '9 bytes']),
  bad('BYTES shape with more elements than an array holds', binary('id-string', binX('BYTES', [65536, 65536], 4), [Buffer.alloc(4)]), ['"x"']),
  bad('BOOL byte other than 0 or 1', binary('id-bool', binX('BOOL', [1, 2], 2), [Buffer.from([1, 2])]), ['"x"', 'BOOL']),
  // Values nested deeper than the agent's error formatting can render (valid JSON all the same).
  bad('deeply nested shape', infer('id-float32', `{"inputs":[{"name":"x","datatype":"FP32","shape":${deepArray},"data":[1]}]}`), ['"x"', '"shape"']),
  bad('deeply nested object as an FP32 element (v2)', infer('id-float32', `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[${deepObject}]}]}`), ['"x"', 'element 0']),
  bad('deeply nested object as an FP32 element (v1)', predict('id-float32', `{"instances":[[${deepObject}]]}`), ['"x"', 'element 0']),
  bad('deeply nested binary_data_size', infer('id-float32', `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"parameters":{"binary_data_size":${deepArray}}}]}`), ['"x"', 'binary_data_size']),
  // Unsupported.
  ['BF16 datatype', { ...infer('id-float32', { inputs: [x([1, 1], [1], 'BF16')] }), status: 501, says: ['"x"', 'BF16'] }],
  [':classify', { path: '/v1/models/id-float32:classify', body: { examples: [] }, status: 501, says: [':classify'] }],
  [':regress', { path: '/v1/models/id-float32:regress', body: { examples: [] }, status: 501, says: [':regress'] }],
  ['shared-memory input', { ...infer('id-float32', { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 1], parameters: { shared_memory_region: 'r' } }] }), status: 501, says: ['"x"', 'shared-memory'] }],
];

let t: TestAgent;
/** A second agent with a 4 KiB body limit, for 413. */
let small: TestAgent;
const GOOD = { inputs: [x([1, 3], [1, -2, 3.5])] };

beforeAll(async () => {
  t = await startTestAgent({}, async (dir) => {
    for (const e of ['float32', 'int8', 'int32', 'int64', 'bool', 'string'] as const) await writeModelTree(dir, `id-${e}`, 1, identityModel(e));
    await writeModelTree(dir, 'multi', 1, multiIoModel());
    await writeModelTree(dir, 'static', 1, staticShapeModel());
  });
  small = await startTestAgent({ http: { bodyLimitBytes: 4096 } }, async (dir) => {
    await writeModelTree(dir, 'id-float32', 1, identityModel('float32'));
  });
});
afterAll(async () => {
  await Promise.all([t?.close(), small?.close()]);
});

describe('HTTP errors: bad input gets a 4xx {"error"} naming what was wrong', () => {
  it.each(CASES)('%s', async (_, c) => {
    expectError(await send(t.url, c), c.status, c.says);
  });

  it('the server is still up and serving after the whole table', async () => {
    expect(await getJson(`${t.url}/v2/health/live`)).toEqual({ status: 200, json: { live: true } });
    const good = await postJson(`${t.url}/v2/models/id-float32/infer`, GOOD);
    expect(good.status).toBe(200);
    expect(good.json.outputs[0].data).toEqual([1, -2, 3.5]);
    expect(await postJson(`${t.url}/v1/models/multi:predict`, { instances: [{ a: [1, 2, 3, 4], b: [4, 3, 2, 1] }] })).toMatchObject({ status: 200 });
  });
});

describe('HTTP errors: body limit (413)', () => {
  const big = JSON.stringify({ inputs: [x([1, 2000], Array.from({ length: 2000 }, (_, i) => i))] });

  it('refuses a body whose Content-Length is over http.bodyLimitBytes', async () => {
    expect(big.length).toBeGreaterThan(4096);
    expectError(await send(small.url, infer('id-float32', big)), 413, ['4096', 'bodyLimitBytes']);
    expectError(await send(small.url, predict('id-float32', { instances: Array.from({ length: 1000 }, () => [1, 2]) })), 413, ['4096']);
  });

  it('refuses a chunked body once it passes the limit', async () => {
    expectError(await sendChunked(small.url, '/v2/models/id-float32/infer', 64 * 1024), 413, ['4096', 'bodyLimitBytes']);
    expectError(await sendChunked(small.url, '/v1/models/id-float32:predict', 8 * 1024), 413, ['4096']);
  });

  it('still serves a body under the limit afterwards', async () => {
    expect(await getJson(`${small.url}/v2/health/live`)).toEqual({ status: 200, json: { live: true } });
    const good = await postJson(`${small.url}/v2/models/id-float32/infer`, GOOD);
    expect(good.status).toBe(200);
    expect(good.json.outputs[0].data).toEqual([1, -2, 3.5]);
  });
});
