// PNG encoding for pictures people look at (sample grids, masking-frequency maps): 8/16-bit grey
// or 8-bit RGB, written atomically. Small and dependency-free (zlib from Node).
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { crc32, deflateSync } from 'node:zlib';

export interface PngImage {
  width: number;
  height: number;
  /** Row-major samples: 1 per pixel (grey) or 3 (RGB), 0..255 (or 0..65535 for 16-bit). */
  data: ArrayLike<number>;
  channels?: 1 | 3;
  bitDepth?: 8 | 16;
}

export function encodePng(img: PngImage): Buffer {
  const { width, height, data } = img;
  const depth = img.bitDepth ?? 8;
  const ch = img.channels ?? 1;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new Error(`PNG size ${width}x${height} is not valid`);
  if (data.length !== width * height * ch)
    throw new Error(`PNG data has ${data.length} samples, expected ${width}x${height}x${ch}`);
  const bpp = (depth / 8) * ch;
  const stride = 1 + width * bpp;
  const raw = Buffer.alloc(height * stride);
  const max = depth === 8 ? 255 : 65535;
  for (let y = 0; y < height; y++) {
    for (let i = 0; i < width * ch; i++) {
      const v = Math.max(0, Math.min(max, Math.round(data[y * width * ch + i]!)));
      if (depth === 8) raw[y * stride + 1 + i] = v;
      else raw.writeUInt16BE(v, y * stride + 1 + 2 * i);
    }
  }
  const chunk = (type: string, body: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    const tb = Buffer.concat([Buffer.from(type, 'ascii'), body]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(tb) >>> 0);
    return Buffer.concat([len, tb, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = depth;
  ihdr[9] = ch === 1 ? 0 : 2;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Write `bytes` to `path` atomically (temporary file in the same folder, fsync, rename). */
export function writeFileAtomic(path: string, bytes: Buffer | string): void {
  const tmp = `${path}.vasomim-tmp-${process.pid}-${Date.now()}`;
  try {
    const fd = openSync(tmp, 'w');
    try {
      writeSync(fd, typeof bytes === 'string' ? Buffer.from(bytes) : bytes);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new Error(`cannot write ${path}: ${(e as Error).message}`);
  }
}

export function writePng(path: string, img: PngImage): void {
  writeFileAtomic(path, encodePng(img));
}
