// Masking policies, their schedule, the seeded RNG and the LR schedule: pure functions, tested
// against exact probabilities, reference vectors and the paper's stated numbers.
import { describe, expect, it } from 'vitest';

import { randomMaskBatch } from '../src/model/index.js';
import { batchMasks, guidedMasking, guidedTarget, maskCounts, randomMasking, type Mask } from '../src/train/masking.js';
import { Rng } from '../src/train/rng.js';
import { absoluteLr, accumulation, fractionalEpoch, lrAt } from '../src/train/schedule.js';

function checkMask(m: Mask, L: number, lenKeep: number) {
  expect(m.idsKeep.length).toBe(lenKeep);
  for (let k = 1; k < lenKeep; k++) expect(m.idsKeep[k]!).toBeGreaterThan(m.idsKeep[k - 1]!);
  expect([...m.idsRestore].sort((a, b) => a - b)).toEqual([...Array(L).keys()]);
  for (let i = 0; i < L; i++) {
    if (m.mask[i]) expect(m.idsRestore[i]!).toBeGreaterThanOrEqual(lenKeep);
    else expect(m.idsKeep[m.idsRestore[i]!]).toBe(i);
  }
  expect(m.mask.reduce((a, b) => a + b, 0)).toBe(L - lenKeep);
}

/** |observed - expected| within z standard errors of a binomial proportion. */
function expectProportion(count: number, n: number, p: number, z = 4.5) {
  const se = Math.sqrt((p * (1 - p)) / n) || 1 / n;
  expect(Math.abs(count / n - p), `observed ${count / n}, expected ${p}`).toBeLessThanOrEqual(z * se);
}

describe('Rng', () => {
  it('is xoshiro128** (reference vector from state 1,2,3,4)', () => {
    const r = Rng.fromState([1, 2, 3, 4]);
    expect([r.nextU32(), r.nextU32(), r.nextU32()]).toEqual([11520, 0, 5927040]);
  });

  it('derives reproducible, distinct streams from keys and round-trips its state', () => {
    const a = Rng.forKeys(0, 3, 17);
    const b = Rng.forKeys(0, 3, 17);
    const seqA = Array.from({ length: 5 }, () => a.nextU32());
    expect(Array.from({ length: 5 }, () => b.nextU32())).toEqual(seqA);
    expect(Rng.forKeys(0, 3, 18).nextU32()).not.toBe(seqA[0]);
    expect(Rng.forKeys(0, 2 ** 40, 1).nextU32()).not.toBe(Rng.forKeys(0, 0, 1).nextU32());
    const c = Rng.forKeys(9);
    c.nextU32();
    const d = Rng.fromState(c.state());
    expect(Array.from({ length: 4 }, () => d.uniform())).toEqual(Array.from({ length: 4 }, () => c.uniform()));
    expect(() => Rng.forKeys(-1)).toThrow(/non-negative safe integer/);
    expect(() => Rng.fromState([1, 2, 3] as never)).toThrow(/four uint32/);
  });

  it('draws uniform integers without bias', () => {
    const r = Rng.forKeys(42);
    const n = 70_000;
    const counts = new Array(7).fill(0);
    for (let i = 0; i < n; i++) counts[r.int(7)]++;
    for (const c of counts) expectProportion(c, n, 1 / 7);
  });
});

describe('masking schedule', () => {
  it('matches the paper: first guided patch at epoch 16 of 800, 49 of 98 in the last epoch', () => {
    const { lenKeep, numMask } = maskCounts(196, 0.5);
    expect([lenKeep, numMask]).toEqual([98, 98]);
    expect(guidedTarget(numMask, 15, 800, 0, 0.5)).toBe(0);
    expect(guidedTarget(numMask, 16, 800, 0, 0.5)).toBe(1);
    expect(guidedTarget(numMask, 799, 800, 0, 0.5)).toBe(49);
    expect(maskCounts(196, 0.75)).toEqual({ lenKeep: 49, numMask: 147 });
    expect(() => maskCounts(196, 1)).toThrow(/maskRatio/);
  });
});

describe('randomMasking', () => {
  it('keeps floor(L(1-r)) patches in ascending order with a consistent ids_restore', () => {
    const r = Rng.forKeys(1);
    for (let k = 0; k < 20; k++) checkMask(randomMasking(196, 0.5, r), 196, 98);
    checkMask(randomMasking(49, 0.75, r), 49, 12);
  });

  it('masks every patch with probability num_mask / L', () => {
    const r = Rng.forKeys(2);
    const n = 20_000;
    const counts = new Array(10).fill(0);
    for (let k = 0; k < n; k++) randomMasking(10, 0.3, r).mask.forEach((v, i) => (counts[i] += v));
    for (const c of counts) expectProportion(c, n, 0.3);
  });

  it('is what randomMaskBatch (the model API) draws per image', () => {
    const r = Rng.forKeys(4);
    const m = randomMaskBatch(3, 16, 0.75, () => r.uniform());
    const again = Rng.forKeys(4);
    const source = { int: (n: number) => Math.floor(again.uniform() * n) };
    for (let b = 0; b < 3; b++) {
      const one = randomMasking(16, 0.75, source);
      checkMask(one, 16, 4);
      expect(Array.from(m.idsKeep.subarray(4 * b, 4 * b + 4))).toEqual(Array.from(one.idsKeep));
      expect(Array.from(m.idsRestore.subarray(16 * b, 16 * b + 16))).toEqual(Array.from(one.idsRestore));
      expect(Array.from(m.mask.subarray(16 * b, 16 * b + 16))).toEqual(Array.from(one.mask));
    }
  });
});

