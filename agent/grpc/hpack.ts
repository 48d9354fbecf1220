/**
 * HPACK (RFC 7541), HTTP/2's header compression, for the agent's own HTTP/2
 * transport of gRPC. The decoder does all of it (dynamic table, Huffman, every
 * check the RFC asks of a decoder) because clients compress their requests
 * with both; the encoder uses only the static table and plain literals, so
 * neither side keeps state for the agent's responses.
 */
import { HUFFMAN_CODES, HUFFMAN_LENGTHS, STATIC_TABLE } from './hpack-tables.js';

/** A header block that breaks RFC 7541: the connection must end with COMPRESSION_ERROR. */
export class HpackError extends Error {
  override readonly name = 'HpackError';
}

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
