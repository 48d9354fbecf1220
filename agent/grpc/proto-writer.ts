/**
 * Protobuf written straight to bytes, for the answers whose tensors would cost
 * an element-by-element pass through protobufjs: TensorFlow Serving's
 * PredictResponse (tf-response.ts) and KServe's ModelInferResponse
 * (kserve-response.ts). A packed repeated float or double field is exactly the
 * tensor's little-endian bytes behind a length.
 */

const LEN = 2;
export const VARINT = 0;

/** A growable byte buffer with the few protobuf encodings the answers need. */
export class ProtoWriter {
  private buf: Buffer;
  length = 0;
  constructor(size = 256) {
    this.buf = Buffer.allocUnsafe(size);
  }

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  /** A non-negative integer below 2^53. */
  varint(n: number): void {
    this.room(10);
    while (n > 0x7f) {
      this.buf[this.length++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.length++] = n;
  }

  /** Any 64-bit value, as its unsigned two's complement (negative int32 and int64 take 10 bytes). */
  varint64(v: bigint): void {
    let u = BigInt.asUintN(64, v);
    this.room(10);
    while (u > 0x7fn) {
      this.buf[this.length++] = Number(u & 0x7fn) | 0x80;
      u >>= 7n;
    }
    this.buf[this.length++] = Number(u);
  }

  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }

  bytes(field: number, data: Uint8Array): void {
    this.tag(field, LEN);
    this.varint(data.length);
    this.room(data.length);
    this.buf.set(data, this.length);
    this.length += data.length;
  }

  string(field: number, s: string): void {
    this.bytes(field, Buffer.from(s, 'utf8'));
  }

  /** A length-delimited field holding what `write` puts in a buffer of its own. */
  message(field: number, write: (out: ProtoWriter) => void): void {
    const inner = new ProtoWriter();
    write(inner);
    this.bytes(field, inner.view());
  }

  view(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

/** Packed varints of numbers (int32 may be negative). */
export function packedInts(out: ProtoWriter, field: number, values: ArrayLike<number>): void {
  out.message(field, (o) => {
    for (let i = 0; i < values.length; i++) {
      const v = values[i] as number;
      if (v >= 0) o.varint(v);
      else o.varint64(BigInt(v));
    }
  });
}

export function packed64(out: ProtoWriter, field: number, values: BigInt64Array | BigUint64Array): void {
  out.message(field, (o) => {
    for (const v of values) o.varint64(v);
  });
}

/** The bytes of a typed array, in place. */
export const rawBytes = (d: ArrayBufferView): Uint8Array => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
