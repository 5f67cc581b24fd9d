// The data pipeline through the Node API and the CLI: dataset index (XA-170K, manifests),
// data check, the loader's preflight errors, determinism across worker counts and resume,
// corrupt files mid-epoch, DICOM frames.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  checkDataset,
  DatasetError,
  indexDataset,
  openLoader,
  readFrame,
  type Batch,
  type DataLoader,
} from '../src/index.js';
import { cli, ROOT, SAMPLES, tempDir } from './helpers.js';

const XCA = join(SAMPLES, 'fercer-xca80', 'Angios_40_training');
const DICOM = join(ROOT, 'crates', 'core', 'tests', 'fixtures', 'dicom');
let tmp: ReturnType<typeof tempDir>;
let tree: string;

beforeAll(() => {
  tmp = tempDir('vasomim-data-');
  // XA-170K layout: srcA with _frangi maps (one missing, one extra), srcB with _filter_92 maps.
  tree = join(tmp.path, 'xa');
  for (const d of ['srcA', 'srcA_frangi', 'srcB', 'srcB_filter_92']) mkdirSync(join(tree, d), { recursive: true });
  for (const i of [1, 2, 3, 4]) copyFileSync(join(XCA, `${i}.png`), join(tree, 'srcA', `${i}.png`));
  for (const i of [1, 2, 3, 9]) copyFileSync(join(XCA, `${i}_gt.png`), join(tree, 'srcA_frangi', `${i}.png`));
  for (const i of [5, 6]) {
    copyFileSync(join(XCA, `${i}.png`), join(tree, 'srcB', `b${i}.png`));
    copyFileSync(join(XCA, `${i}_gt.png`), join(tree, 'srcB_filter_92', `b${i}.png`));
  }
});
afterAll(() => tmp.cleanup());

function pairedDir(name: string, n: number): string {
  const dir = join(tmp.path, name);
  mkdirSync(join(dir, 'img'), { recursive: true });
  mkdirSync(join(dir, 'img_frangi'), { recursive: true });
  for (let i = 1; i <= n; i++) {
    copyFileSync(join(XCA, `${i}.png`), join(dir, 'img', `${i}.png`));
    copyFileSync(join(XCA, `${i}_gt.png`), join(dir, 'img_frangi', `${i}.png`));
  }
  return dir;
}

async function collect(loader: DataLoader, epoch: number, startBatch = 0) {
  const out: { images: Float32Array; maps: Float32Array | null; samples: number[]; skipped: string[] }[] = [];
  for await (const b of loader.epoch(epoch, { startBatch, onSkip: () => {} }) as AsyncGenerator<Batch>)
    out.push({ images: b.images(), maps: b.maps(), samples: [...b.samples], skipped: b.skipped.map((s) => s.path) });
  return out;
}

describe('dataset index', () => {
  it('pairs XA-170K sources with _frangi or _filter_92 maps and reports missing and extra maps', () => {
    const ix = indexDataset(tree);
    expect(ix.kind).toBe('tree');
    expect(ix.samples).toHaveLength(6);
    const a = ix.sources.find((s) => s.source === 'srcA')!;
    expect(a).toMatchObject({ images: 4, withMap: 3 });
    expect(a.missingMaps).toEqual([join(tree, 'srcA', '4.png')]);
    expect(a.extraMaps).toEqual([join(tree, 'srcA_frangi', '9.png')]);
    const b = ix.sources.find((s) => s.source === 'srcB')!;
    expect(b.mapFolder).toBe(join(tree, 'srcB_filter_92'));
    expect(b.withMap).toBe(2);
    expect(ix.samples.find((s) => s.image.endsWith('b5.png'))!.map).toBe(join(tree, 'srcB_filter_92', 'b5.png'));
  });

  it('reads CSV and JSONL manifests relative to their folder and names bad lines', () => {
    const csv = join(tmp.path, 'm.csv');
    writeFileSync(csv, 'image,map\nxa/srcA/1.png,xa/srcA_frangi/1.png\n"xa/srcB/b5.png",\n');
    const ix = indexDataset(csv);
    expect(ix.samples[0]).toMatchObject({
      image: join(tmp.path, 'xa/srcA/1.png'),
      map: join(tmp.path, 'xa/srcA_frangi/1.png'),
    });
    expect(ix.samples[1]!.map).toBeUndefined();
    const jl = join(tmp.path, 'm.jsonl');
    writeFileSync(jl, '{"image": "xa/srcA/2.png", "frame": 0}\nnot json\n');
    expect(() => indexDataset(jl)).toThrow(/m\.jsonl:2: not JSON/);
    writeFileSync(csv, 'path\nx.png\n');
    expect(() => indexDataset(csv)).toThrow(/must name an "image" column/);
  });
});

