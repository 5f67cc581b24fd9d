// `evaluate`: threshold tuning, the Predictor plug-in point (Node API), and `vasomim evaluate
// --baseline` end to end on a few real angiograms, with its errors for bad input.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { diceCurve, evaluateSegmentation, readImage, thresholdGrid, type Predictor } from '../src/index.js';
import { cli, encodePng, SAMPLES, tempDir, xcaSubset } from './helpers.js';

const tmp = tempDir('vasomim-evaluate-');
afterAll(() => tmp.cleanup());
const XCA = join(SAMPLES, 'fercer-xca80');

describe('threshold tuning', () => {
  it('diceCurve equals thresholding at every grid point', () => {
    const scores = Float32Array.from([0, 0.1, 0.1, 0.25, 0.5, 0.74, 0.75, 0.99, 1, 0.3]);
    const truth = [0, 0, 1, 1, 1, 1, 0, 1, 1, 0];
    const grid = thresholdGrid(4); // 0.25, 0.5, 0.75
    expect(grid).toEqual([0.25, 0.5, 0.75]);
    const c = diceCurve(scores, truth, grid);
    grid.forEach((t, j) => {
      let tp = 0;
      let p = 0;
      let g = 0;
      scores.forEach((s, i) => {
        p += s >= t ? 1 : 0;
        g += truth[i]!;
        tp += s >= t && truth[i] ? 1 : 0;
      });
      expect(c[j]).toBeCloseTo((2 * tp) / (p + g), 12);
    });
    expect(Array.from(diceCurve([0, 0], [0, 0], grid))).toEqual([1, 1, 1]);
  });
});

describe('evaluateSegmentation with a plugged-in predictor', () => {
  it('tunes on train, reports on test, and scores a perfect predictor 1', async () => {
    // dark vessels (grey 10) on a bright background (200); the predictor scores darkness
    const root = join(tmp.path, 'synthetic');
    for (const split of ['train', 'test']) {
      mkdirSync(join(root, split), { recursive: true });
      for (let k = 0; k < 2; k++) {
        const w = 24 + 8 * k;
        const h = 20;
        const vessel = (x: number, y: number) => Math.abs(y - 10 - k) <= 1 || x === 5 + 3 * k;
        const img = Array.from({ length: w * h }, (_, i) => (vessel(i % w, Math.floor(i / w)) ? 10 : 200));
        writeFileSync(join(root, split, `${k}.png`), encodePng(w, h, img));
        writeFileSync(
          join(root, split, `${k}_gt.png`),
          encodePng(
            w,
            h,
            img.map((v) => (v === 10 ? 255 : 0)),
          ),
        );
      }
    }
    const seen: number[] = [];
    const darkness: Predictor = {
      name: 'darkness',
      describe: () => ({ kind: 'test' }),
      async predict({ width, height, pixels }) {
        seen.push(width);
        return { width, height, classes: 1, probs: Float32Array.from(pixels, (v) => 1 - v / 255) };
      },
    };
    const out = join(tmp.path, 'synthetic-out');
    const s = await evaluateSegmentation(root, darkness, { out, jobs: 1, steps: 10, examples: 1 });
    expect(seen).toEqual([24, 32, 24, 32]); // train (tuning), then test
    expect(s.threshold!.how).toBe('tuned');
    // background scores 0.216, vessels 0.961: the smallest grid point above 0.216
    expect(s.threshold!.value).toBeCloseTo(0.3, 12);
    expect(s.threshold!.meanDsc).toBe(1);
    expect(s.metrics.dsc.mean).toBe(1);
    expect(s.metrics.cldice.mean).toBe(1);
    expect(s.metrics.auc.mean).toBe(1);
    expect(s.predictor).toMatchObject({ name: 'darkness', kind: 'test' });
    const fixed = await evaluateSegmentation(root, darkness, { out, threshold: 0.99, examples: 0 });
    expect(fixed.threshold).toEqual({ value: 0.99, how: 'fixed' });
    expect(fixed.metrics.dsc.mean).toBe(0);
    expect(fixed.files.contactSheet).toBeNull();

    const wrong: Predictor = {
      ...darkness,
      predict: async ({ width, height }) => ({
        width: width + 1,
        height,
        classes: 1,
        probs: new Float32Array((width + 1) * height),
      }),
    };
    await expect(evaluateSegmentation(root, wrong, { out, threshold: 0.5 })).rejects.toThrow(
      /predictor darkness returned 1x25x20 for .*0\.png \(24x20\)/,
    );
  });

  it('reports the first bad image in name order, whatever finishes first', async () => {
    const root = join(tmp.path, 'synthetic');
    // 0.png fails late, 1.png fails at once: the error is still 0.png's
    const slowFirst: Predictor = {
      name: 'slow',
      describe: () => ({}),
      async predict({ width }) {
        await new Promise((r) => setTimeout(r, width === 24 ? 50 : 0));
        throw new Error(`bad image of width ${width}`);
      },
    };
    for (const jobs of [1, 2, 4])
      await expect(
        evaluateSegmentation(root, slowFirst, { out: join(tmp.path, 'slow-out'), threshold: 0.5, jobs }),
      ).rejects.toThrow('bad image of width 24');
  });
});

