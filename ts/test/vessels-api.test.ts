// Node API of the vesselness engine: results, option validation, and the dataset job's
// behaviour on bad input, resume and interruption.
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { prepareVesselMaps, readImage, vesselMap, vesselness } from '../src/index.js';
import { encodePng, relErr, ROOT, SAMPLES, tempDir } from './helpers.js';

const XCA1 = join(SAMPLES, 'fercer-xca80', 'Angios_40_training', '1.png');
const GOLDEN = join(ROOT, 'crates', 'frangi', 'tests', 'golden');

function lineImage(h: number, w: number) {
  const px = new Float32Array(h * w).fill(160);
  for (let c = 0; c < w; c++) px[(h >> 1) * w + c] = 40;
  return { width: w, height: h, pixels: px };
}

describe('vesselness', () => {
  it('responds to a dark line, in float64 by default and float32 on request', async () => {
    const img = lineImage(21, 21);
    const r64 = await vesselness(img);
    const r32 = await vesselness(img, { precision: 'f32' });
    expect(r64.dtype).toBe('float64');
    expect(r64.data).toBeInstanceOf(Float64Array);
    expect(r32.data).toBeInstanceOf(Float32Array);
    const centre = 10 * 21 + 10;
    expect(r64.data[centre]!).toBeGreaterThan(10);
    expect(r64.max).toBeCloseTo(Math.max(...r64.data), 12);
    expect(relErr(r32.data, r64.data)).toBeLessThan(1e-4);
    const white = await vesselness(img, { whiteRidges: true });
    expect(white.data[centre]!).toBeLessThan(1e-9);
  });

  it('reads files: 8-bit exactly, and Frangi stays in [0, 1)', async () => {
    const im = await readImage(XCA1);
    expect([im.width, im.height, im.bitDepth, im.channels]).toEqual([300, 300, 8, 1]);
    const f = await vesselness(XCA1, { filter: 'frangi' });
    expect(f.max).toBeGreaterThan(0.1);
    expect(f.max).toBeLessThan(1);
  });

  it('rejects bad options with the field named', async () => {
    const img = lineImage(5, 5);
    await expect(vesselness(img, { sigmas: [1, -2] })).rejects.toThrow(/sigmas\.1: each sigma must be > 0/);
    await expect(vesselness(img, { sigmas: [] })).rejects.toThrow(/sigmas: give at least one sigma/);
    // @ts-expect-error deliberately wrong
    await expect(vesselness(img, { filter: 'gabor' })).rejects.toThrow(/filter:/);
    // @ts-expect-error unknown key
    await expect(vesselness(img, { sigma: 2 })).rejects.toThrow(/sigma/);
    await expect(vesselness({ width: 3, height: 3, pixels: new Float32Array(8) })).rejects.toThrow(
      /8 values but width x height is 3 x 3/,
    );
  });
});

describe('vesselMap', () => {
  it('equals the reference pipeline (scikit-image + numpy, wrap cast) on a real angiogram', async () => {
    const ours = await vesselMap(XCA1, { map: { cast: 'wrap' } });
    const ref = await readImage(join(GOLDEN, 'map_Angios_40_training_1.wrap.png'));
    expect([ours.width, ours.height]).toEqual([ref.width, ref.height]);
    let differ = 0;
    let on = 0;
    for (let i = 0; i < ours.data.length; i++) {
      if (ours.data[i] !== ref.pixels[i]) differ++;
      if (ours.data[i] === 255) on++;
    }
    expect(differ).toBe(0);
    expect(on).toBeGreaterThan(1000);
  });

  it('accepts images smaller than the kernel, down to 1x1', async () => {
    const m = await vesselMap({ width: 1, height: 1, pixels: [42] });
    expect(Array.from(m.data)).toEqual([0]);
    const m2 = await vesselMap({ width: 3, height: 2, pixels: [0, 255, 0, 10, 200, 30] }, { map: { border: 0 } });
    expect(m2.data.length).toBe(6);
  });

  it('rejects bad map options with the field named', async () => {
    await expect(vesselMap(lineImage(5, 5), { map: { percentile: 120 } })).rejects.toThrow(
      /percentile: percentile must be in \[0, 100\]/,
    );
    await expect(vesselMap(lineImage(5, 5), { map: { border: 1.5 } })).rejects.toThrow(
      /border: border must be an integer/,
    );
  });
});

