/**
 * HPACK (RFC 7541), HTTP/2's header compression, for the agent's own HTTP/2
 * transport of gRPC. The decoder does all of it (dynamic table, Huffman, every
 * check the RFC asks of a decoder) because clients compress their requests
 * with both; the encoder uses only the static table and plain literals, so
 * neither side keeps state for the agent's responses.
 */

/** A header block that breaks RFC 7541: the connection must end with COMPRESSION_ERROR. */
export class HpackError extends Error {
  override readonly name = 'HpackError';
}

// RFC 7541 Appendix B for symbols 0-255: each code (most significant bit first)
// and its length in bits. EOS, symbol 256, is 30 one bits. Generated from
// golang/net http2/hpack/tables.go (huffmanCodes, huffmanCodeLen) at commit
// 0ca694d2a5adcce7f36d4d65e5f8d72390d94051.
const HUFFMAN_CODES = [
  0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
  0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
  0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
  0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
  0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
  0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
  0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
  0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
  0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
  0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
  0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
  0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
  0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
  0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
  0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
  0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
  0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
  0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
  0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
  0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
  0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
  0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
  0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
  0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
  0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
  0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
  0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
  0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
  0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
  0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
  0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
  0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];
const HUFFMAN_LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
  28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
  5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
  6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
  24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
  21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
  26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

// RFC 7541 Appendix A, index 1 first. Generated from golang/net
// http2/hpack/static_table.go at the same commit.
const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'], [':scheme', 'http'],
  [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'], [':status', '304'], [':status', '400'],
  [':status', '404'], [':status', '500'], ['accept-charset', ''], ['accept-encoding', 'gzip, deflate'], ['accept-language', ''],
  ['accept-ranges', ''], ['accept', ''], ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''],
  ['cache-control', ''], ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
  ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''], ['date', ''], ['etag', ''], ['expect', ''],
  ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''], ['if-modified-since', ''], ['if-none-match', ''], ['if-range', ''],
  ['if-unmodified-since', ''], ['last-modified', ''], ['link', ''], ['location', ''], ['max-forwards', ''], ['proxy-authenticate', ''],
  ['proxy-authorization', ''], ['range', ''], ['referer', ''], ['refresh', ''], ['retry-after', ''], ['server', ''], ['set-cookie', ''],
  ['strict-transport-security', ''], ['transfer-encoding', ''], ['user-agent', ''], ['vary', ''], ['via', ''], ['www-authenticate', ''],
];
const EOS = 256;
const EOS_CODE = 0x3fffffff;
const EOS_LENGTH = 30;

/** RFC 7541 5.1: integers past this are refused (no length or index in a sane header block comes near it). */
const MAX_INTEGER = 0x7fffffff;
/** RFC 7541 4.1: an entry's size is its name's and value's octets plus 32. */
const ENTRY_OVERHEAD = 32;
/** Huffman output up to this size goes through one reused buffer; a longer string gets one of its own. */
const SCRATCH_BYTES = 8192;

/**
 * The Huffman decoder: a state machine that reads a byte at a step (nghttp2's
 * design, which reads 4 bits). A state is an internal node of the code tree
 * (257 leaves, so 256 internal nodes; the root is 0). steps[state * 256 + byte]
 * packs the state after those 8 bits (bits 0-7), the symbols completed on the
 * way (bits 8-15 and 16-23; no code is shorter than 5 bits, so a byte
 * completes at most two), how many (bits 24-25) and STEP_EOS where the byte
 * completes EOS. The table is 256 KiB, built on first use in a few
 * milliseconds; half the lookups of 4-bit steps, which matters for the request
 * path that clients send Huffman-coded and unindexed on every call.
 */
interface HuffmanTables {
  steps: Uint32Array;
  /** Per state, the bits read since the last symbol: the padding if the string ends there. */
  depth: Uint8Array;
  /** Per state, 1 where those bits are all ones (a prefix of EOS, the only padding allowed). */
  ones: Uint8Array;
  scratch: Buffer;
}
const STEP_EOS = 1 << 27;
const LEAF = 1 << 16;

let huffmanTables: HuffmanTables | undefined;

/** Built on first use rather than at import. */
function huffman(): HuffmanTables {
  return (huffmanTables ??= buildHuffman());
}

