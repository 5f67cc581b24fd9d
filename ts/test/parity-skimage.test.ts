// Live parity with the peer: scikit-image >= 0.20 run on every bundled angiogram (92 frames from
// four datasets, 300² and 512²) through scripts/peers/skimage_vessels.py, against our engine.
// The committed golden fixtures (crates/frangi/tests/golden) cover the same ground without
// Python; this test widens it to every sample. Skips, saying why, when the peer is missing.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { discover, prepareVesselMaps, readImage, vesselness } from '../src/index.js';
import { readNpy, relErr, ROOT, SAMPLES, tempDir } from './helpers.js';

const PY = process.env.VASOMIM_PYTHON ?? 'python3';
const probe = spawnSync(PY, ['-c', 'import skimage, scipy; print(skimage.__version__)'], { encoding: 'utf8' });
const version = probe.status === 0 ? probe.stdout.trim() : '';
const [maj, min] = version.split('.').map(Number);
const peerOk = version !== '' && (maj! > 0 || min! >= 20);
if (!peerOk)
  console.warn(
    `parity-skimage: skipped: ${PY} has no scikit-image >= 0.20 ` +
      `(${version || probe.stderr.trim().split('\n').pop()}); ` +
      'pip install -r scripts/peers/requirements.txt',
  );

// Tolerances (max |ours − skimage| / max |skimage|) at about 10x the worst error measured on all
// bundled frames and the golden crops, over every SIMD level (2026-11-29: f64 2.5e-15, f32 1.4e-6).
const TOL_F64 = 3e-14;
const TOL_F32 = 2e-5;

const tmp = tempDir('vasomim-parity-');
afterAll(() => tmp.cleanup());

const sources = discover(SAMPLES, { suffix: '_frangi', exclude: ['*_gt.*'] });

function runPeer(images: string[], out: string, extra: string[]) {
  const r = spawnSync(
    PY,
    [join(ROOT, 'scripts', 'peers', 'skimage_vessels.py'), ...images, '--out', out, '--repeat', '1', ...extra],
    {
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    },
  );
  if (r.status !== 0) throw new Error(`peer failed: ${r.stderr}`);
}

describe.skipIf(!peerOk)(`parity with scikit-image ${version}`, () => {
  it('Sato raw responses and wrap-cast vessel maps (f64 and f32: 0 pixels differ) on every sample', async () => {
    const bySource = new Map<string, string[]>();
    for (const t of sources.tasks) bySource.set(t.source, [...(bySource.get(t.source) ?? []), t.input]);
    let worst64 = 0;
    let worst32 = 0;
    let pixels = 0;
    let differ = 0;
    let differ32 = 0;
    const mapsOut = join(tmp.path, 'ours');
    await prepareVesselMaps(SAMPLES, {
      out: mapsOut,
      exclude: ['*_gt.*'],
      map: { cast: 'wrap' },
      filter: { precision: 'f64' },
    });
    await prepareVesselMaps(SAMPLES, {
      out: join(tmp.path, 'ours32'),
      exclude: ['*_gt.*'],
      map: { cast: 'wrap' },
      filter: { precision: 'f32' },
    });
    for (const [source, images] of bySource) {
      const peerOut = join(tmp.path, 'peer', source);
      runPeer(images, peerOut, []);
      for (const img of images) {
        const stem = basename(img, '.png');
        const ref = readNpy(join(peerOut, `${stem}.sato.npy`));
        const r64 = await vesselness(img);
        const r32 = await vesselness(img, { precision: 'f32' });
        worst64 = Math.max(worst64, relErr(r64.data, ref.data));
        worst32 = Math.max(worst32, relErr(r32.data, ref.data));
        const refMap = await readImage(join(peerOut, `${stem}.map.png`));
        const ours = await readImage(join(mapsOut, `${source}_frangi`, `${stem}.png`));
        const ours32 = await readImage(join(tmp.path, 'ours32', `${source}_frangi`, `${stem}.png`));
        pixels += refMap.pixels.length;
        for (let i = 0; i < refMap.pixels.length; i++) {
          if (ours.pixels[i] !== refMap.pixels[i]) differ++;
          if (ours32.pixels[i] !== refMap.pixels[i]) differ32++;
        }
      }
    }
    console.log(
      `parity-skimage: ${sources.tasks.length} images; ` +
        `Sato rel. error f64 ${worst64.toExponential(2)}, f32 ${worst32.toExponential(2)}; ` +
        `maps differing pixels f64 ${differ}/${pixels}, f32 ${differ32}/${pixels}`,
    );
    expect(sources.tasks.length).toBeGreaterThanOrEqual(89);
    expect(worst64).toBeLessThanOrEqual(TOL_F64);
    expect(worst32).toBeLessThanOrEqual(TOL_F32);
    expect(pixels).toBeGreaterThan(10_000_000);
    expect(differ).toBe(0);
    expect(differ32).toBe(0);
  });

  it('Frangi (scikit-image defaults) raw responses on the 512² frames', async () => {
    const images = sources.tasks.map((t) => t.input).filter((p) => !p.includes('fercer'));
    expect(images.length).toBe(12);
    const out = join(tmp.path, 'peer-frangi');
    runPeer(images, out, ['--filter', 'frangi', '--sigmas', '1,3,5,7,9']);
    let worst64 = 0;
    let worst32 = 0;
    for (const img of images) {
      const ref = readNpy(join(out, `${basename(img, '.png')}.frangi.npy`));
      worst64 = Math.max(worst64, relErr((await vesselness(img, { filter: 'frangi' })).data, ref.data));
      worst32 = Math.max(
        worst32,
        relErr((await vesselness(img, { filter: 'frangi', precision: 'f32' })).data, ref.data),
      );
    }
    console.log(
      `parity-skimage: Frangi on ${images.length} frames: ` +
        `rel. error f64 ${worst64.toExponential(2)}, f32 ${worst32.toExponential(2)}`,
    );
    expect(worst64).toBeLessThanOrEqual(TOL_F64);
    expect(worst32).toBeLessThanOrEqual(TOL_F32);
    expect(readdirSync(out).length).toBe(24);
  });
});
