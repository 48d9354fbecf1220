/**
 * The HPACK codec (agent/grpc/hpack.ts): RFC 7541 Appendix C's examples (hex
 * from golang/net http2/hpack/hpack_test.go, which quotes the RFC); node:http2's
 * encoder (nghttp2, with its dynamic table, Huffman and CONTINUATION) read off
 * a raw socket; the encoder's output read back by node:http2; and each way a
 * header block can break the RFC.
 */
import { once } from 'node:events';
import { connect, type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { HpackDecoder, HpackEncoder, HpackError } from '../agent/grpc/hpack.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const flat = (fields: [string, string][]): string[] => fields.flat();

/**
 * The dynamic table as indexed fields read it, newest first: indexed fields
 * leave the table as it is, and the index one past the last must be refused.
 */
function dynamicTable(decoder: HpackDecoder): [string, string][] {
  const entries: [string, string][] = [];
  for (let index = 62; ; index++) {
    const block = Buffer.from(index < 127 ? [0x80 | index] : [0xff, index - 127]);
    try {
      const [name, value] = decoder.decode(block);
      entries.push([name as string, value as string]);
    } catch (err) {
      expect(err).toBeInstanceOf(HpackError);
      return entries;
    }
  }
}

/** Decodes `steps` in order on one decoder, checking each block's fields and the dynamic table after it. */
function series(decoder: HpackDecoder, steps: { block: string; fields: [string, string][]; table: [string, string][] }[]): void {
  for (const step of steps) {
    expect(decoder.decode(hex(step.block))).toEqual(flat(step.fields));
    expect(dynamicTable(decoder)).toEqual(step.table);
  }
}

const C3_FIRST: [string, string][] = [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'www.example.com']];
const C3_SECOND: [string, string][] = [...C3_FIRST, ['cache-control', 'no-cache']];
const C3_THIRD: [string, string][] = [[':method', 'GET'], [':scheme', 'https'], [':path', '/index.html'], [':authority', 'www.example.com'], ['custom-key', 'custom-value']];
const C5_FIRST: [string, string][] = [[':status', '302'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'], ['location', 'https://www.example.com']];
const C5_SECOND: [string, string][] = [[':status', '307'], ...C5_FIRST.slice(1)];
const COOKIE = 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1';
const C5_THIRD: [string, string][] = [
  [':status', '200'], ['cache-control', 'private'], ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'], ['location', 'https://www.example.com'],
  ['content-encoding', 'gzip'], ['set-cookie', COOKIE],
];
const C3_TABLES: [string, string][][] = [
  [[':authority', 'www.example.com']],
  [['cache-control', 'no-cache'], [':authority', 'www.example.com']],
  [['custom-key', 'custom-value'], ['cache-control', 'no-cache'], [':authority', 'www.example.com']],
];
// With a 256-byte table the responses evict: after the third only these fit.
const C5_TABLES: [string, string][][] = [
  [...C5_FIRST].reverse(),
  [[':status', '307'], ...[...C5_FIRST].reverse().slice(0, 3)],
  [['set-cookie', COOKIE], ['content-encoding', 'gzip'], ['date', 'Mon, 21 Oct 2013 20:13:22 GMT']],
];

describe('HPACK decoder: RFC 7541 Appendix C', () => {
  it('C.2: one literal of each kind and an indexed field; only the literal with indexing enters the table', () => {
    const cases: { block: string; fields: [string, string][]; table: [string, string][] }[] = [
      { block: '400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572', fields: [['custom-key', 'custom-header']], table: [['custom-key', 'custom-header']] },
      { block: '040c 2f73 616d 706c 652f 7061 7468', fields: [[':path', '/sample/path']], table: [] },
      { block: '1008 7061 7373 776f 7264 0673 6563 7265 74', fields: [['password', 'secret']], table: [] },
      { block: '82', fields: [[':method', 'GET']], table: [] },
    ];
    for (const c of cases) series(new HpackDecoder(), [c]);
  });

  it('C.3: three requests without Huffman on one decoder', () => {
    series(new HpackDecoder(), [
      { block: '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d', fields: C3_FIRST, table: C3_TABLES[0]! },
      { block: '8286 84be 5808 6e6f 2d63 6163 6865', fields: C3_SECOND, table: C3_TABLES[1]! },
      { block: '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65', fields: C3_THIRD, table: C3_TABLES[2]! },
    ]);
  });

  it('C.4: the same requests with Huffman', () => {
    series(new HpackDecoder(), [
      { block: '8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff', fields: C3_FIRST, table: C3_TABLES[0]! },
      { block: '8286 84be 5886 a8eb 1064 9cbf', fields: C3_SECOND, table: C3_TABLES[1]! },
      { block: '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf', fields: C3_THIRD, table: C3_TABLES[2]! },
    ]);
  });

  it('C.5: three responses without Huffman on a 256-byte table, which evicts', () => {
    series(new HpackDecoder({ maxTableSize: 256 }), [
      {
        block: `4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
                2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d`,
        fields: C5_FIRST,
        table: C5_TABLES[0]!,
      },
      { block: '4803 3330 37c1 c0bf', fields: C5_SECOND, table: C5_TABLES[1]! },
      {
        block: `88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
                54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
                5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31`,
        fields: C5_THIRD,
        table: C5_TABLES[2]!,
      },
    ]);
  });

  it('C.6: the same responses with Huffman', () => {
    series(new HpackDecoder({ maxTableSize: 256 }), [
      {
        block: `4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
                2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3`,
        fields: C5_FIRST,
        table: C5_TABLES[0]!,
      },
      { block: '4883 640e ffc1 c0bf', fields: C5_SECOND, table: C5_TABLES[1]! },
      {
        block: `88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
                77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
                9587 3160 65c0 03ed 4ee5 b106 3d50 07`,
        fields: C5_THIRD,
        table: C5_TABLES[2]!,
      },
    ]);
  });
});

describe('HPACK decoder: table size', () => {
  it('takes size updates at the start of a block, evicting down to the new size', () => {
    const decoder = new HpackDecoder();
    series(decoder, [
      { block: '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d', fields: C3_FIRST, table: C3_TABLES[0]! },
      { block: '8286 84be 5808 6e6f 2d63 6163 6865', fields: C3_SECOND, table: C3_TABLES[1]! },
    ]);
    // 3f 3b: 31 + 59 = 90 bytes keeps only the newest entry (cache-control: 13 + 8 + 32 = 53).
    expect(decoder.decode(hex('3f3b 82'))).toEqual([':method', 'GET']);
    expect(dynamicTable(decoder)).toEqual([['cache-control', 'no-cache']]);
    // Two updates in a row (RFC 7541 4.2: down to 0 then back up) empty the table and leave room.
    expect(decoder.decode(hex('20 3fe1 1f 4001 6101 62'))).toEqual(['a', 'b']);
    expect(dynamicTable(decoder)).toEqual([['a', 'b']]);
  });

  it('empties the table for an entry larger than it, without error', () => {
    const decoder = new HpackDecoder({ maxTableSize: 64 });
    expect(decoder.decode(Buffer.from([0x40, 1, 0x61, 1, 0x62]))).toEqual(['a', 'b']);
    const long = 'x'.repeat(40);
    expect(decoder.decode(Buffer.concat([Buffer.from([0x40, 1, 0x63, 40]), Buffer.from(long)]))).toEqual(['c', long]);
    expect(dynamicTable(decoder)).toEqual([]);
  });

  it('keeps a few hundred entries in order as the ring grows and wraps', () => {
    const decoder = new HpackDecoder({ maxTableSize: 100 * 34 });
    for (let i = 0; i < 300; i++) {
      const name = String.fromCharCode(0x61 + (i % 26));
      const value = String.fromCharCode(0x61 + (i % 23));
      expect(decoder.decode(Buffer.from([0x40, 1, name.charCodeAt(0), 1, value.charCodeAt(0)]))).toEqual([name, value]);
    }
    const table = dynamicTable(decoder);
    expect(table).toHaveLength(100);
    expect(table[0]).toEqual([String.fromCharCode(0x61 + (299 % 26)), String.fromCharCode(0x61 + (299 % 23))]);
    expect(table[99]).toEqual([String.fromCharCode(0x61 + (200 % 26)), String.fromCharCode(0x61 + (200 % 23))]);
  });

});

describe('HPACK decoder: strings', () => {
  it('reads octets 0x80-0xff as latin1, one character each, raw and Huffman-coded', () => {
    const value = String.fromCharCode(0x80, 0xe9, 0xff);
    const raw = Buffer.concat([Buffer.from([0x00, 1, 0x61, 3]), Buffer.from(value, 'latin1')]);
    expect(new HpackDecoder().decode(raw)).toEqual(['a', value]);
    // RFC 7541 Appendix B: 0xff is 0x3ffffee (26 bits); with 6 bits of padding, ff ff fb bf.
    expect(new HpackDecoder().decode(hex('00 0161 84 fffffbbf'))).toEqual(['a', '\xff']);
  });
});

const expectHpackError = (decoder: HpackDecoder, block: Buffer | string, message: RegExp): void => {
  const run = (): string[] => decoder.decode(typeof block === 'string' ? hex(block) : block);
  expect(run).toThrow(HpackError);
  expect(run).toThrow(message);
};

describe('HPACK decoder: blocks that break RFC 7541', () => {
  it('refuses an index in neither table', () => {
    const decoder = new HpackDecoder();
    decoder.decode(hex('8286 84 410f 7777 772e 6578 616d 706c 652e 636f 6d  58 086e 6f2d 6361 6368 65  40 0a63 7573 746f 6d2d 6b65 79 0c63 7573 746f 6d2d 7661 6c75 65'));
    expectHpackError(decoder, 'c6', /header field index 70 is not in the static table \(1-61\) or the dynamic table \(3 entries\)/);
    expectHpackError(new HpackDecoder(), '80', /header field index 0 is not in the static table/);
    expectHpackError(new HpackDecoder(), '7f07 0161', /header field index 70 is not in .* \(0 entries\)/);
    expectHpackError(new HpackDecoder(), '0f30 0161', /header field index 63 is not in .* \(0 entries\)/);
  });

  it('refuses an integer the block ends inside', () => {
    expectHpackError(new HpackDecoder(), 'ff', /header block ends inside an integer/);
    expectHpackError(new HpackDecoder(), '7f80', /header block ends inside an integer/);
    expectHpackError(new HpackDecoder(), '00', /header block ends inside an integer/);
  });

  it('refuses a string literal longer than what is left of the block', () => {
    expectHpackError(new HpackDecoder(), '0005 6162', /string literal of 5 bytes runs past the end of the header block \(2 left\)/);
    expectHpackError(new HpackDecoder(), '0001 61', /header block ends inside an integer/);
    expectHpackError(new HpackDecoder(), '0001 6103 6263', /string literal of 3 bytes runs past .* \(2 left\)/);
  });

  it('refuses an integer past 2^31-1, and one padded past 5 continuation bytes', () => {
    expectHpackError(new HpackDecoder(), 'ffff ffff ff7f', /integer exceeds 2\^31-1/);
    expectHpackError(new HpackDecoder(), '00 7f ffff ffff 0f', /integer exceeds 2\^31-1/);
    expectHpackError(new HpackDecoder(), 'ff80 8080 8080 00', /integer continues past the 5 bytes a 31-bit value needs/);
  });

  it('refuses Huffman padding longer than 7 bits', () => {
    // ff: 8 one bits and no symbol; 1fff: "a" (00011) then 11 one bits.
    expectHpackError(new HpackDecoder(), '00 81ff 0161', /Huffman-coded string ends with 8 bits of padding; at most 7 are allowed/);
    expectHpackError(new HpackDecoder(), '00 821f ff 0161', /ends with 11 bits of padding; at most 7/);
  });

  it('refuses Huffman padding that is not all ones', () => {
    // 00: "0" (00000) then 000.
    expectHpackError(new HpackDecoder(), '00 8100 0161', /Huffman-coded string ends with 3 bits of padding that are not all ones/);
  });

  it('refuses the EOS symbol inside a Huffman-coded string', () => {
    // 30 one bits are EOS; then "?" (1111111100) would follow.
    expectHpackError(new HpackDecoder(), '00 85ff ffff fffc 0161', /Huffman-coded string contains the EOS symbol/);
  });

  it('refuses a table size update above SETTINGS_HEADER_TABLE_SIZE', () => {
    const decoder = new HpackDecoder({ maxTableSize: 256 });
    expect(decoder.decode(hex('3fe1 0182'))).toEqual([':method', 'GET']); // 256 itself is allowed
    expectHpackError(decoder, '3fe2 01', /dynamic table size update to 257 bytes exceeds SETTINGS_HEADER_TABLE_SIZE \(256\)/);
  });

  it('refuses a table size update after a header field', () => {
    expectHpackError(new HpackDecoder(), '8220', /dynamic table size update after a header field; it must start the header block/);
  });

  it('refuses a header list over maxListSize', () => {
    // :method GET is 7 + 3 + 32 = 42 bytes: two fit in 100, three do not.
    expect(new HpackDecoder({ maxListSize: 100 }).decode(hex('8282'))).toHaveLength(4);
    expectHpackError(new HpackDecoder({ maxListSize: 100 }), '828282', /header list exceeds 100 bytes \(name \+ value \+ 32 per field\) at field 3 \(:method\)/);
  });
});

describe('HPACK encoder', () => {
  it('uses the static table: an indexed field, an indexed name, else a literal name; never indexing, never Huffman', () => {
    const encoder = new HpackEncoder();
    expect(encoder.encode([[':status', '200']])).toEqual(hex('88'));
    // content-type is index 31: 15 in the 4-bit prefix, 16 after it.
    expect(encoder.encode([['content-type', 'application/grpc']])).toEqual(Buffer.concat([hex('0f10 10'), Buffer.from('application/grpc')]));
    expect(encoder.encode([['grpc-status', '0']])).toEqual(Buffer.concat([hex('000b'), Buffer.from('grpc-status'), hex('0130')]));
    expect(encoder.encode([])).toEqual(Buffer.alloc(0));
  });

  it('round-trips through the decoder, with long values, latin1 octets and empty strings', () => {
    const fields: [string, string][] = [
      [':status', '200'], [':status', '418'], ['content-type', 'application/grpc'], ['accept', ''], ['www-authenticate', 'Bearer'],
      ['grpc-status', '13'], ['grpc-message', 'a b%20c'], ['x-empty', ''], ['x-long', 'v'.repeat(70_000)],
      ['x-latin1', String.fromCharCode(...Array.from({ length: 256 }, (_, i) => i))], ['x'.repeat(200), 'long name'],
    ];
    const encoder = new HpackEncoder();
    const block = encoder.encode(fields);
    expect(new HpackDecoder({ maxListSize: 1 << 20 }).decode(block)).toEqual(flat(fields));
    // The same list again encodes the same bytes: the encoder keeps no state.
    expect(encoder.encode(fields)).toEqual(block);
  });
});

/** One HTTP/2 frame (RFC 9113 4.1). */
function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}
const HEADERS = 0x1;
const SETTINGS = 0x4;
const CONTINUATION = 0x9;
const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY = 0x20;
const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';

interface RawServer {
  server: Server;
  url: string;
  /** Each request's header block as it came (HEADERS + CONTINUATION payloads joined), in arrival order. */
  blocks: { stream: number; block: Buffer; continuations: number }[];
}

/**
 * The server side of HTTP/2 done by hand, just enough for node:http2's client:
 * an empty SETTINGS, an ACK of the client's, and for each request's header block
 * `answer`'s HEADERS frame (END_HEADERS, END_STREAM) on that stream.
 */
async function rawServer(answer: Buffer): Promise<RawServer> {
  const blocks: RawServer['blocks'] = [];
  const server = createServer((socket: Socket) => {
    socket.write(frame(SETTINGS, 0, 0));
    let pending = Buffer.alloc(0);
    let prefaceSeen = false;
    let open: { stream: number; parts: Buffer[] } | undefined;
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!prefaceSeen) {
        if (pending.length < PREFACE.length) return;
        expect(pending.subarray(0, PREFACE.length).toString('latin1')).toBe(PREFACE);
        pending = pending.subarray(PREFACE.length);
        prefaceSeen = true;
      }
      while (pending.length >= 9 && pending.length >= 9 + pending.readUIntBE(0, 3)) {
        const length = pending.readUIntBE(0, 3);
        const [type, flags] = [pending[3] as number, pending[4] as number];
        const stream = pending.readUInt32BE(5) & 0x7fffffff;
        let payload = pending.subarray(9, 9 + length);
        pending = pending.subarray(9 + length);
        if (type === SETTINGS && (flags & ACK) === 0) socket.write(frame(SETTINGS, ACK, 0));
        if (type === HEADERS) {
          const pad = flags & PADDED ? (payload[0] as number) : 0;
          payload = payload.subarray((flags & PADDED ? 1 : 0) + (flags & PRIORITY ? 5 : 0), payload.length - pad);
          open = { stream, parts: [payload] };
        }
        if (type === CONTINUATION) open?.parts.push(payload);
        if ((type === HEADERS || type === CONTINUATION) && flags & END_HEADERS && open) {
          blocks.push({ stream: open.stream, block: Buffer.concat(open.parts), continuations: open.parts.length - 1 });
          socket.write(frame(HEADERS, END_HEADERS | END_STREAM, open.stream, answer));
          open = undefined;
        }
      }
    });
    socket.on('error', () => socket.destroy());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, blocks };
}

