/**
 * A JSON reader for infer bodies, for the hot path: V8's JSON.parse spends
 * about 13 ns on every element of a number array (an MNIST digit's 784 pixels
 * cost 10 µs, more than the model), building a JS array the codec then copies
 * into a typed one. This reader scans the bytes once and puts the numbers of
 * each tensor's arrays straight into a Float64Array.
 *
 * Contract: `parseV2Json(buf, end)` and `parseV1Json(buf, end)` return either
 * exactly what `JSON.parse(buf.toString('utf8', 0, end))` returns, except that
 * some non-empty arrays whose elements are all numbers come back as a
 * Float64Array of the same values; or undefined, and the caller runs
 * JSON.parse (which also words any syntax error). Which arrays: for v2 (Open
 * Inference Protocol) the `data` array of an object in the top-level `inputs`
 * array; for v1 (TensorFlow Serving `:predict`) any array at any depth under
 * the top-level `instances` or `inputs`, so a nested tensor comes back as JS
 * arrays whose innermost rows are Float64Arrays. The reader gives up rather
 * than guess: on any syntax error, string escape, non-ASCII byte, `__proto__`
 * key or deep nesting.
 *
 * The Float64Arrays are views of a scratch buffer that the next call reuses:
 * read (copy) them before parsing again. Allocating a typed array per request
 * costs more than scanning its numbers.
 *
 * Numbers are exact: when the literal's digits form an integer below 2^53
 * and its power of ten is at most 22, both operands are exact doubles, so one
 * multiplication or division rounds correctly (Clinger's fast path), as
 * JSON.parse does; anything else (long mantissas, large exponents) goes
 * through Number() of the literal, which is also correctly rounded.
 */

/** Thrown to give up; caught in parseV2Json. */
const GIVE_UP = new Error('fast JSON path gave up');

const MAX_DEPTH = 64;
/** 2^53 - 1: integers up to here are exact doubles. */
const MAX_EXACT = Number.MAX_SAFE_INTEGER;
const POW10 = [1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22];

/** Where a value sits: only `inputs[k].data` gets a typed array. */
const AT_OTHER = 0;
const AT_ROOT = 1;
const AT_INPUTS = 2;
const AT_INPUT = 3;
const AT_DATA = 4;
const AT_V1_ROOT = 5;
/** Inside v1 `instances` or `inputs`: every number array is a tensor row. */
const AT_V1_TENSOR = 6;

/** Numbers of the data arrays of one parse, one region each; reused by the next parse. */
const SCRATCH = 4096;
/** Above this many numbers the scratch is not kept for the next request (memory on small boards). */
const KEEP = 1 << 16;
let scratch = new Float64Array(SCRATCH);
/** Where the next data array starts in scratch. */
let used = 0;
/** The body being read as latin1 text, made on the first number that needs Number(). */
let text: string | undefined;

/** Keys and values every v2 request repeats, matched by bytes instead of decoded. */
const COMMON = [
  'inputs', 'outputs', 'name', 'shape', 'datatype', 'data', 'parameters', 'id', 'binary_data_size', 'binary_data_output', 'binary_data',
  'BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64', 'FP16', 'FP32', 'FP64', 'BYTES',
].map((text) => ({ text, bytes: Buffer.from(text, 'latin1') }));

/** A v2 infer body (or the JSON header of a binary one); see the contract above. */
export function parseV2Json(body: Buffer, length: number): unknown {
  return parse(body, length, AT_ROOT);
}

/** A v1 `:predict` body; see the contract above. */
export function parseV1Json(body: Buffer, length: number): unknown {
  return parse(body, length, AT_V1_ROOT);
}

function parse(body: Buffer, length: number, root: number): unknown {
  used = 0;
  text = undefined;
  if (scratch.length > KEEP) scratch = new Float64Array(SCRATCH);
  const end = Math.min(length, body.length);
  const reader = new Reader(end === body.length ? body : body.subarray(0, end), end);
  try {
    const value = reader.value(root);
    reader.skipWhitespace();
    return reader.p === reader.end ? value : undefined;
  } catch (err) {
    if (err === GIVE_UP || err instanceof RangeError) return undefined;
    throw err;
  } finally {
    text = undefined; // do not keep the body's text alive
  }
}

/** Where the value of `key` sits, in an object at `at`. */
function childOf(at: number, key: string): number {
  switch (at) {
    case AT_ROOT:
      return key === 'inputs' ? AT_INPUTS : AT_OTHER;
    case AT_INPUT:
      return key === 'data' ? AT_DATA : AT_OTHER;
    case AT_V1_ROOT:
      return key === 'instances' || key === 'inputs' ? AT_V1_TENSOR : AT_OTHER;
    case AT_V1_TENSOR: // named instances and columnar inputs: {"input name": tensor}
      return AT_V1_TENSOR;
    default:
      return AT_OTHER;
  }
}