describe('guidedMasking', () => {
  it('picks the first guided patch with probability p (Gumbel-max)', () => {
    const mass = [4, 2.5, 1.5, 1, 1, 0];
    const r = Rng.forKeys(3);
    const n = 40_000;
    const counts = new Array(6).fill(0);
    for (let k = 0; k < n; k++) {
      const m = guidedMasking(mass, 0.1, 1, r); // L = 6, num_mask = 1, all of it guided
      expect(m.guided).toBe(1);
      m.mask.forEach((v, i) => (counts[i] += v));
    }
    mass.forEach((s, i) => expectProportion(counts[i], n, s / 10));
    expect(counts[5]).toBe(0);
  });

  it('follows sequential draws without replacement, then a uniform fill (exact inclusion probabilities)', () => {
    const p = [0.4, 0.25, 0.15, 0.1, 0.1, 0];
    // L = 6, ratio 0.34: len_keep = 3, num_mask = 3; 2 guided + 1 uniform among the other 4.
    const exact = new Array(6).fill(0);
    for (let a = 0; a < 6; a++)
      for (let b = 0; b < 6; b++) {
        if (a === b || p[a] === 0 || p[b] === 0) continue;
        const pr = p[a]! * (p[b]! / (1 - p[a]!));
        for (let i = 0; i < 6; i++) exact[i] += pr * (i === a || i === b ? 1 : 1 / 4);
      }
    const r = Rng.forKeys(4);
    const n = 40_000;
    const counts = new Array(6).fill(0);
    for (let k = 0; k < n; k++) {
      const m = guidedMasking(p, 0.34, 2, r);
      expect(m.guided).toBe(2);
      checkMask(m, 6, 3);
      m.mask.forEach((v, i) => (counts[i] += v));
    }
    exact.forEach((e, i) => expectProportion(counts[i], n, e));
  });

  it('guides at most as many patches as have mass, and falls back to random on an empty map', () => {
    const mass = new Array(196).fill(0);
    mass[5] = 3;
    mass[70] = 1;
    const r = Rng.forKeys(5);
    const m = guidedMasking(mass, 0.5, 40, r);
    expect(m.guided).toBe(2);
    expect([m.mask[5], m.mask[70]]).toEqual([1, 1]);
    checkMask(m, 196, 98);
    const empty = guidedMasking(new Array(196).fill(0), 0.5, 40, r);
    expect(empty.guided).toBe(0);
    checkMask(empty, 196, 98);
    expect(() => guidedMasking([1, Number.NaN], 0.5, 1, r)).toThrow(/patch 1 is NaN/);
  });
});

describe('batchMasks', () => {
  const opts = {
    policy: 'vessel-guided' as const,
    maskRatio: 0.5,
    epoch: 799,
    epochs: 800,
    alpha0: 0,
    alphaT: 0.5,
    seed: 0,
  };
  const L = 16;
  const massOf = (id: number) => Array.from({ length: L }, (_, i) => ((i * 7 + id) % 5) + (i % 3 === 0 ? 0 : 1));

  it('gives each sample the same mask whatever batch it is in (keyed by seed, epoch, sample id)', () => {
    const both = batchMasks(opts, L, [3, 7], [...massOf(3), ...massOf(7)]);
    const alone = batchMasks(opts, L, [7], massOf(7));
    expect(both.mask.slice(L)).toEqual(alone.mask);
    expect(both.idsKeep.slice(both.lenKeep)).toEqual(alone.idsKeep);
    expect(both.guided[1]).toBe(4); // floor(8 * 0.5)
    const nextEpoch = batchMasks({ ...opts, epoch: 798 }, L, [7], massOf(7));
    expect(nextEpoch.mask).not.toEqual(alone.mask);
    const random = batchMasks({ ...opts, policy: 'random' }, L, [7]);
    expect(random.guided[0]).toBe(0);
  });

  it('needs a (B, L) mass for guided masking', () => {
    expect(() => batchMasks(opts, L, [1, 2], massOf(1))).toThrow(/\(B, L\) = \(2, 16\) guidance mass; got 16 values/);
  });
});

describe('learning-rate schedule', () => {
  const s = { lr: 1.2e-3, minLr: 0, warmupEpochs: 40, epochs: 800 };
  it('warms up linearly then follows a half cosine to min_lr', () => {
    expect(lrAt(0, s)).toBe(0);
    expect(lrAt(20, s)).toBeCloseTo(6e-4, 15);
    expect(lrAt(40, s)).toBeCloseTo(1.2e-3, 15);
    expect(lrAt(420, s)).toBeCloseTo(6e-4, 15);
    expect(lrAt(800, s)).toBeCloseTo(0, 15);
    expect(lrAt(fractionalEpoch(0, 50, 100), s)).toBeCloseTo((1.2e-3 * 0.5) / 40, 18);
  });
  it('scales blr by the effective batch and splits it into micro-batches', () => {
    expect(absoluteLr(1.5e-4, 2048)).toBeCloseTo(1.2e-3, 15);
    expect(accumulation(2048, 8, 256)).toEqual({ microBatch: 256, accumSteps: 1 });
    expect(accumulation(2048, 1, 48)).toEqual({ microBatch: 32, accumSteps: 64 });
    expect(() => accumulation(2048, 3, 64)).toThrow(/not divisible by 3/);
  });
});