describe('data check', () => {
  it('counts, flags unreadable files and maps of another size, and histograms sizes', async () => {
    const dir = pairedDir('check', 3);
    writeFileSync(join(dir, 'img', 'broken.png'), Buffer.from('not really a png'));
    copyFileSync(join(SAMPLES, 'cadica-samples', 'p10_v7_00031.png'), join(dir, 'img_frangi', '2.png'));
    const r = await checkDataset(dir);
    expect(r.images).toBe(4);
    expect(r.sizes).toEqual({ '300x300': 3 });
    expect(r.unreadable.map((u) => u.path)).toEqual([join(dir, 'img', 'broken.png')]);
    expect(r.sizeMismatch).toEqual([
      {
        image: join(dir, 'img', '2.png'),
        map: join(dir, 'img_frangi', '2.png'),
        imageSize: '300x300',
        mapSize: '512x512',
      },
    ]);
    expect(r.problems.join('\n')).toMatch(/1 image\(s\) without a vessel map: .*broken\.png/);
    const c = cli(['data', 'check', dir, '--json']);
    expect(c.code).toBe(1);
    expect(c.stderr).toMatch(/unreadable: .*broken\.png: not an image/);
    expect(JSON.parse(c.stdout.trim().split('\n').pop()!).images).toBe(4);
    const ok = cli(['data', 'check', join(SAMPLES, 'fercer-xca80')]);
    expect(ok.code).toBe(0);
    expect(ok.stderr).toMatch(/300x300 x80/);
    expect(cli(['data', 'check', join(tmp.path, 'nope')]).code).toBe(2);
  });
});

describe('openLoader', () => {
  it('fails once, before training, on no images, missing maps and mismatched map sizes', async () => {
    const empty = join(tmp.path, 'empty');
    mkdirSync(empty, { recursive: true });
    await expect(openLoader(empty)).rejects.toThrow(/no images found/);
    await expect(openLoader(tree)).rejects.toThrow(
      new RegExp(`1 of 6 image\\(s\\) have no vessel map \\(e\\.g\\. ${join(tree, 'srcA', '4.png')}`),
    );
    const dir = pairedDir('mismatch', 4);
    copyFileSync(join(SAMPLES, 'cadica-samples', 'p10_v7_00031.png'), join(dir, 'img_frangi', '3.png'));
    const e = await openLoader(dir, { batchSize: 2 }).catch((x: unknown) => x as Error);
    expect(e).toBeInstanceOf(DatasetError);
    expect((e as Error).message).toMatch(/img_frangi\/3\.png 512x512 vs 300x300/);
    await expect(openLoader(dir, { batchSize: 2, augment: { scale: [0.5, 0.1] } })).rejects.toThrow(
      /augment\.scale: scale must satisfy/,
    );
    await expect(openLoader(pairedDir('few', 3), { batchSize: 4 })).rejects.toThrow(/fewer than one batch of 4/);
  });

  it('yields identical batches with 1 and 2 workers, and after a resume', async () => {
    const dir = pairedDir('det', 10);
    const opts = { batchSize: 3, seed: 11, augment: { size: 48 } };
    const one = await openLoader(dir, { ...opts, workers: 1, prefetch: 1 });
    const two = await openLoader(dir, { ...opts, workers: 2, prefetch: 4 });
    expect(one.batchesPerEpoch).toBe(3);
    const a = await collect(one, 1);
    const b = await collect(two, 1);
    expect(a).toHaveLength(3);
    expect(b).toEqual(a);
    expect(a[0]!.images).toHaveLength(3 * 3 * 48 * 48);
    expect(a[0]!.maps).toHaveLength(3 * 48 * 48);
    expect(await collect(two, 1, 1)).toEqual(a.slice(1));
    const e2 = await collect(one, 2);
    expect(e2[0]!.samples).not.toEqual(a[0]!.samples);
    // Ranks: disjoint shards.
    const r0 = await openLoader(dir, { ...opts, world: 2, rank: 0 });
    const r1 = await openLoader(dir, { ...opts, world: 2, rank: 1 });
    const s0 = [...r0.shard(5)];
    const s1 = [...r1.shard(5)];
    expect(s0).toHaveLength(5);
    expect(s0.filter((i) => s1.includes(i))).toEqual([]);
  });

  it('skips a file that breaks mid-epoch, names it, counts it and goes on', async () => {
    const dir = pairedDir('corrupt', 8);
    const loader = await openLoader(dir, { batchSize: 4, shuffle: false, workers: 2 });
    const bad = join(dir, 'img', '3.png'); // sorted order: 1, 2, 3, 4, 5, 6, 7, 8 -> index 2
    const bytes = readFileSync(bad);
    writeFileSync(bad, bytes.subarray(0, 200));
    const warned: string[] = [];
    const it = loader.epoch(0, { onSkip: (s) => warned.push(`${s.path}: ${s.error}`) });
    const seen: number[][] = [];
    let r = await it.next();
    while (!r.done) {
      seen.push([...r.value.samples]);
      r = await it.next();
    }
    expect(seen).toEqual([
      [0, 1, 3, 3],
      [4, 5, 6, 7],
    ]);
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatch(new RegExp(`^${bad}: .*3\\.png`));
    expect(r.value).toMatchObject({ epoch: 0, batches: 2, samples: 8, skipped: 1 });
    expect(loader.metrics()!.skippedFiles[0]!.path).toBe(bad);
  });
});