/** One request on `client`; the response's headers. */
async function request(client: ClientHttp2Session, headers: OutgoingHttpHeaders): Promise<IncomingHttpHeaders> {
  const req = client.request(headers, { endStream: true });
  req.resume();
  const [response] = (await once(req, 'response')) as [IncomingHttpHeaders];
  await once(req, 'close');
  return response;
}

/** The fields node:http2 sends for `headers`: an array value as one field per element, in order. */
function fieldsOf(headers: OutgoingHttpHeaders): [string, string][] {
  return Object.entries(headers).flatMap(([name, value]) => (Array.isArray(value) ? value.map((v): [string, string] => [name, v]) : [[name, String(value)]]));
}

describe('HPACK against node:http2 (nghttp2)', () => {
  it('decodes a connection of requests compressed with the dynamic table, Huffman and CONTINUATION', async () => {
    const raw = await rawServer(new HpackEncoder().encode([[':status', '200']]));
    const client = connect(raw.url);
    const printable = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).join('');
    const high = Array.from({ length: 0x80 }, (_, i) => String.fromCharCode(0x80 + i)).join('');
    const grpc: OutgoingHttpHeaders = {
      ':method': 'POST', ':path': '/inference.GRPCInferenceService/ModelInfer', 'content-type': 'application/grpc', te: 'trailers',
      'user-agent': 'grpc-python/1.66.1 grpc-c/43.0.0 (linux; chttp2)', 'grpc-accept-encoding': 'identity, deflate, gzip', 'grpc-timeout': '4999880u',
    };
    // Distinct values between the two gRPC calls fill and evict nghttp2's 4096-byte table.
    const evicting: OutgoingHttpHeaders = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`x-fill-${i}`, `${i}`.repeat(500)]));
    const sent: OutgoingHttpHeaders[] = [
      grpc,
      { ...grpc, 'grpc-timeout': '4999870u' },
      {
        ':path': '/custom', 'x-long-custom-header-name': 'long value, '.repeat(300), 'x-printable': printable, 'x-again': printable,
        // node:http2 sends octets 0x80-0xff as latin1: raw on their own, Huffman-coded among enough short codes.
        'x-latin1': high, 'x-latin1-huffman': `${'a'.repeat(1000)}\t${high}`,
      },
      { ':path': '/repeated', 'x-repeated': ['one', 'two', 'one', 'three'], accept: ['a/b', 'c/d'] },
      // 30000 b's are 22500 bytes Huffman-coded, more than a 16384-byte frame.
      { ':path': '/big', 'x-big': 'b'.repeat(30_000), 'x-after-big': 'after' },
      evicting,
      grpc,
    ];
    try {
      for (const headers of sent) expect((await request(client, headers))[':status']).toBe(200);
    } finally {
      client.close();
      raw.server.close();
    }

    const decoder = new HpackDecoder();
    const authority = raw.url.slice('http://'.length);
    expect(raw.blocks.map((b) => b.stream)).toEqual(sent.map((_, i) => 1 + 2 * i));
    raw.blocks.forEach(({ block }, i) => {
      const headers = sent[i] as OutgoingHttpHeaders;
      const fields = [] as [string, string][];
      const decoded = decoder.decode(block);
      for (let f = 0; f < decoded.length; f += 2) fields.push([decoded[f] as string, decoded[f + 1] as string]);
      const pseudo = { ':method': 'GET', ':scheme': 'http', ':authority': authority, ':path': '/', ...headers };
      // Pseudo-headers come first in an order of node's choosing; the rest in the order sent.
      const firstRegular = fields.findIndex(([name]) => !name.startsWith(':'));
      expect(fields.slice(0, firstRegular).sort()).toEqual(fieldsOf(pseudo).filter(([n]) => n.startsWith(':')).sort());
      expect(fields.slice(firstRegular)).toEqual(fieldsOf(headers).filter(([n]) => !n.startsWith(':')));
    });
    // What those requests were meant to exercise: Huffman, the dynamic table, CONTINUATION.
    const [first, second] = raw.blocks.map((b) => b.block.length) as [number, number];
    expect(first).toBeLessThan(fieldsOf(grpc).reduce((n, [name, value]) => n + name.length + value.length, 0) * 0.85);
    expect(second).toBeLessThan(first / 3);
    expect(raw.blocks[4]?.continuations).toBeGreaterThan(0);
    // The last call repeats the first, but the fill evicted what the first left in the table.
    expect(raw.blocks[6]!.block.length).toBeGreaterThan(second * 2);
  });

  it("is read back by node:http2's decoder as the response's headers", async () => {
    const raw = await rawServer(
      new HpackEncoder().encode([[':status', '200'], ['content-type', 'application/grpc'], ['grpc-status', '0'], ['grpc-message', 'a b%20c']]),
    );
    const client = connect(raw.url);
    try {
      const headers = await request(client, { ':path': '/inference.GRPCInferenceService/ServerLive' });
      expect(Object.fromEntries(Object.entries(headers))).toEqual({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '0', 'grpc-message': 'a b%20c' });
    } finally {
      client.close();
      raw.server.close();
    }
  });
});
