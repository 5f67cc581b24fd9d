// NumPy `.npy` (format 1.0) encoding of a float64 array, for raw numbers saved beside a picture
// (the masking-frequency counts) so they can be read back with `numpy.load` without rounding.
import { writeFileAtomic } from './png.js';

/** `.npy` bytes of `values` (little-endian float64, C order) with shape `shape`. */
export function encodeNpyF64(values: ArrayLike<number>, shape: readonly number[]): Buffer {
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== values.length) throw new Error(`npy: ${values.length} values do not fill shape (${shape.join(', ')})`);
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ');
  let header = `{'descr': '<f8', 'fortran_order': False, 'shape': (${dims}), }`;
  // Magic (6) + version (2) + header length (2) + header + newline, padded to a multiple of 64.
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const body = Buffer.alloc(8 * n);
  for (let i = 0; i < n; i++) body.writeDoubleLE(values[i]!, 8 * i);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), body]);
}

export function writeNpyF64(path: string, values: ArrayLike<number>, shape: readonly number[]): void {
  writeFileAtomic(path, encodeNpyF64(values, shape));
}