describe('DICOM frames', () => {
  it('reads every frame, identical across encodings, and extracts cine runs to PNG + manifest', async () => {
    const a = await readFrame(join(DICOM, 'mf_mono1_window.dcm'), 4);
    const b = await readFrame(join(DICOM, 'mf_mono1_window_rle.dcm'), 4);
    expect(a).toEqual(b);
    expect([a.width, a.height]).toEqual([48, 40]);
    await expect(readFrame(join(DICOM, 'mf_mono1_window.dcm'), 5)).rejects.toThrow(
      /frame 5 out of range \(the file has 5 frames\)/,
    );
    const out = join(tmp.path, 'frames');
    const r = cli([
      'frames',
      join(DICOM, 'mf_mono1_window.dcm'),
      join(DICOM, 'MR_truncated.dcm'),
      '--out',
      out,
      '--json',
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/MR_truncated\.dcm: element \(7FE0,0010\) declares 8192 bytes but only 8130 remain/);
    const manifest = readFileSync(join(out, 'manifest.csv'), 'utf8').trim().split('\n');
    expect(manifest[0]).toBe('image,source,frame,width,height');
    expect(manifest).toHaveLength(6);
    expect(manifest[5]).toMatch(/^mf_mono1_window_0004\.png,.*,4,48,40$/);
    const png = await readFrame(join(out, 'mf_mono1_window_0004.png'));
    expect([...png.pixels]).toEqual([...a.pixels].map((v) => Math.round(v)));
    const ix = indexDataset(join(out, 'manifest.csv'));
    expect(ix.samples).toHaveLength(5);
    // A folder of cine runs trains on every frame (no maps: maps come per PNG frame).
    const cine = join(tmp.path, 'cine');
    mkdirSync(cine, { recursive: true });
    copyFileSync(join(DICOM, 'mf_mono1_window.dcm'), join(cine, 'run.dcm'));
    const loader = await openLoader(cine, { maps: 'ignore', batchSize: 5, shuffle: false, augment: { size: 16 } });
    expect(loader.samples.map((s) => s.frame)).toEqual([0, 1, 2, 3, 4]);
    const batch = await loader.batchAt(0, 0);
    expect([...batch.samples]).toEqual([0, 1, 2, 3, 4]);
    expect(batch.skipped).toEqual([]);
    const x1 = await readFrame(join(SAMPLES, 'dicom-xa', 'XA1_UNC.dcm'));
    const x2 = await readFrame(join(SAMPLES, 'dicom-xa', 'XA1_JPLL.dcm'));
    expect(x1.pixels).toEqual(x2.pixels);
  });
});

describe('malformed files through Node', () => {
  it('reject with an error naming the file; the process survives', async () => {
    const good = readFileSync(join(DICOM, 'mf_signed10.dcm'));
    const cases: [string, Buffer][] = [
      [
        'marker-only.dcm',
        Buffer.concat([Buffer.alloc(128), Buffer.from('DICM'), Buffer.from('garbage garbage garbage')]),
      ],
      ['cut.dcm', good.subarray(0, Math.floor(good.length * 0.6))],
      ['flipped.dcm', Buffer.from(good.map((v, i) => (i > 300 && i % 97 === 0 ? v ^ 0xff : v)))],
      ['empty.png', Buffer.alloc(0)],
    ];
    let seed = 7;
    for (let k = 0; k < 20; k++) {
      const b = Buffer.from(good);
      for (let j = 0; j < 8; j++) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        b[132 + (seed % (b.length - 132))] = seed & 0xff;
      }
      cases.push([`mut${k}.dcm`, b]);
    }
    const paths = cases.map(([name, bytes]) => {
      const p = join(tmp.path, name);
      writeFileSync(p, bytes);
      return p;
    });
    let rejected = 0;
    for (const p of paths) {
      const r = await readFrame(p, 1).then(
        () => 'ok',
        (e: Error) => e.message,
      );
      if (r !== 'ok') {
        rejected++;
        expect(r).toContain(p);
      }
    }
    expect(rejected).toBeGreaterThanOrEqual(4);
    // The same files through the parallel header probes of `data check`.
    const manifest = join(tmp.path, 'malformed.jsonl');
    writeFileSync(manifest, paths.map((p) => JSON.stringify({ image: p })).join('\n'));
    const r = await checkDataset(manifest, { decode: true });
    expect(r.images).toBe(paths.length);
    expect(r.unreadable.length).toBeGreaterThanOrEqual(4);
    expect(r.unreadable.map((u) => u.path)).toContain(join(tmp.path, 'marker-only.dcm'));
  });
});

describe('vasomim bench loader', () => {
  it('documents its options and ends with a JSON line', () => {
    const h = cli(['bench', '--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/--workers/);
    const dir = pairedDir('bench', 4);
    const r = cli(['bench', 'loader', join(dir, 'img'), '-w', '1', '-b', '4', '-n', '2', '--size', '32']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ours: number; images: number };
    expect(j.images).toBe(8);
    expect(j.ours).toBeGreaterThan(0);
    expect(cli(['bench', 'sprint']).stderr).toMatch(/unknown benchmark "sprint"/);
  });
});