describe('prepareVesselMaps', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.cleanup());

  /** root/srcA: 4 good images (8-bit, 16-bit, RGB, 1x1) + a mask; root/srcB: 3 bad files. */
  function makeTree() {
    const root = join(tmp.path, 'root');
    const a = join(root, 'srcA');
    const b = join(root, 'nested', 'srcB');
    mkdirSync(a, { recursive: true });
    mkdirSync(b, { recursive: true });
    copyFileSync(XCA1, join(a, 'frame1.png'));
    const grey16 = Array.from({ length: 40 * 30 }, (_, i) => ((i * 2654435761) >>> 0) % 65536);
    writeFileSync(join(a, 'deep.png'), encodePng(40, 30, grey16, { bitDepth: 16 }));
    const rgb = Array.from({ length: 32 * 32 * 3 }, (_, i) => (i * 7) % 256);
    writeFileSync(join(a, 'colour.png'), encodePng(32, 32, rgb, { channels: 3 }));
    writeFileSync(join(a, 'dot.png'), encodePng(1, 1, [9]));
    copyFileSync(XCA1, join(a, 'frame1_gt.png'));
    const good = readFileSync(XCA1);
    writeFileSync(join(b, 'truncated.png'), good.subarray(0, good.length >> 1));
    writeFileSync(join(b, 'notes.png'), 'not an image at all');
    writeFileSync(join(b, 'empty.bmp'), '');
    mkdirSync(join(root, 'srcA_frangi'));
    return root;
  }

  function listFiles(dir: string): string[] {
    const out: string[] = [];
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(d, e.name));
        else out.push(join(d, e.name));
      }
    };
    walk(dir);
    return out;
  }

  it('maps good files, reports each bad file by name, never leaves partial outputs', async () => {
    const root = makeTree();
    const s = await prepareVesselMaps(root, { jobs: 2 });
    expect(s.sources.sort()).toEqual(['nested/srcB', 'srcA']);
    expect([s.processed, s.failed, s.skipped, s.excluded]).toEqual([4, 3, 0, 1]);
    const failures = Object.fromEntries(s.failures.map((f) => [f.input.split('/').pop(), f.error]));
    expect(failures['truncated.png']).toMatch(/cannot decode/);
    expect(failures['notes.png']).toMatch(/not an image/);
    expect(failures['empty.bmp']).toMatch(/empty file/);
    const outs = listFiles(join(root, 'srcA_frangi'))
      .map((p) => p.split('/').pop())
      .sort();
    expect(outs).toEqual(['colour.png', 'deep.png', 'dot.png', 'frame1.png']);
    expect(existsSync(join(root, 'nested', 'srcB_frangi'))).toBe(true);
    expect(readdirSync(join(root, 'nested', 'srcB_frangi'))).toEqual([]);
    for (const f of listFiles(root).filter((p) => p.includes('_frangi')))
      expect(statSync(f).size, f).toBeGreaterThan(0);
    const m = await readImage(join(root, 'srcA_frangi', 'frame1.png'));
    expect(new Set(m.pixels)).toEqual(new Set([0, 255]));
  });

  it('resumes: existing maps are skipped, missing ones recomputed, --overwrite redoes all', async () => {
    const root = makeTree();
    await prepareVesselMaps(root);
    unlinkSync(join(root, 'srcA_frangi', 'deep.png'));
    writeFileSync(join(root, 'srcA_frangi', '.dot.png.vasomim-tmp-999-0'), 'left by a killed run');
    const s = await prepareVesselMaps(root);
    expect([s.processed, s.skipped, s.failed]).toEqual([1, 3, 3]);
    expect(readdirSync(join(root, 'srcA_frangi')).some((n) => n.includes('vasomim-tmp'))).toBe(false);
    const again = await prepareVesselMaps(root, { overwrite: true });
    expect([again.processed, again.skipped]).toEqual([4, 0]);
  });

  it('stops cleanly between chunks when asked and finishes on the next run', async () => {
    const src = join(tmp.path, 'frames');
    mkdirSync(src);
    for (let i = 0; i < 12; i++) copyFileSync(XCA1, join(src, `f${String(i).padStart(2, '0')}.png`));
    let calls = 0;
    const first = await prepareVesselMaps(src, { jobs: 1 }, undefined, { shouldStop: () => calls++ > 0 });
    expect(first.interrupted).toBe(true);
    expect(first.processed).toBe(8);
    const outDir = join(tmp.path, 'frames_frangi');
    expect(readdirSync(outDir)).toHaveLength(8);
    const second = await prepareVesselMaps(src, { jobs: 1 });
    expect([second.processed, second.skipped, second.interrupted]).toEqual([4, 8, false]);
  });

  it('reports progress with totals and per-file outcomes', async () => {
    const root = makeTree();
    const seen: number[] = [];
    let last = { total: 0, done: 0 };
    await prepareVesselMaps(root, {}, (p) => {
      seen.push(p.done);
      last = p;
    });
    expect(last.done).toBe(last.total);
    expect(last.total).toBe(7);
    expect([...seen].sort((x, y) => x - y)).toEqual(seen);
  });

  it('fails every file of a source whose output folder cannot be created, naming it', async () => {
    const root = makeTree();
    const out = join(tmp.path, 'out');
    mkdirSync(out);
    writeFileSync(join(out, 'srcA_frangi'), 'a file where the folder should go');
    const s = await prepareVesselMaps(root, { out });
    const a = s.failures.filter((f) => f.input.includes('/srcA/'));
    expect(a).toHaveLength(4);
    for (const f of a) expect(f.error).toMatch(/cannot create output folder .*srcA_frangi/);
    expect(readFileSync(join(out, 'srcA_frangi'), 'utf8')).toBe('a file where the folder should go');
  });

  it('writes a single folder of images to a sibling <name>_frangi folder, or under --out', async () => {
    const src = join(tmp.path, 'run7');
    mkdirSync(src);
    copyFileSync(XCA1, join(src, 'a.png'));
    await prepareVesselMaps(src);
    expect(existsSync(join(tmp.path, 'run7_frangi', 'a.png'))).toBe(true);
    const out = join(tmp.path, 'maps');
    await prepareVesselMaps(src, { out, suffix: '_filter_92' });
    expect(existsSync(join(out, 'run7_filter_92', 'a.png'))).toBe(true);
  });

  it('refuses an empty folder, a file as root, and output-name collisions', async () => {
    const empty = join(tmp.path, 'empty');
    mkdirSync(empty);
    await expect(prepareVesselMaps(empty)).rejects.toThrow(/no images found/);
    await expect(prepareVesselMaps(XCA1)).rejects.toThrow(/not a folder/);
    await expect(prepareVesselMaps(join(tmp.path, 'nope'))).rejects.toThrow(/no such folder/);
    const src = join(tmp.path, 'dup');
    mkdirSync(src);
    copyFileSync(XCA1, join(src, 'x.png'));
    writeFileSync(join(src, 'x.jpg'), readFileSync(XCA1));
    const s = await prepareVesselMaps(src);
    expect(s.failed).toBe(1);
    expect(s.failures[0]!.error).toMatch(/is also the map of/);
    await expect(prepareVesselMaps(src, { jobs: -1 })).rejects.toThrow(/jobs: jobs must be >= 0/);
  });
});
