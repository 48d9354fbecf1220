import type { Datatype } from '../../agent/runtime/tensor.js';

/**
 * Four JSON values per datatype at the type's edges: what is sent is exactly
 * what must come back, through the codecs and through a real identity model.
 */
export const SAMPLES: Record<Datatype, unknown[]> = {
  BOOL: [true, false, false, true],
  UINT8: [0, 1, 128, 255],
  INT8: [-128, -1, 0, 127],
  UINT16: [0, 1, 40000, 65535],
  INT16: [-32768, -1, 0, 32767],
  UINT32: [0, 1, 3000000000, 4294967295],
  INT32: [-2147483648, -1, 0, 2147483647],
  INT64: ['-9223372036854775808', -9007199254740991, 9007199254740991, '9223372036854775807'],
  UINT64: [0, 9007199254740991, '9007199254740993', '18446744073709551615'],
  FP16: [0, -1.5, 65504, 2 ** -24],
  FP32: [0, -1.5, 3.4028234663852886e38, 1.401298464324817e-45],
  FP64: [0, -1.5, Number.MAX_VALUE, Number.MIN_VALUE],
  BYTES: ['', 'hello', 'ünïcødé ✓', 'tab\tnew\nline'],
};
