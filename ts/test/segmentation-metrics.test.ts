// Segmentation metrics and the COCO polygon fill: hand-computed cases, and golden fixtures from
// scikit-image (skeletonize, draw.polygon2mask) and an exact Mann-Whitney AUC
// (scripts/golden/seg_metrics.py writes ts/test/golden/seg-metrics.json).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import {
  binaryMetrics,
  clDice,
  dice,
  fillPolygon,
  multiClassMetrics,
  rocAuc,
  SKIMAGE_DEPARTURES,
  skeletonize,
  summarize,
} from '../src/index.js';
import { ROOT } from './helpers.js';

interface Golden {
  versions: Record<string, string>;
  skeletons: { name: string; width: number; height: number; mask: string; skeleton: string }[];
  polygons: { name: string; width: number; height: number; polygon: number[]; mask: string }[];
  auc: { name: string; scores: number[]; labels: number[]; auc: number }[];
  pairs: {
    name: string;
    width: number;
    height: number;
    truth: string;
    preds: { how: string; pred: string; dsc: number; cldice: number }[];
  }[];
}
const golden = JSON.parse(readFileSync(join(ROOT, 'ts', 'test', 'golden', 'seg-metrics.json'), 'utf8')) as Golden;

/** base64 of numpy.packbits (MSB first) -> 0/1 per pixel */
function unpack(b64: string, n: number): Uint8Array {
  const bytes = Buffer.from(b64, 'base64');
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (bytes[i >> 3]! >> (7 - (i & 7))) & 1;
  return out;
}
const diffCount = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let d = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) d++;
  return d;
};
/** A mask from rows of '#' and '.' */
const grid = (...rows: string[]) => ({
  width: rows[0]!.length,
  height: rows.length,
  data: Uint8Array.from(rows.join('').split(''), (c) => (c === '#' ? 1 : 0)),
});

describe('binary metrics (hand-computed)', () => {
  it('DSC, IoU, precision, recall of overlapping masks', () => {
    const p = [1, 1, 1, 0];
    const g = [0, 1, 1, 1];
    const m = binaryMetrics(p, g, 4, 1);
    expect(m.dsc).toBeCloseTo(4 / 6, 12);
    expect(m.iou).toBeCloseTo(2 / 4, 12);
    expect(m.precision).toBeCloseTo(2 / 3, 12);
    expect(m.recall).toBeCloseTo(2 / 3, 12);
    expect(Number.isNaN(m.auc)).toBe(true);
    expect(dice([1, 0, 0, 0], [1, 1, 1, 0])).toBeCloseTo(2 / 4, 12);
  });

  it('empty prediction and truth score 1; one-sided emptiness scores 0', () => {
    const both = binaryMetrics([0, 0, 0, 0], [0, 0, 0, 0], 2, 2);
    expect([both.dsc, both.cldice, both.iou, both.precision, both.recall]).toEqual([1, 1, 1, 1, 1]);
    const miss = binaryMetrics([0, 0, 0, 0], [0, 1, 1, 0], 2, 2);
    expect([miss.dsc, miss.cldice, miss.iou, miss.precision, miss.recall]).toEqual([0, 0, 0, 0, 0]);
    const spurious = binaryMetrics([1, 0, 0, 0], [0, 0, 0, 0], 2, 2);
    expect([spurious.dsc, spurious.iou, spurious.precision, spurious.recall]).toEqual([0, 0, 0, 0]);
  });

  it('clDice of a line against part of it: Tprec 1, Tsens 3/5', () => {
    const g = grid('.....', '#####', '.....');
    const p = grid('.....', '###..', '.....');
    expect(clDice(p.data, g.data, 5, 3)).toBeCloseTo((2 * 1 * 0.6) / 1.6, 12);
    expect(clDice(g.data, g.data, 5, 3)).toBe(1);
    // a prediction equal to the truth's skeleton: Tprec = Tsens = 1 (thinning a skeleton keeps it)
    const c = golden.skeletons.find((k) => k.name.endsWith('1_gt.png'))!;
    const truth = unpack(c.mask, c.width * c.height);
    const skel = skeletonize(truth, c.width, c.height);
    expect(diffCount(skeletonize(skel, c.width, c.height), skel)).toBe(0);
    expect(clDice(skel, truth, c.width, c.height)).toBe(1);
    expect(dice(skel, truth)).toBeLessThan(0.5);
  });

  it('rejects masks of the wrong size', () => {
    expect(() => binaryMetrics([1, 0, 1], [1, 0, 1], 2, 2)).toThrow(/prediction has 3 pixels, expected 2x2/);
    expect(() => skeletonize([1, 0], 3, 1)).toThrow(/expected 3x1/);
  });
});