const isWhitespace = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

/**
 * Recursive descent over the bytes, which end at `end` (the buffer is cut
 * there). Hot loops work on locals and write the position back; past the end
 * `at()` gives -1, and a plain index gives undefined, which no test matches.
 */
class Reader {
  p = 0;
  private depth = 0;

  constructor(
    private readonly b: Buffer,
    readonly end: number,
  ) {}

  private at(p: number): number {
    return p < this.end ? (this.b[p] as number) : -1;
  }

  skipWhitespace(): void {
    let p = this.p;
    while (p < this.end && isWhitespace(this.b[p] as number)) p++;
    this.p = p;
  }

  value(at: number): unknown {
    this.skipWhitespace();
    const c = this.at(this.p);
    switch (c) {
      case 0x7b: // {
        return this.object(at);
      case 0x5b: // [
        if (at === AT_DATA || at === AT_V1_TENSOR) {
          const numbers = this.numberArray();
          if (numbers) return numbers;
        }
        return this.array(at);
      case 0x22: // "
        return this.string();
      case 0x74: // t
        return this.literal('true', true);
      case 0x66: // f
        return this.literal('false', false);
      case 0x6e: // n
        return this.literal('null', null);
      default:
        if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
        throw GIVE_UP;
    }
  }

  private literal<T>(word: string, value: T): T {
    if (this.p + word.length > this.end) throw GIVE_UP;
    for (let i = 0; i < word.length; i++) if (this.b[this.p + i] !== word.charCodeAt(i)) throw GIVE_UP;
    this.p += word.length;
    return value;
  }

  /** Past an opening bracket. */
  private enter(): void {
    if (++this.depth > MAX_DEPTH) throw GIVE_UP;
    this.p++;
  }

  /** Past `,` (true) or the closing bracket (false); anything else gives up. */
  private next(close: number): boolean {
    this.skipWhitespace();
    const c = this.at(this.p++);
    if (c === 0x2c) return true;
    if (c === close) return false;
    throw GIVE_UP;
  }

  private object(at: number): Record<string, unknown> {
    this.enter();
    const obj: Record<string, unknown> = {};
    this.skipWhitespace();
    if (this.at(this.p) === 0x7d) {
      this.p++;
    } else {
      do {
        this.skipWhitespace();
        if (this.at(this.p) !== 0x22) throw GIVE_UP;
        const key = this.string();
        // JSON.parse makes "__proto__" an own property; assignment would set the prototype.
        if (key === '__proto__') throw GIVE_UP;
        this.skipWhitespace();
        if (this.at(this.p) !== 0x3a) throw GIVE_UP; // :
        this.p++;
        obj[key] = this.value(childOf(at, key));
      } while (this.next(0x7d));
    }
    this.depth--;
    return obj;
  }

  private array(at: number): unknown[] {
    this.enter();
    const arr: unknown[] = [];
    this.skipWhitespace();
    if (this.at(this.p) === 0x5d) {
      this.p++;
    } else {
      const child = at === AT_INPUTS ? AT_INPUT : at === AT_V1_TENSOR ? AT_V1_TENSOR : AT_OTHER;
      do arr.push(this.value(child));
      while (this.next(0x5d));
    }
    this.depth--;
    return arr;
  }

  /** An ASCII string without escapes (anything else is JSON.parse's job). */
  private string(): string {
    const b = this.b;
    const end = this.end;
    const start = this.p + 1;
    for (let p = start; p < end; p++) {
      const c = b[p] as number;
      if (c === 0x22) {
        this.p = p + 1;
        return common(b, start, p) ?? b.toString('latin1', start, p);
      }
      // Escapes, control characters (invalid JSON) and non-ASCII text.
      if (c === 0x5c || c < 0x20 || c >= 0x80) throw GIVE_UP;
    }
    throw GIVE_UP;
  }

  private number(): number {
    const value = readNumber(this.b, this.p, this.end);
    this.p = numberEnd;
    return value;
  }

