// COCO bbox evaluation against pycocotools 2.0.11: the committed golden cases
// (scripts/golden/pycocotools_cases.py: ties, duplicates, crowd boxes, detections on images
// without GT, > 100 detections, IoU exactly at a threshold, empty categories), every figure
// within 1e-9 and the printed lines identical; a live comparison on seeded random scenes that
// skips, saying why, without pycocotools; the file checks and the `coco-eval` command.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  checkCocoGt,
  checkCocoResults,
  cocoEvaluate,
  type CocoDetection,
  type CocoGt,
} from '../src/detection/coco-eval.js';
import { Rng } from '../src/train/rng.js';
import { cli, ROOT, tempDir } from './helpers.js';

interface Case {
  name: string;
  gt: CocoGt;
  dt: CocoDetection[];
  stats: number[];
  lines: string[];
  perCategory: { id: number; ap: number; ap50: number; ap75: number }[];
}

const golden = JSON.parse(readFileSync(join(ROOT, 'ts', 'test', 'golden', 'coco-eval.json'), 'utf8')) as {
  cases: Case[];
};
const tmp = tempDir('vasomim-coco-');
afterAll(() => tmp.cleanup());

function expectSame(ours: ReturnType<typeof cocoEvaluate>, peer: Omit<Case, 'name' | 'gt' | 'dt'>) {
  expect(ours.stats).toHaveLength(12);
  ours.stats.forEach((s, i) => expect(Math.abs(s - peer.stats[i]!), `stat ${i}`).toBeLessThanOrEqual(1e-9));
  expect(ours.lines).toEqual(peer.lines);
  for (const [k, p] of peer.perCategory.entries()) {
    const o = ours.perCategory[k]!;
    expect(o.id).toBe(p.id);
    for (const f of ['ap', 'ap50', 'ap75'] as const)
      expect(Math.abs(o[f] - p[f]), `${p.id} ${f}`).toBeLessThanOrEqual(1e-9);
  }
}

describe('COCO bbox evaluation: golden cases from pycocotools 2.0.11', () => {
  it('covers the cases the spec names', () => {
    const names = golden.cases.map((c) => c.name).join(' | ');
    for (const w of ['ties', 'duplicates', 'crowd', 'without GT', 'more than 100', 'exactly at', 'empty categories'])
      expect(names).toContain(w);
  });
  for (const c of golden.cases)
    it(c.name, () => {
      expectSame(cocoEvaluate(c.gt, c.dt), c);
    });

  it('a detection moved off its box changes the figures (the comparison can fail)', () => {
    const c = golden.cases.find((x) => x.name.startsWith('IoU exactly'))!;
    const dt = c.dt.map((d, i) => (i === 1 ? { ...d, bbox: [0, 0, 10, 7.4999] } : d));
    expect(cocoEvaluate(c.gt, dt).stats[2]).toBeLessThan(c.stats[2]! - 1e-3);
  });
});

describe('COCO files: one clear error per problem', () => {
  const gt = golden.cases[0]!.gt;
  it('names the file and the field', () => {
    expect(() => checkCocoGt({ images: [] }, 'gt.json')).toThrow('gt.json: annotations: missing or not a list');
    const noArea = { ...gt, annotations: [{ ...gt.annotations[0]!, area: undefined }] };
    expect(() => checkCocoGt(noArea, 'gt.json')).toThrow('gt.json: annotations[0].area: expected a number');
    const strayImg = { ...gt, annotations: [{ ...gt.annotations[0]!, image_id: 99 }] };
    expect(() => checkCocoGt(strayImg, 'gt.json')).toThrow('annotations[0].image_id: 99 is no image id');
    expect(() => checkCocoResults({}, gt, 'dt.json')).toThrow('dt.json: top level: expected a list');
    expect(() =>
      checkCocoResults([{ image_id: 77, category_id: 1, bbox: [0, 0, 1, 1], score: 1 }], gt, 'dt.json'),
    ).toThrow('dt.json: [0].image_id: 77 is not an image of the ground truth');
    expect(() => checkCocoResults([{ image_id: 1, category_id: 1, bbox: [0, 0, 1], score: 1 }], gt, 'dt.json')).toThrow(
      '[0].bbox: expected [x, y, width, height]',
    );
  });
  it('an empty results list evaluates to AP 0 (pycocotools raises)', () => {
    const r = cocoEvaluate(gt, []);
    expect(r.stats[0]).toBe(0);
    expect(r.stats[8]).toBe(0);
  });
});