describe('ROC-AUC', () => {
  it('hand cases, ties counted as one half', () => {
    expect(rocAuc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])).toBeCloseTo(0.75, 12);
    expect(rocAuc([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1])).toBeCloseTo(3.5 / 4, 12);
    expect(rocAuc([0.5, 0.5], [1, 0])).toBe(0.5);
    expect(rocAuc([3, 2, 1], [1, 1, 0])).toBe(1);
    expect(rocAuc([1, 2, 3], [1, 1, 0])).toBe(0);
    expect(Number.isNaN(rocAuc([0.1, 0.9], [1, 1]))).toBe(true);
  });

  it.each(golden.auc.map((c) => [c.name, c] as const))('%s equals the Mann-Whitney AUC', (_, c) => {
    expect(rocAuc(Float32Array.from(c.scores), c.labels)).toBeCloseTo(c.auc, 12);
  });
});

describe(`skeletonize = scikit-image ${golden.versions['scikit-image']} skeletonize (2-D)`, () => {
  it.each(golden.skeletons.map((c) => [c.name, c] as const))('%s', (_, c) => {
    const n = c.width * c.height;
    const got = skeletonize(unpack(c.mask, n), c.width, c.height);
    expect(diffCount(got, unpack(c.skeleton, n))).toBe(0);
  });

  it('needs the departures from the textbook conditions (they change real vessel skeletons)', () => {
    expect(SKIMAGE_DEPARTURES).toHaveLength(25);
    const c = golden.skeletons.find((s) => s.name.endsWith('1_gt.png'))!;
    const n = c.width * c.height;
    const textbook = skeletonize(unpack(c.mask, n), c.width, c.height, { variant: 'textbook' });
    expect(diffCount(textbook, unpack(c.skeleton, n))).toBeGreaterThan(0);
  });
});

describe('DSC and clDice of real vessel masks = numpy + scikit-image', () => {
  for (const pc of golden.pairs)
    it.each(pc.preds.map((p) => [p.how, p] as const))(`${pc.name} %s`, (_, p) => {
      const n = pc.width * pc.height;
      const m = binaryMetrics(unpack(p.pred, n), unpack(pc.truth, n), pc.width, pc.height);
      expect(m.dsc).toBeCloseTo(p.dsc, 12);
      expect(m.cldice).toBeCloseTo(p.cldice, 12);
    });
});

describe('fillPolygon = scikit-image polygon2mask at pixel centres', () => {
  it.each(golden.polygons.map((c) => [c.name, c] as const))('%s', (_, c) => {
    const mask = new Uint8Array(c.width * c.height);
    const count = fillPolygon(mask, c.width, c.height, c.polygon);
    const want = unpack(c.mask, c.width * c.height);
    expect(diffCount(mask, want)).toBe(0);
    expect(count).toBe(want.reduce((a, b) => a + b, 0));
  });

  it('fills a rectangle by pixel centres, boundary included', () => {
    const m = new Uint8Array(6 * 4);
    fillPolygon(m, 6, 4, [1, 1, 4, 1, 4, 3, 1, 3], 7);
    expect(Array.from(m)).toEqual([0, 0, 0, 0, 0, 0, 0, 7, 7, 7, 0, 0, 0, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
  });
});

describe('multi-class metrics and summaries', () => {
  it('per-class metrics of a label map', () => {
    const pred = [0, 1, 1, 2, 2, 0];
    const truth = [0, 1, 2, 2, 2, 0];
    const m = multiClassMetrics(pred, truth, 3, 2, 4);
    expect(m.map((c) => c.label)).toEqual([1, 2, 3]);
    expect(m[0]!.dsc).toBeCloseTo(2 / 3, 12); // P {1,2}, G {1}
    expect(m[1]!.dsc).toBeCloseTo(4 / 5, 12); // P {3,4}, G {2,3,4}
    expect(m[2]!.present).toBe(false);
    expect(m[2]!.dsc).toBe(1);
  });

  it('mean and population std of the finite values', () => {
    const s = summarize([1, 0.5, NaN]);
    expect([s.mean, s.std, s.n, s.min, s.max]).toEqual([0.75, 0.25, 2, 0.5, 1]);
    expect(summarize([NaN]).n).toBe(0);
  });
});