describe('vasomim evaluate --baseline', () => {
  it('documents its options', () => {
    const r = cli(['evaluate', '--help']);
    expect(r.code).toBe(0);
    for (const f of [
      '--baseline',
      '--data',
      '--out',
      '--task',
      '--threshold',
      '--steps',
      '--train-dir',
      '--limit',
      '--examples',
      '--json',
    ])
      expect(r.stdout).toContain(f);
    expect(cli(['--help']).stdout).toMatch(/evaluate\s+segmentation metrics/);
  });

  it('tunes on train, evaluates test, writes per-image CSV, summary, threshold curve and contact sheet', async () => {
    const root = xcaSubset(tmp.path, 'xca-small', [1, 2, 3], [4, 5]);
    const out = join(tmp.path, 'out-sato');
    const r = cli([
      'evaluate',
      '--baseline',
      'sato',
      '--data',
      root,
      '--out',
      out,
      '--examples',
      '1',
      '--panel',
      '64',
      '--steps',
      '20',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/threshold 0\.\d+ \(best mean DSC 0\.\d{4} on 3 train images\)/);
    expect(r.stderr).toMatch(/img\/s/);
    const s = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(JSON.parse(r.stdout.trim())).toEqual(s);
    expect([s.images, s.split, s.dataset.format, s.predictor.name, s.threshold.split, s.threshold.images]).toEqual([
      2,
      'test',
      'paired',
      'sato',
      'train',
      3,
    ]);
    // the chosen threshold is the best row of the curve; the summary means are the CSV's
    const curve = readFileSync(join(out, 'thresholds.csv'), 'utf8')
      .trim()
      .split('\n')
      .slice(1)
      .map((l) => l.split(',').map(Number));
    expect(curve).toHaveLength(19);
    const best = curve.reduce((a, b) => (b[1]! > a[1]! ? b : a));
    expect(s.threshold.value).toBe(best[0]);
    const rows = readFileSync(join(out, 'per-image.csv'), 'utf8').trim().split('\n');
    expect(rows[0]).toBe('id,width,height,dsc,cldice,iou,precision,recall,auc');
    expect(rows.slice(1).map((l) => l.split(',')[0])).toEqual([join('testing', '4.png'), join('testing', '5.png')]);
    const dsc = rows.slice(1).map((l) => Number(l.split(',')[3]));
    expect(s.metrics.dsc.mean).toBeCloseTo((dsc[0]! + dsc[1]!) / 2, 5);
    for (const k of ['dsc', 'cldice', 'iou', 'precision', 'recall', 'auc']) {
      expect(s.metrics[k].n).toBe(2);
      expect(s.metrics[k].mean).toBeGreaterThan(0.2); // a working vessel filter, not noise
      expect(s.metrics[k].mean).toBeLessThanOrEqual(1);
    }
    expect(s.metrics.auc.mean).toBeGreaterThan(0.85);
    const sheet = await readImage(join(out, 'contact-sheet.png'));
    expect([sheet.width, sheet.height, sheet.channels]).toEqual([3 * 64 + 16, 2 * (64 + 4) + 4, 3]);
    expect(s.contactSheet.worst).toHaveLength(1);
    expect(s.contactSheet.best).toHaveLength(1);
  });

  it('rejects bad input with exit 2 and names the file or flag', () => {
    const root = xcaSubset(tmp.path, 'xca-bad', [1], [2]);
    const out = join(tmp.path, 'out-bad');
    copyFileSync(join(XCA, 'Angios_40_training', '1_gt.png'), join(root, 'testing', '2_gt.png'));
    writeFileSync(join(root, 'testing', '2_gt.png'), encodePng(30, 30, new Array(900).fill(0)));
    const mismatch = cli(['evaluate', '-b', 'frangi', '-d', root, '-o', out]);
    expect(mismatch.code).toBe(2);
    expect(mismatch.stderr).toMatch(/testing.2_gt\.png: mask is 30x30 but its image .*testing.2\.png is 300x300/);
    expect(existsSync(join(out, 'summary.json'))).toBe(false);
    const empty = cli(['evaluate', '-b', 'sato', '-d', root, '-o', out, '--test-dir', 'nothing-here']);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/nothing-here: no such folder \(splits\.test\)/);
    mkdirSync(join(root, 'none'));
    const noTest = cli([
      'evaluate',
      '-b',
      'sato',
      '-d',
      root,
      '-o',
      out,
      '--train-dir',
      'training',
      '--test-dir',
      'none',
    ]);
    expect(noTest.code).toBe(2);
    expect(noTest.stderr).toMatch(/the test split is empty \(found train 1\)/);
    const model = cli(['evaluate', 'vit.safetensors', '-d', root, '-o', out]);
    expect(model.code).toBe(2);
    expect(model.stderr).toMatch(/vit\.safetensors: No such file/);
    expect(model.stderr).not.toMatch(/candle_core/); // the message, not a backtrace
    const flags = cli(['evaluate', '-b', 'gabor', '-d', root, '-o', out]);
    expect(flags.code).toBe(2);
    expect(flags.stderr).toMatch(/--baseline: "gabor" \(expected sato, frangi, frangi1998\)/);
    const thr = cli(['evaluate', '-b', 'sato', '-d', root, '-o', out, '--threshold', '2']);
    expect(thr.code).toBe(2);
    expect(thr.stderr).toMatch(/threshold: threshold must be in \[0, 1\]/);
  });
});
