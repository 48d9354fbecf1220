/**
 * Open Inference Protocol (KServe v2) JSON tensors, as `selfTest` carries them:
 * `{name, datatype, shape, data}` with `data` flat or nested in row-major order.
 */
import { z } from 'zod';

export const OIP_DATATYPES = [
  'BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64',
  'FP16', 'FP32', 'FP64', 'BYTES',
] as const;
export type OipDatatype = (typeof OIP_DATATYPES)[number];

type Element = number | boolean | string;
export type TensorData = (Element | TensorData)[];

const dataSchema: z.ZodType<TensorData> = z.array(z.union([z.number(), z.boolean(), z.string(), z.lazy(() => dataSchema)]));

export function flattenTensorData(data: TensorData): Element[] {
  return data.flat(Infinity as 1) as Element[];
}

function elementOk(datatype: OipDatatype, value: Element): boolean {
  switch (datatype) {
    case 'BOOL':
      return typeof value === 'boolean';
    case 'BYTES':
      return typeof value === 'string';
    case 'FP16':
    case 'FP32':
    case 'FP64':
      return typeof value === 'number';
    case 'UINT8':
    case 'UINT16':
    case 'UINT32':
    case 'UINT64':
      return typeof value === 'number' && Number.isInteger(value) && value >= 0;
    case 'INT8':
    case 'INT16':
    case 'INT32':
    case 'INT64':
      return typeof value === 'number' && Number.isInteger(value);
  }
}

export const oipTensorSchema = z
  .object({
    name: z.string().min(1, 'tensor name must not be empty'),
    datatype: z.enum(OIP_DATATYPES, `datatype must be one of ${OIP_DATATYPES.join(', ')}`),
    shape: z.array(z.number().int().min(0, 'dimensions must be >= 0')),
    data: dataSchema,
  })
  .superRefine((t, ctx) => {
    const flat = flattenTensorData(t.data);
    const expected = t.shape.reduce((n, d) => n * d, 1);
    if (flat.length !== expected) {
      ctx.addIssue({ code: 'custom', path: ['data'], message: `has ${flat.length} element(s), shape [${t.shape.join(', ')}] needs ${expected}` });
    }
    const bad = flat.findIndex((v) => !elementOk(t.datatype, v));
    if (bad >= 0) {
      ctx.addIssue({ code: 'custom', path: ['data'], message: `element ${bad} is not a valid ${t.datatype} value` });
    }
  });
export type OipTensor = z.infer<typeof oipTensorSchema>;
