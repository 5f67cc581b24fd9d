// Test helpers: a minimal PNG encoder (grey/RGB, 8/16-bit) to make odd inputs on the fly, a
// .npy parser, temporary folders, small subsets of the bundled XCA dataset and a CLI runner.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { encodePng as encodeAnyPng } from '../src/util/png.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SAMPLES = join(ROOT, 'data', 'samples');

/** PNG bytes of raw samples (grey or RGB, 8 or 16 bit), via the library's encoder. */
export function encodePng(
  width: number,
  height: number,
  data: ArrayLike<number>,
  opts: { bitDepth?: 8 | 16; channels?: 1 | 3 } = {},
): Buffer {
  return encodeAnyPng({ width, height, data, ...opts });
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
  const shape = /'shape': \(([^)]*)\)/
    .exec(header)![1]!
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  const body = b.subarray(off + hlen);
  const copy = new Uint8Array(body).buffer;
  const data =
    descr === '<f8' ? new Float64Array(copy) : descr === '<f4' ? new Float32Array(copy) : new Uint8Array(copy);
  return { descr, shape, data };
}

export function tempDir(prefix = 'vasomim-test-'): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * A fercer-style subset of the bundled XCA angiograms in `<parent>/<name>`: training/ and testing/
 * with N.png + N_gt.png for the ids given; returns its root.
 */
export function xcaSubset(parent: string, name: string, train: number[], test: number[]): string {
  const root = join(parent, name);
  for (const [dir, src, ids] of [
    ['training', 'Angios_40_training', train],
    ['testing', 'Angios_40_testing', test],
  ] as const) {
    mkdirSync(join(root, dir), { recursive: true });
    for (const k of ids) {
      copyFileSync(join(SAMPLES, 'fercer-xca80', src, `${k}.png`), join(root, dir, `${k}.png`));
      copyFileSync(join(SAMPLES, 'fercer-xca80', src, `${k}_gt.png`), join(root, dir, `${k}_gt.png`));
    }
  }
  return root;
}

export function cli(args: string[], opts: { cwd?: string } = {}) {
  const r = spawnSync(
    process.execPath,
    ['--import', import.meta.resolve('tsx'), join(ROOT, 'ts', 'src', 'cli', 'main.ts'), ...args],
    {
      cwd: opts.cwd ?? ROOT,
      encoding: 'utf8',
      env: { ...process.env, FORCE_COLOR: '0' },
    },
  );
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

/**
 * The complete lines of a JSON Lines file, parsed. A line the writer has not finished (no
 * newline yet: a test polling a live run reads while the run appends) is left out.
 */
export function readJsonLines<T = Record<string, number>>(path: string): T[] {
  const lines = readFileSync(path, 'utf8').split('\n');
  lines.pop(); // '' after the last newline, or a line still being written
  return lines.filter(Boolean).map((l) => JSON.parse(l) as T);
}