function buildHuffman(): HuffmanTables {
  // children[node * 2 + bit]: an internal node's number, or LEAF | symbol.
  const children = new Int32Array(256 * 2).fill(-1);
  const depth = new Uint8Array(256);
  const ones = new Uint8Array(256);
  ones[0] = 1;
  let nodes = 1;
  for (let symbol = 0; symbol <= EOS; symbol++) {
    const code = symbol === EOS ? EOS_CODE : (HUFFMAN_CODES[symbol] as number);
    const length = symbol === EOS ? EOS_LENGTH : (HUFFMAN_LENGTHS[symbol] as number);
    let node = 0;
    for (let i = length - 1; i > 0; i--) {
      const bit = (code >>> i) & 1;
      const slot = node * 2 + bit;
      if (children[slot] === -1) {
        depth[nodes] = (depth[node] as number) + 1;
        ones[nodes] = ones[node] === 1 && bit === 1 ? 1 : 0;
        children[slot] = nodes++;
      }
      node = children[slot] as number;
    }
    children[node * 2 + (code & 1)] = LEAF | symbol;
  }
  const steps = new Uint32Array(256 * 256);
  for (let state = 0; state < 256; state++) {
    for (let byte = 0; byte < 256; byte++) {
      let node = state;
      let step = 0;
      let count = 0;
      for (let i = 7; i >= 0; i--) {
        const child = children[node * 2 + ((byte >>> i) & 1)] as number;
        if ((child & LEAF) === 0) {
          node = child;
        } else if ((child & 0x1ff) === EOS) {
          step |= STEP_EOS;
          break;
        } else {
          step |= (child & 0xff) << (8 + 8 * count);
          count++;
          node = 0;
        }
      }
      steps[state * 256 + byte] = step | node | (count << 24);
    }
  }
  return { steps, depth, ones, scratch: Buffer.allocUnsafe(SCRATCH_BYTES) };
}

/** RFC 7541 5.2: the Huffman-coded string in src[start, end). */
function huffmanDecode(src: Buffer, start: number, end: number): string {
  const { steps, depth, ones, scratch } = huffman();
  // Every code is at least 5 bits, so this many symbols at most.
  const most = Math.floor(((end - start) * 8) / 5);
  const out = most <= scratch.length ? scratch : Buffer.allocUnsafe(most);
  let length = 0;
  let state = 0;
  for (let i = start; i < end; i++) {
    const step = steps[(state << 8) | (src[i] as number)] as number;
    if (step & STEP_EOS) throw new HpackError('Huffman-coded string contains the EOS symbol');
    const count = (step >>> 24) & 3;
    if (count !== 0) {
      out[length++] = (step >>> 8) & 0xff;
      if (count === 2) out[length++] = (step >>> 16) & 0xff;
    }
    state = step & 0xff;
  }
  if (ones[state] !== 1) throw new HpackError(`Huffman-coded string ends with ${depth[state]} bits of padding that are not all ones`);
  if ((depth[state] as number) > 7) throw new HpackError(`Huffman-coded string ends with ${depth[state]} bits of padding; at most 7 are allowed`);
  return out.toString('latin1', 0, length);
}

const STATIC_COUNT = STATIC_TABLE.length;
const EMPTY = Buffer.alloc(0);

export class HpackDecoder {
  private readonly maxTableSize: number;
  private readonly maxListSize: number;
  /** The dynamic table's limit as the peer last set it (RFC 7541 4.2). */
  private tableLimit: number;
  /** The dynamic table: a ring of names and values, `newest` the slot of index 62, `count` entries before it. */
  private names: string[] = new Array<string>(16).fill('');
  private values: string[] = new Array<string>(16).fill('');
  private newest = -1;
  private count = 0;
  private tableSize = 0;
  /** The block being decoded and the offset of its next byte. */
  private block: Buffer = EMPTY;
  private pos = 0;

  /** maxTableSize: our SETTINGS_HEADER_TABLE_SIZE (default 4096): the most a peer's dynamic table size update may set. maxListSize: the most bytes (RFC 7540 6.5.2 size: name + value + 32 per field) a decoded block may have (default 65535, node:http2's SETTINGS_MAX_HEADER_LIST_SIZE). */
  constructor(options: { maxTableSize?: number; maxListSize?: number } = {}) {
    this.maxTableSize = options.maxTableSize ?? 4096;
    this.maxListSize = options.maxListSize ?? 65535;
    this.tableLimit = this.maxTableSize;
  }

