// Live parity of the whole augmentation path with the peer: the loader's batches (1 grey
// channel, mean 0, std 1, so pixel = v/255) against Pillow's crop + bicubic resize + flip of the
// same real angiograms with the crop boxes and flips the loader drew (scripts/peers/pil_crops.py).
// Pillow 9.x is bit-exact with us. Newer Pillow builds (13.0 here) run the vertical pass first
// for some crop shapes, which moves a few percent of the pixels by up to 3 grey levels
// (crates/core/tests/transforms.rs shows those results equal ours with the passes swapped).
// Skips, saying why, when Pillow is missing.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { indexDataset, openLoader } from '../src/index.js';
import { ROOT, SAMPLES, tempDir } from './helpers.js';

const PY = process.env.VASOMIM_PYTHON ?? 'python3';
const probe = spawnSync(PY, ['-c', 'import PIL; print(PIL.__version__)'], { encoding: 'utf8' });
const version = probe.status === 0 ? probe.stdout.trim() : '';
if (!version)
  console.warn(
    `parity-pil: skipped: ${PY} has no Pillow (${probe.stderr.trim().split('\n').pop()}); ` +
      'pip install -r scripts/peers/requirements.txt',
  );

const tmp = tempDir('vasomim-pil-');
afterAll(() => tmp.cleanup());

describe.skipIf(!version)(`augmentation parity with Pillow ${version}`, () => {
  it('crops, resizes and flips real angiograms as Pillow does', async () => {
    const samples = [
      ...indexDataset(join(SAMPLES, 'cadica-samples')).samples,
      ...indexDataset(join(SAMPLES, 'danilov-stenosis-samples')).samples,
      ...indexDataset(join(SAMPLES, 'fercer-xca80', 'Angios_40_testing')).samples.slice(0, 10),
    ];
    const size = 224;
    const loader = await openLoader(samples, {
      maps: 'ignore',
      batchSize: 19,
      seed: 3,
      augment: { size, channels: 1, mean: [0], std: [1] },
    });
    const jobs: Record<string, unknown>[] = [];
    const ours: number[] = [];
    for (const epoch of [0, 1]) {
      const b = await loader.batchAt(epoch, 0);
      const c = b.crops;
      const img = b.images();
      b.samples.forEach((s, k) => {
        jobs.push({
          path: samples[s]!.image,
          top: c[5 * k],
          left: c[5 * k + 1],
          h: c[5 * k + 2],
          w: c[5 * k + 3],
          flip: c[5 * k + 4] === 1,
          size,
        });
        for (let i = 0; i < size * size; i++) ours.push(Math.round(img[k * size * size + i]! * 255));
      });
    }
    expect(jobs.some((j) => j.flip) && jobs.some((j) => !j.flip)).toBe(true);
    const jf = join(tmp.path, 'jobs.json');
    const out = join(tmp.path, 'out.bin');
    writeFileSync(jf, JSON.stringify(jobs));
    const r = spawnSync(PY, [join(ROOT, 'scripts', 'peers', 'pil_crops.py'), jf, out], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const peer = readFileSync(out);
    expect(peer.length).toBe(ours.length);
    let worst = 0;
    let differ = 0;
    for (let i = 0; i < peer.length; i++) {
      const d = Math.abs(ours[i]! - peer[i]!);
      worst = Math.max(worst, d);
      if (d) differ++;
    }
    console.log(
      `parity-pil: Pillow ${version}: ${jobs.length} crops, worst ${worst} grey level(s), ` +
        `${differ} of ${peer.length} pixels differ`,
    );
    if (version.startsWith('9.')) expect(differ).toBe(0);
    else {
      expect(worst).toBeLessThanOrEqual(3);
      expect(differ / peer.length).toBeLessThan(0.05);
    }
  });
});
