import { Duplex } from 'node:stream';

/**
 * Bounds what one incoming MQTT packet can cost. mqtt.js's parser (mqtt-packet)
 * gathers a packet whole before parsing it, whatever its size, and MQTT 3.1.1
 * has no way to ask the broker for less (MQTT 5's Maximum Packet Size, which
 * the connection also sends, has no 3.1.1 counterpart). So the bytes from the
 * broker pass through this framer first: it reads each packet's fixed header,
 * lets packets within the limit through untouched, and streams larger ones
 * away as they arrive, never holding more than one socket read of them.
 */

/** A packet that was dropped for its size. */
export interface RefusedPacket {
  /** MQTT control packet type (3 = PUBLISH). */
  type: number;
  /** The whole packet: fixed header, variable header and payload. */
  bytes: number;
  limit: number;
  /** A PUBLISH's topic (the agent never allows topic aliases, so a PUBLISH always names it). */
  topic?: string;
  qos?: number;
  /** A QoS 1 or 2 PUBLISH's packet identifier. */
  packetId?: number;
}

const PUBLISH = 3;
/** Fixed header: one type byte and up to four bytes of remaining length. */
const MAX_FIXED_HEADER = 5;
/** Topic length, the longest topic MQTT allows, packet identifier. */
const MAX_PUBLISH_HEAD = 2 + 65_535 + 2;

/** An incoming packet that cannot be framed or skipped: the connection must close. */
export class PacketGuardError extends Error {
  readonly code = 'EDGEFLEET_MQTT_PACKET';
  constructor(message: string) {
    super(message);
    this.name = 'PacketGuardError';
  }
}

const HEADER = 0;
/** Inside a packet within the limit: its bytes go through. */
const PASS = 1;
/** Inside a packet over the limit: its bytes are dropped. */
const DROP = 2;

/**
 * The framing state machine, apart from streams so tests can split bytes
 * anywhere. push() returns the parts of `chunk` to hand to the parser, in
 * order; a fixed header split across reads is held back (at most 4 bytes)
 * until it is complete. `onRefused` hears of each dropped packet once its last
 * byte is read; a dropped packet other than a PUBLISH throws PacketGuardError.
 */
export class PacketFramer {
  private state = HEADER;
  private readonly head = Buffer.alloc(MAX_FIXED_HEADER);
  private headLength = 0;
  /** Bytes of the current fixed header that came in earlier chunks. */
  private headHeld = 0;
  /** Bytes of the current packet still to come after its fixed header. */
  private left = 0;
  private dropped: RefusedPacket | undefined;
  /** The start of a dropped PUBLISH (topic, packet id). */
  private start = Buffer.alloc(0);
  private startLength = 0;

