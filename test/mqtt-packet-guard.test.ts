import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PacketFramer, PacketGuardError, PacketSizeGuard, type RefusedPacket } from '../agent/mqtt/packet-size-guard.js';

/** MQTT's variable byte integer. */
function varint(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}

/** A PUBLISH (3.1.1 layout: no properties) with `payloadBytes` bytes of payload. */
function publish(topic: string, payloadBytes: number, qos: 0 | 1 = 0, packetId = 1): Buffer {
  const t = Buffer.from(topic);
  const variable = Buffer.concat([Buffer.from([t.length >> 8, t.length & 0xff]), t, qos > 0 ? Buffer.from([packetId >> 8, packetId & 0xff]) : Buffer.alloc(0)]);
  const payload = Buffer.alloc(payloadBytes, 0x61);
  return Buffer.concat([Buffer.from([0x30 | (qos << 1), ...varint(variable.length + payload.length)]), variable, payload]);
}

const PINGRESP = Buffer.from([0xd0, 0x00]);
const SUBACK = Buffer.from([0x90, 0x03, 0x00, 0x01, 0x01]);

/** Feeds `stream` to a framer in pieces of the given sizes (cycled); returns what went through and what was refused. */
function run(stream: Buffer, limit: number, sizes: number[]): { out: Buffer; refused: RefusedPacket[] } {
  const refused: RefusedPacket[] = [];
  const framer = new PacketFramer(limit, (p) => refused.push(p));
  const out: Buffer[] = [];
  for (let at = 0, i = 0; at < stream.length; i++) {
    const n = sizes[i % sizes.length] as number;
    out.push(...framer.push(stream.subarray(at, at + n)));
    at += n;
  }
  return { out: Buffer.concat(out), refused };
}

describe('PacketFramer', () => {
  const LIMIT = 200;
  const small1 = publish('edgefleet/devices/d/desired', 40, 1, 3);
  const big1 = publish('edgefleet/devices/d/desired', 20_000, 1, 7); // three-byte remaining length
  const big0 = publish('edgefleet/trust', 300, 0); // two-byte remaining length
  const small2 = publish('edgefleet/groups/g/desired', 150);
  const stream = Buffer.concat([SUBACK, small1, big1, PINGRESP, big0, small2, PINGRESP]);
  const kept = Buffer.concat([SUBACK, small1, PINGRESP, small2, PINGRESP]);
  const expectedRefused = [
    { type: 3, bytes: big1.length, limit: LIMIT, topic: 'edgefleet/devices/d/desired', qos: 1, packetId: 7 },
    { type: 3, bytes: big0.length, limit: LIMIT, topic: 'edgefleet/trust', qos: 0 },
  ];

  it('passes packets within the limit byte for byte and drops larger ones, however the reads split them', () => {
    const splits = [[stream.length], [1], [2], [3], [5], [7], [64], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [199, 1, 4096]];
    for (const sizes of splits) {
      const { out, refused } = run(stream, LIMIT, sizes);
      expect(out.equals(kept), `reads of ${sizes.join(',')} bytes`).toBe(true);
      expect(refused).toEqual(expectedRefused);
    }
    // Every single cut point.
    for (let cut = 1; cut < stream.length; cut += 37) {
      const { out, refused } = run(stream, LIMIT, [cut, stream.length]);
      expect(out.equals(kept), `cut at ${cut}`).toBe(true);
      expect(refused).toEqual(expectedRefused);
    }
  });

  it('hands on an untouched stream as the very chunks it read', () => {
    const framer = new PacketFramer(LIMIT, () => undefined);
    const chunk = Buffer.concat([small1, small2]);
    const parts = framer.push(chunk);
    expect(parts).toHaveLength(1);
    expect(parts[0]).toBe(chunk);
  });

  it('counts the fixed header in the limit, as MQTT 5 Maximum Packet Size does', () => {
    const exact = publish('t', 100);
    expect(run(exact, exact.length, [3]).refused).toEqual([]);
    expect(run(exact, exact.length - 1, [3]).refused).toEqual([{ type: 3, bytes: exact.length, limit: exact.length - 1, topic: 't', qos: 0 }]);
  });

  it('closes the connection on an oversized packet other than a PUBLISH, and on a malformed length', () => {
    const bigSuback = Buffer.concat([Buffer.from([0x90, ...varint(300)]), Buffer.alloc(300)]);
    const refused: RefusedPacket[] = [];
    expect(() => new PacketFramer(LIMIT, (p) => refused.push(p)).push(bigSuback)).toThrow(PacketGuardError);
    expect(refused).toEqual([{ type: 9, bytes: 303, limit: LIMIT }]);
    expect(() => new PacketFramer(LIMIT, () => undefined).push(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]))).toThrow(/remaining length/);
  });
});

describe('PacketSizeGuard over a socket', () => {
  let server: Server | undefined;
  afterEach(() => server?.close());

  it('drops the oversized PUBLISH, acknowledges it (QoS 1) and passes the rest and every write', async () => {
    let brokerSide: Socket | undefined;
    const received: Buffer[] = [];
    server = createServer((s) => {
      brokerSide = s;
      s.on('data', (d: Buffer) => received.push(d));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const socket = connect((server.address() as { port: number }).port, '127.0.0.1');
    await once(socket, 'connect');
    const refused: RefusedPacket[] = [];
    const guard = new PacketSizeGuard(socket, 1024, (p) => refused.push(p));
    const read: Buffer[] = [];
    guard.on('data', (d: Buffer) => read.push(d));
    await new Promise((r) => setTimeout(r, 20));

    const small = publish('a/b', 10, 1, 2);
    (brokerSide as Socket).write(Buffer.concat([publish('a/desired', 5_000_000, 1, 0x1234), small]));
    guard.write(Buffer.from([0xc0, 0x00])); // PINGREQ from the client goes out unchanged
    for (let i = 0; i < 200 && Buffer.concat(read).length < small.length; i++) await new Promise((r) => setTimeout(r, 10));
    expect(Buffer.concat(read).equals(small)).toBe(true);
    expect(refused).toEqual([{ type: 3, bytes: 5_000_018, limit: 1024, topic: 'a/desired', qos: 1, packetId: 0x1234 }]);
    for (let i = 0; i < 100 && Buffer.concat(received).length < 6; i++) await new Promise((r) => setTimeout(r, 10));
    expect([...Buffer.concat(received)]).toEqual([0xc0, 0x00, 0x40, 0x02, 0x12, 0x34]);

    // mqtt-packet writes one packet as several writes between cork() and uncork(): one socket write.
    received.length = 0;
    guard.cork();
    for (const part of [[0x30], [0x05], [0x00, 0x01], [0x74], [0x68, 0x69]]) guard.write(Buffer.from(part));
    process.nextTick(() => guard.uncork());
    for (let i = 0; i < 100 && received.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 20));
    expect(received.map((b) => [...b])).toEqual([[0x30, 0x05, 0x00, 0x01, 0x74, 0x68, 0x69]]);

    const closed = once(guard, 'close');
    brokerSide?.destroy();
    await closed;
    expect(socket.destroyed).toBe(true);
  });
});