  /**
   * Decodes one complete header block (HEADERS + CONTINUATION payloads joined)
   * into [name0, value0, name1, value1, ...], names as sent. Throws HpackError
   * on anything RFC 7541 forbids; after that the decoder's state is undefined
   * (the connection ends anyway).
   */
  decode(block: Buffer): string[] {
    this.block = block;
    this.pos = 0;
    const fields: string[] = [];
    let listSize = 0;
    try {
      while (this.pos < block.length) {
        const first = block[this.pos] as number;
        let name: string;
        let value: string;
        if (first >= 0x80) {
          // 6.1: an indexed field.
          const index = this.integer(0x7f);
          if (index <= STATIC_COUNT && index > 0) {
            const entry = STATIC_TABLE[index - 1] as readonly [string, string];
            name = entry[0];
            value = entry[1];
          } else {
            const slot = this.dynamicSlot(index);
            name = this.names[slot] as string;
            value = this.values[slot] as string;
          }
        } else if (first >= 0x40) {
          // 6.2.1: a literal the table keeps.
          name = this.literalName(0x3f);
          value = this.string();
          this.insert(name, value);
        } else if (first >= 0x20) {
          // 6.3: a dynamic table size update, only ahead of every field.
          if (fields.length > 0) throw new HpackError('dynamic table size update after a header field; it must start the header block');
          const limit = this.integer(0x1f);
          if (limit > this.maxTableSize) {
            throw new HpackError(`dynamic table size update to ${limit} bytes exceeds SETTINGS_HEADER_TABLE_SIZE (${this.maxTableSize})`);
          }
          this.tableLimit = limit;
          this.evictTo(limit);
          continue;
        } else {
          // 6.2.2 and 6.2.3: a literal without indexing or never indexed; to the decoder they are the same.
          name = this.literalName(0x0f);
          value = this.string();
        }
        listSize += name.length + value.length + ENTRY_OVERHEAD;
        if (listSize > this.maxListSize) {
          throw new HpackError(`header list exceeds ${this.maxListSize} bytes (name + value + 32 per field) at field ${fields.length / 2 + 1} (${name})`);
        }
        fields.push(name, value);
      }
    } finally {
      // Not to keep a socket's buffer alive between blocks.
      this.block = EMPTY;
    }
    return fields;
  }

  /** RFC 7541 5.1: the integer whose N-bit prefix (mask 2^N - 1) is in the byte at pos. */
  private integer(mask: number): number {
    const block = this.block;
    if (this.pos >= block.length) throw new HpackError('header block ends inside an integer');
    let value = (block[this.pos++] as number) & mask;
    if (value < mask) return value;
    for (let scale = 1; ; scale *= 128) {
      if (this.pos >= block.length) throw new HpackError('header block ends inside an integer');
      const byte = block[this.pos++] as number;
      value += (byte & 0x7f) * scale;
      if (value > MAX_INTEGER) throw new HpackError(`integer exceeds 2^31-1 (${MAX_INTEGER})`);
      if (byte < 0x80) return value;
      // 5 continuation bytes hold 35 bits; more can only be zeros padding out a small value.
      if (scale === 128 ** 4) throw new HpackError('integer continues past the 5 bytes a 31-bit value needs');
    }
  }

  /** A literal field's name: an index with an N-bit prefix, or 0 and a string literal. */
  private literalName(mask: number): string {
    const index = this.integer(mask);
    if (index === 0) return this.string();
    if (index <= STATIC_COUNT) return (STATIC_TABLE[index - 1] as readonly [string, string])[0];
    return this.names[this.dynamicSlot(index)] as string;
  }

  /** RFC 7541 5.2: a string literal, Huffman-coded or raw octets (as latin1, one character per octet). */
  private string(): string {
    const block = this.block;
    const huffmanCoded = this.pos < block.length && ((block[this.pos] as number) & 0x80) !== 0;
    const length = this.integer(0x7f);
    const start = this.pos;
    if (length > block.length - start) {
      throw new HpackError(`string literal of ${length} bytes runs past the end of the header block (${block.length - start} left)`);
    }
    this.pos = start + length;
    return huffmanCoded ? huffmanDecode(block, start, this.pos) : block.toString('latin1', start, this.pos);
  }

  /** The ring slot of dynamic table index 62 and up (2.3.3: 62 is the newest). */
  private dynamicSlot(index: number): number {
    const age = index - STATIC_COUNT - 1;
    if (index === 0 || age >= this.count) {
      throw new HpackError(
        `header field index ${index} is not in the static table (1-${STATIC_COUNT}) or the dynamic table (${this.count} entries)`,
      );
    }
    return (this.newest - age) & (this.names.length - 1);
  }

  /** RFC 7541 4.4: adds an entry, evicting the oldest ones to make room; one larger than the table empties it. */
  private insert(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    if (size > this.tableLimit) {
      this.evictTo(0);
      return;
    }
    this.evictTo(this.tableLimit - size);
    if (this.count === this.names.length) this.grow();
    this.newest = (this.newest + 1) & (this.names.length - 1);
    this.names[this.newest] = name;
    this.values[this.newest] = value;
    this.count++;
    this.tableSize += size;
  }