  constructor(
    private readonly limit: number,
    private readonly onRefused: (packet: RefusedPacket) => void,
  ) {}

  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    /** Bytes of `chunk` before this are handed on or dropped. */
    let from = 0;
    /** Where the fixed header being read began in `chunk` (0 when it began in an earlier one). */
    let headerAt = 0;
    let at = 0;
    while (at < chunk.length) {
      if (this.state === PASS) {
        const n = Math.min(this.left, chunk.length - at);
        at += n;
        this.left -= n;
        if (this.left === 0) this.state = HEADER;
        continue;
      }
      if (this.state === DROP) {
        const n = Math.min(this.left, chunk.length - at);
        this.keepStart(chunk, at, n);
        at += n;
        from = at;
        this.left -= n;
        if (this.left === 0) this.endDrop();
        continue;
      }
      if (this.headLength === 0) {
        headerAt = at;
        this.headHeld = 0;
      }
      const byte = chunk[at++] as number;
      this.head[this.headLength++] = byte;
      if (this.headLength === 1 || (byte & 0x80) !== 0) {
        if (this.headLength === MAX_FIXED_HEADER) throw new PacketGuardError('malformed MQTT packet from the broker: its remaining length runs past 4 bytes');
        continue;
      }
      if (this.startPacket(out)) {
        // Dropped: what came before its header goes on; the header goes with the packet.
        if (headerAt > from) out.push(chunk.subarray(from, headerAt));
        from = at;
      }
    }
    const end = this.state === HEADER && this.headLength > 0 ? headerAt : at;
    if (end > from) out.push(from === 0 && end === chunk.length ? chunk : chunk.subarray(from, end));
    if (this.state === HEADER) this.headHeld = this.headLength;
    return out;
  }

  /** A fixed header is complete: returns whether the packet is dropped. */
  private startPacket(out: Buffer[]): boolean {
    const first = this.head[0] as number;
    let remaining = 0;
    for (let i = this.headLength - 1; i >= 1; i--) remaining = remaining * 128 + ((this.head[i] as number) & 0x7f);
    const bytes = this.headLength + remaining;
    const held = this.headHeld;
    this.headLength = 0;
    this.headHeld = 0;
    this.left = remaining;
    if (bytes <= this.limit) {
      if (held > 0) out.push(Buffer.from(this.head.subarray(0, held)));
      this.state = remaining === 0 ? HEADER : PASS;
      return false;
    }
    const type = first >> 4;
    if (type !== PUBLISH) {
      this.onRefused({ type, bytes, limit: this.limit });
      throw new PacketGuardError(`MQTT packet of type ${type} from the broker is ${bytes} bytes, over the limit of ${this.limit}`);
    }
    this.dropped = { type, bytes, limit: this.limit, qos: (first >> 1) & 3 };
    this.start = Buffer.allocUnsafe(Math.min(remaining, MAX_PUBLISH_HEAD));
    this.startLength = 0;
    this.state = DROP;
    if (remaining === 0) this.endDrop();
    return true;
  }

  private keepStart(chunk: Buffer, at: number, n: number): void {
    const take = Math.min(n, this.start.length - this.startLength);
    if (take > 0) this.startLength += chunk.copy(this.start, this.startLength, at, at + take);
  }

  private endDrop(): void {
    const dropped = this.dropped as RefusedPacket;
    const start = this.start.subarray(0, this.startLength);
    if (start.length >= 2) {
      const topicEnd = 2 + start.readUInt16BE(0);
      if (start.length >= topicEnd) dropped.topic = start.toString('utf8', 2, topicEnd);
      if ((dropped.qos ?? 0) > 0 && start.length >= topicEnd + 2) dropped.packetId = start.readUInt16BE(topicEnd);
    }
    this.state = HEADER;
    this.dropped = undefined;
    this.start = Buffer.alloc(0);
    this.onRefused(dropped);
  }
}

/** PUBACK without reason code or properties: valid in MQTT 3.1.1 and 5 alike. */
function puback(packetId: number): Buffer {
  return Buffer.from([0x40, 0x02, packetId >> 8, packetId & 0xff]);
}

/**
 * The stream mqtt.js reads and writes instead of the socket: writes go to the
 * socket unchanged, reads go through a PacketFramer. A dropped QoS 1 PUBLISH is
 * acknowledged here (mqtt.js never sees it), so the broker does not send it
 * again on every reconnect; the agent subscribes with QoS 1 at most, so no
 * QoS 2 PUBLISH comes. The PUBACK is written through this stream, after
 * whatever mqtt.js wrote before, so it never lands inside one of its packets.
 */
export class PacketSizeGuard extends Duplex {
  private readonly framer: PacketFramer;

  constructor(
    private readonly inner: Duplex,
    limit: number,
    onRefused: (packet: RefusedPacket) => void,
  ) {
    super({ allowHalfOpen: false });
    this.framer = new PacketFramer(limit, (packet) => {
      onRefused(packet);
      if (packet.qos === 1 && packet.packetId !== undefined && !this.writableEnded && !this.destroyed) this.write(puback(packet.packetId));
    });
    inner.on('data', this.onData);
    inner.on('end', () => this.push(null));
    inner.on('error', (err) => this.destroy(err));
    inner.on('close', () => this.destroy());
  }

  private readonly onData = (chunk: Buffer): void => {
    let parts: Buffer[];
    try {
      parts = this.framer.push(chunk);
    } catch (err) {
      this.destroy(err as Error);
      return;
    }
    let flowing = true;
    for (const part of parts) flowing = this.push(part) && flowing;
    if (!flowing) this.inner.pause();
  };

  override _read(): void {
    this.inner.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.inner.write(chunk)) callback();
    else this.inner.once('drain', () => callback());
  }

  /**
   * mqtt-packet writes a packet as several small writes inside cork()/uncork(): they must
   * reach the socket as one write too, or Nagle holds the later ones for a delayed ACK.
   */
  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    this.inner.cork();
    let flowing = true;
    for (const { chunk } of chunks) flowing = this.inner.write(chunk) && flowing;
    this.inner.uncork();
    if (flowing) callback();
    else this.inner.once('drain', () => callback());
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.inner.end();
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.inner.destroy();
    callback(err);
  }
}