describe('vasomim coco-eval', () => {
  it('prints the summary, writes --out, and reports bad files in one line (exit 2)', () => {
    const c = golden.cases[2]!;
    const g = join(tmp.path, 'gt.json');
    const d = join(tmp.path, 'dt.json');
    const out = join(tmp.path, 'summary.json');
    writeFileSync(g, JSON.stringify(c.gt));
    writeFileSync(d, JSON.stringify(c.dt));
    const r = cli(['coco-eval', '--gt', g, '--dt', d, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.replace(/\n$/, '').split('\n')).toEqual(c.lines);
    const s = JSON.parse(readFileSync(out, 'utf8')) as { stats: number[]; summary: { AP50: number } };
    expect(s.stats).toEqual(cocoEvaluate(c.gt, c.dt).stats);
    expect(Math.abs(s.summary.AP50 - c.stats[1]!)).toBeLessThanOrEqual(1e-9);
    const bad = cli(['coco-eval', '--gt', g, '--dt', join(tmp.path, 'missing.json')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.split('\n')[0]).toMatch(/^vasomim coco-eval: .*missing\.json: no such file \(results\)$/);
  });
});

// Live: seeded random scenes through scripts/peers/pycocotools_eval.py.
const PY = process.env.VASOMIM_PYTHON ?? 'python3';
const probe = spawnSync(PY, ['-c', 'import pycocotools, numpy; from pycocotools.cocoeval import COCOeval'], {
  encoding: 'utf8',
});
const peerOk = probe.status === 0;
if (!peerOk)
  console.warn(
    `coco-eval: live parity skipped: ${PY} cannot import pycocotools ` +
      `(${probe.stderr.trim().split('\n').pop()}); pip install -r scripts/peers/requirements.txt`,
  );

function randomScene(seed: number): { gt: CocoGt; dt: CocoDetection[] } {
  const rng = Rng.forKeys(seed);
  const images = Array.from({ length: 8 }, (_, i) => ({ id: 3 * i + 1 }));
  const annotations: CocoGt['annotations'] = [];
  const dt: CocoDetection[] = [];
  for (const im of images) {
    const n = Math.floor(rng.uniform() * 5);
    for (let j = 0; j < n; j++) {
      const s = [10, 30, 60, 120][Math.floor(rng.uniform() * 4)]!;
      const [x, y, w, h] = [
        rng.uniform() * 400,
        rng.uniform() * 400,
        s * (0.6 + rng.uniform()),
        s * (0.6 + rng.uniform()),
      ];
      const cat = 1 + Math.floor(rng.uniform() * 2);
      annotations.push({
        id: annotations.length + 1,
        image_id: im.id,
        category_id: cat,
        bbox: [x, y, w, h],
        area: w * h * (0.5 + rng.uniform() * 0.5),
        iscrowd: rng.uniform() < 0.1 ? 1 : 0,
      });
      for (let k = Math.floor(rng.uniform() * 3); k > 0; k--) {
        const jit = () => (rng.uniform() - 0.5) * 0.4 * s;
        dt.push({
          image_id: im.id,
          category_id: cat,
          bbox: [x + jit(), y + jit(), w + jit(), h + jit()],
          score: Math.round(rng.uniform() * 20) / 20,
        });
      }
    }
    for (let k = Math.floor(rng.uniform() * 4); k > 0; k--)
      dt.push({
        image_id: im.id,
        category_id: 1,
        bbox: [rng.uniform() * 400, rng.uniform() * 400, 35, 25],
        score: rng.uniform(),
      });
  }
  return {
    gt: {
      images,
      annotations,
      categories: [
        { id: 1, name: 'a' },
        { id: 2, name: 'b' },
      ],
    },
    dt,
  };
}

describe.skipIf(!peerOk)('live parity with pycocotools', () => {
  it('seeded random scenes: every figure within 1e-9, identical printed lines', () => {
    for (let seed = 1; seed <= 6; seed++) {
      const { gt, dt } = randomScene(seed);
      if (dt.length === 0) continue;
      const g = join(tmp.path, `gt-${seed}.json`);
      const d = join(tmp.path, `dt-${seed}.json`);
      writeFileSync(g, JSON.stringify(gt));
      writeFileSync(d, JSON.stringify(dt));
      const r = spawnSync(PY, [join(ROOT, 'scripts', 'peers', 'pycocotools_eval.py'), g, d], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expectSame(cocoEvaluate(gt, dt), JSON.parse(r.stdout) as Case);
    }
  });
});