  private evictTo(size: number): void {
    const mask = this.names.length - 1;
    while (this.tableSize > size) {
      const oldest = (this.newest - this.count + 1) & mask;
      this.tableSize -= (this.names[oldest] as string).length + (this.values[oldest] as string).length + ENTRY_OVERHEAD;
      // Not to keep evicted strings alive.
      this.names[oldest] = '';
      this.values[oldest] = '';
      this.count--;
    }
  }

  /** Doubles the ring, oldest entry first in slot 0. */
  private grow(): void {
    const mask = this.names.length - 1;
    const names = new Array<string>(this.names.length * 2).fill('');
    const values = new Array<string>(this.names.length * 2).fill('');
    for (let i = 0; i < this.count; i++) {
      const slot = (this.newest - this.count + 1 + i) & mask;
      names[i] = this.names[slot] as string;
      values[i] = this.values[slot] as string;
    }
    this.names = names;
    this.values = values;
    this.newest = this.count - 1;
  }
}

/** The static table by name: the first index with that name, and the index of each name and value pair. */
interface StaticName {
  index: number;
  values: Map<string, number>;
}
let staticIndex: Map<string, StaticName> | undefined;

function staticNames(): Map<string, StaticName> {
  if (staticIndex) return staticIndex;
  const names = new Map<string, StaticName>();
  STATIC_TABLE.forEach(([name, value], i) => {
    const entry = names.get(name) ?? { index: i + 1, values: new Map<string, number>() };
    entry.values.set(value, i + 1);
    names.set(name, entry);
  });
  return (staticIndex = names);
}

/** Strings up to this length are copied a character at a time, cheaper than Buffer.write's call for short ones. */
const SHORT_STRING = 64;

export class HpackEncoder {
  private readonly names = staticNames();

  /**
   * Encodes header fields for a response: a static table entry that matches
   * name and value as an indexed field, else a literal without indexing, its
   * name indexed where the static table has it. No dynamic table and no
   * Huffman, so a peer keeps nothing for it. Names must be lowercase (HTTP/2
   * requires it; nothing here changes them) and names and values latin1: each
   * character is written as one octet.
   */
  encode(fields: readonly (readonly [string, string])[]): Buffer {
    // Sized exactly first, so the answer is one allocation with nothing to trim.
    let length = 0;
    for (const [name, value] of fields) {
      const known = this.names.get(name);
      if (known?.values.has(value)) length += 1;
      else length += (known ? integerLength(0x0f, known.index) : 1 + stringLength(name)) + stringLength(value);
    }
    const out = Buffer.allocUnsafe(length);
    let pos = 0;
    for (const [name, value] of fields) {
      const known = this.names.get(name);
      const both = known?.values.get(value);
      if (both !== undefined) {
        out[pos++] = 0x80 | both; // 6.1; every static index fits the 7-bit prefix
        continue;
      }
      if (known) {
        pos = writeInteger(out, pos, 0x0f, known.index); // 6.2.2 (0000), indexed name
      } else {
        out[pos++] = 0x00; // 6.2.2, literal name
        pos = writeString(out, pos, name);
      }
      pos = writeString(out, pos, value);
    }
    return out;
  }
}

/** The bytes of `value` as an integer with an N-bit prefix (mask 2^N - 1). */
function integerLength(mask: number, value: number): number {
  if (value < mask) return 1;
  let length = 2;
  for (let rest = value - mask; rest >= 0x80; rest = Math.floor(rest / 0x80)) length++;
  return length;
}

/** The bytes of a raw string literal: its length as an integer with a 7-bit prefix, then its octets. */
function stringLength(s: string): number {
  return integerLength(0x7f, s.length) + s.length;
}

/** RFC 7541 5.1: `value` with an N-bit prefix (mask 2^N - 1); the representation's other bits in that byte are 0 in both uses here. */
function writeInteger(out: Buffer, pos: number, mask: number, value: number): number {
  if (value < mask) {
    out[pos++] = value;
    return pos;
  }
  out[pos++] = mask;
  let rest = value - mask;
  while (rest >= 0x80) {
    out[pos++] = (rest % 0x80) | 0x80;
    rest = Math.floor(rest / 0x80);
  }
  out[pos++] = rest;
  return pos;
}

/** RFC 7541 5.2: a raw (not Huffman-coded) string literal, one octet per character. */
function writeString(out: Buffer, pos: number, s: string): number {
  pos = writeInteger(out, pos, 0x7f, s.length);
  if (s.length > SHORT_STRING) return pos + out.write(s, pos, 'latin1');
  for (let i = 0; i < s.length; i++) out[pos++] = s.charCodeAt(i);
  return pos;
}