  /**
   * A non-empty array of numbers only, as a Float64Array; undefined (with the
   * position still at the `[`) when it holds anything else, for array() to read.
   */
  private numberArray(): Float64Array | undefined {
    const b = this.b;
    const end = this.end;
    let p = this.p + 1;
    const first = used;
    let n = first;
    let out = scratch;
    for (;;) {
      let c = b[p] as number;
      while (c <= 0x20 && isWhitespace(c)) c = b[++p] as number;
      if (c !== 0x2d && !(c >= 0x30 && c <= 0x39)) return undefined;
      if (n === out.length) {
        const grown = new Float64Array(n * 2);
        grown.set(out);
        scratch = out = grown;
      }
      if (c === 0x30 && b[p + 1] === 0x2c) {
        // "0," with nothing to parse: zeros come in runs (padding, image background, sparse features).
        const room = out.length;
        do {
          out[n++] = 0;
          p += 2;
        } while (n < room && b[p] === 0x30 && b[p + 1] === 0x2c);
        continue;
      }
      // readNumber, inlined by hand: this loop runs once per element of every request.
      const start = p;
      const negative = c === 0x2d;
      if (negative) c = b[++p] as number;
      // The digits as one integer: exact while it stays below 2^53, as every step is then exact too.
      let mantissa = 0;
      let exponent = 0;
      if (c === 0x30) {
        c = b[++p] as number;
      } else if (c >= 0x31 && c <= 0x39) {
        do {
          mantissa = mantissa * 10 + (c - 0x30);
          c = b[++p] as number;
        } while (c >= 0x30 && c <= 0x39);
      } else {
        throw GIVE_UP;
      }
      if (c === 0x2e) {
        c = b[++p] as number;
        if (!(c >= 0x30 && c <= 0x39)) throw GIVE_UP;
        do {
          mantissa = mantissa * 10 + (c - 0x30);
          exponent--;
          c = b[++p] as number;
        } while (c >= 0x30 && c <= 0x39);
      }
      if (c === 0x65 || c === 0x45 || mantissa > MAX_EXACT || exponent < -22) {
        // Exponents and long mantissas: the general reader.
        out[n++] = readNumber(b, start, end);
        p = numberEnd;
      } else {
        const value = exponent < 0 ? mantissa / (POW10[-exponent] as number) : mantissa;
        out[n++] = negative ? -value : value;
      }
      c = b[p] as number;
      while (c <= 0x20 && isWhitespace(c)) c = b[++p] as number;
      p++;
      if (c === 0x2c) continue;
      if (c === 0x5d) break;
      throw GIVE_UP;
    }
    this.p = p;
    used = n;
    return out.subarray(first, n);
  }
}

/** The COMMON string spelled by bytes [start, end), if any. */
function common(b: Buffer, start: number, end: number): string | undefined {
  const length = end - start;
  for (const { text, bytes } of COMMON) {
    if (bytes.length !== length) continue;
    let i = 0;
    while (i < length && bytes[i] === b[start + i]) i++;
    if (i === length) return text;
  }
  return undefined;
}

/** Where the last readNumber stopped (a second return value without an allocation). */
let numberEnd = 0;

/** The JSON number at `start`, correctly rounded; sets numberEnd. */
function readNumber(b: Buffer, start: number, end: number): number {
  let p = start;
  let c = b[p] as number;
  const negative = c === 0x2d;
  if (negative) c = ++p < end ? (b[p] as number) : -1;
  let mantissa = 0;
  let digits = 0; // significant digits in the mantissa
  let exponent = 0;
  if (c === 0x30) {
    c = ++p < end ? (b[p] as number) : -1;
  } else if (c >= 0x31 && c <= 0x39) {
    do {
      mantissa = mantissa * 10 + (c - 0x30);
      digits++;
      c = ++p < end ? (b[p] as number) : -1;
    } while (c >= 0x30 && c <= 0x39);
  } else {
    throw GIVE_UP;
  }
  if (c === 0x2e) {
    c = ++p < end ? (b[p] as number) : -1;
    if (!(c >= 0x30 && c <= 0x39)) throw GIVE_UP;
    do {
      // Leading zeros are not significant digits.
      if (digits > 0 || c !== 0x30) digits++;
      mantissa = mantissa * 10 + (c - 0x30);
      exponent--;
      c = ++p < end ? (b[p] as number) : -1;
    } while (c >= 0x30 && c <= 0x39);
  }
  if (c === 0x65 || c === 0x45) {
    c = ++p < end ? (b[p] as number) : -1;
    let sign = 1;
    if (c === 0x2b || c === 0x2d) {
      if (c === 0x2d) sign = -1;
      c = ++p < end ? (b[p] as number) : -1;
    }
    if (!(c >= 0x30 && c <= 0x39)) throw GIVE_UP;
    let e = 0;
    do {
      if (e < 100000) e = e * 10 + (c - 0x30);
      c = ++p < end ? (b[p] as number) : -1;
    } while (c >= 0x30 && c <= 0x39);
    exponent += sign * e;
  }
  numberEnd = p;
  if (digits <= 15 && exponent >= -22 && exponent <= 22) {
    const value = exponent < 0 ? mantissa / (POW10[-exponent] as number) : mantissa * (POW10[exponent] as number);
    return negative ? -value : value;
  }
  // Beyond the exact fast path: the literal itself (sign included), correctly rounded by Number().
  // Slicing one latin1 copy of the body is cheaper than decoding every such literal from bytes.
  text ??= b.toString('latin1');
  return Number(text.slice(start, p));
}
