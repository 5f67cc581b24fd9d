// Test helpers: a minimal PNG encoder (grey/RGB, 8/16-bit) to make odd inputs on the fly, a
// .npy parser, temporary folders and a CLI runner.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32, deflateSync } from 'node:zlib';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SAMPLES = join(ROOT, 'data', 'samples');

export function encodePng(width: number, height: number, data: ArrayLike<number>, opts: { bitDepth?: 8 | 16; channels?: 1 | 3 } = {}): Buffer {
  const depth = opts.bitDepth ?? 8;
  const ch = opts.channels ?? 1;
  const bpp = (depth / 8) * ch;
  const raw = Buffer.alloc(height * (1 + width * bpp));
  for (let y = 0; y < height; y++) {
    const row = y * (1 + width * bpp);
    for (let i = 0; i < width * ch; i++) {
      const v = data[y * width * ch + i]!;
      if (depth === 8) raw[row + 1 + i] = v;
      else raw.writeUInt16BE(v, row + 1 + 2 * i);
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

export interface Npy {
  descr: string;
  shape: number[];
  data: Float64Array | Float32Array | Uint8Array;
}

export function readNpy(path: string): Npy {
  const b = readFileSync(path);
  if (b.subarray(0, 6).toString('latin1') !== '\x93NUMPY') throw new Error(`${path}: not .npy`);
  const hlen = b[6] === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const off = b[6] === 1 ? 10 : 12;
  const header = b.subarray(off, off + hlen).toString('latin1');
  const descr = /'descr': '([^']+)'/.exec(header)![1]!;
  const shape = /'shape': \(([^)]*)\)/.exec(header)![1]!.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const body = b.subarray(off + hlen);
  const copy = new Uint8Array(body).buffer;
  const data = descr === '<f8' ? new Float64Array(copy) : descr === '<f4' ? new Float32Array(copy) : new Uint8Array(copy);
  return { descr, shape, data };
}

export function tempDir(prefix = 'vasomim-test-'): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

export function cli(args: string[], opts: { cwd?: string } = {}) {
  const r = spawnSync(process.execPath, ['--import', import.meta.resolve('tsx'), join(ROOT, 'ts', 'src', 'cli', 'main.ts'), ...args], {
    cwd: opts.cwd ?? ROOT,
    encoding: 'utf8',
    env: { ...process.env, FORCE_COLOR: '0' },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** max |a - b| / max |b| */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let err = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    err = Math.max(err, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return scale > 0 ? err / scale : err;
}
