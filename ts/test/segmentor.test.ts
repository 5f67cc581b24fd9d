// The UNeXt-S segmentor end to end: training lowers the loss on a tiny synthetic batch, a
// checkpoint round-trips (same predictions), a loader batch trains without passing through JS,
// and bad input is rejected with messages that name the problem.
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createSegmentor, loadSegmentor, openLoader, polyLr } from '../src/index.js';
import { SAMPLES, tempDir } from './helpers.js';

const S = 32;

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/** B grey images with a few bright diagonal "vessels" and their 0/1 masks. */
function synthetic(b: number, seed = 1): { images: Float32Array; masks: Float32Array } {
  const r = lcg(seed);
  const images = new Float32Array(b * S * S);
  const masks = new Float32Array(b * S * S);
  for (let n = 0; n < b; n++) {
    const k = 3 + Math.floor(r() * 5);
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const v = Math.abs(((x + k * y + 7 * n) % 11) - 5) < 1.5 ? 1 : 0;
        masks[n * S * S + y * S + x] = v;
        images[n * S * S + y * S + x] = 1.5 * v - 0.5 + 0.4 * (r() - 0.5);
      }
    }
  }
  return { images, masks };
}

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vasomim-seg-');
});
afterAll(() => tmp.cleanup());

describe('Segmentor', () => {
  it('trains (loss falls), saves, loads and predicts identically', async () => {
    const seg = createSegmentor({ inChans: 1 }, 0);
    expect(seg.numParams).toBeGreaterThan(240_000);
    expect(seg.numParams).toBeLessThan(270_000);
    const { images, masks } = synthetic(4);
    const losses: number[] = [];
    for (let i = 0; i < 30; i++) {
      const r = await seg.trainStep(images, masks, { lr: polyLr(1e-2, i, 100), size: S });
      expect(r.loss).toBeCloseTo(0.5 * r.bce + 0.5 * (1 - r.dice), 5);
      losses.push(r.loss);
    }
    expect(seg.step).toBe(30);
    expect(losses.at(-1)!).toBeLessThan(losses[0]! * 0.85);

    const p1 = await seg.predict(images, { size: S });
    expect(p1).toHaveLength(4 * S * S);
    expect(p1.every((v) => v >= 0 && v <= 1)).toBe(true);
    const path = join(tmp.path, 'seg.safetensors');
    await seg.save(path);
    const back = await loadSegmentor(path);
    expect(back.config.inChans).toBe(1);
    expect(back.step).toBe(30);
    expect(back.loadInfo).toMatchObject({ missing: [], unexpected: [], configSource: 'metadata' });
    expect(await back.predict(images, { size: S })).toEqual(p1);
    // The optimizer state came along: the next steps agree too.
    const a = await seg.trainStep(images, masks, { lr: 1e-3, size: S });
    const b = await back.trainStep(images, masks, { lr: 1e-3, size: S });
    expect(b).toEqual(a);
  });

  it('rejects bad shapes, values and files with a clear message', async () => {
    const seg = createSegmentor({ inChans: 1 });
    const { images, masks } = synthetic(2);
    expect(() => seg.trainStep(images.subarray(1), masks, { lr: 1e-3, size: S })).toThrow(
      /images has 2047 values, not a positive multiple of C\*H\*W = 1\*32\*32/,
    );
    expect(() => seg.trainStep(images, masks.subarray(0, S * S), { lr: 1e-3, size: S })).toThrow(
      /masks has 1024 values, expected B\*1\*H\*W = 2\*1\*32\*32 = 2048/,
    );
    expect(() => seg.predict(images, { size: 48 })).toThrow(/48x48: height and width must be positive multiples of 32/);
    const bad = masks.slice();
    bad[5] = 2;
    expect(() => seg.trainStep(images, bad, { lr: 1e-3, size: S })).toThrow(/masks\[5\] = 2 is outside \[0, 1\]/);
    expect(() => seg.trainStep(images, masks, { lr: -1, size: S })).toThrow(/lr \(-1\) must be finite/);
    expect(() => createSegmentor({ inChans: 2 as 1 })).toThrow(/inChans must be 1 or 3/);
    await expect(loadSegmentor(join(tmp.path, 'nope.safetensors'))).rejects.toThrow(/nope\.safetensors/);
  });

  it('trains on a loader batch (images and vessel maps stay in Rust)', async () => {
    const xca = join(SAMPLES, 'fercer-xca80', 'Angios_40_training');
    const dir = join(tmp.path, 'pairs');
    mkdirSync(join(dir, 'img'), { recursive: true });
    mkdirSync(join(dir, 'img_frangi'), { recursive: true });
    for (let i = 1; i <= 4; i++) {
      copyFileSync(join(xca, `${i}.png`), join(dir, 'img', `${i}.png`));
      copyFileSync(join(xca, `${i}_gt.png`), join(dir, 'img_frangi', `${i}.png`));
    }
    const loader = await openLoader(dir, { batchSize: 2, shuffle: false, augment: { size: 64 } });
    const batch = await loader.batchAt(0, 0);
    const seg = createSegmentor({ inChans: batch.channels as 1 | 3 });
    const r = await seg.trainStepBatch(batch, { lr: 1e-3 });
    expect(Number.isFinite(r.loss) && r.dice > 0 && r.dice < 1).toBe(true);
    expect(seg.step).toBe(1);
    // The same batch passed through JS gives the same loss on a twin segmentor.
    const twin = createSegmentor({ inChans: batch.channels as 1 | 3 });
    const r2 = await twin.trainStep(batch.images(), batch.maps()!, { lr: 1e-3, size: 64 });
    expect(r2.loss).toBe(r.loss);
    const grey = createSegmentor({ inChans: batch.channels === 3 ? 1 : 3 });
    expect(() => grey.trainStepBatch(batch, { lr: 1e-3 })).toThrow(/the batch has \d channels, the segmentor takes \d/);
    await loader.close?.();
  });
});
