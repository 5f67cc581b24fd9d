// The stenosis detector end to end on micro configs: the Node API (create, trainStep on placed
// frames, save / load, detect), `finetune --task stenosis-det` (run folder, metrics, best/last
// checkpoints, --max-steps + --resume and Ctrl-C + --resume equal to an uninterrupted run, bit for
// bit), `evaluate` (its files; `coco-eval` on its gt.json / results.json gives the same figures),
// `predict` (COCO results + overlays) and bad input reported in one line.
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { detectorConfig, DetectionRunSchema } from '../src/config/detection.js';
import { native } from '../src/native.js';
import { detectionLr, drawStep, lsjPlacement } from '../src/detection/train.js';
import { readFrame } from '../src/detection/model.js';
import { Rng } from '../src/train/rng.js';
import { cli, readJsonLines, ROOT, SAMPLES, tempDir } from './helpers.js';

const tmp = tempDir('vasomim-det-');
afterAll(() => tmp.cleanup());
const DANILOV = join(SAMPLES, 'danilov-stenosis-samples');

/** The six bundled Stenosis frames with their XML. */
function stenosisCopy(name: string): string {
  const root = join(tmp.path, name);
  mkdirSync(root, { recursive: true });
  for (const f of readdirSync(DANILOV).filter((f) => /\.(png|xml)$/.test(f)))
    copyFileSync(join(DANILOV, f), join(root, f));
  return root;
}

const micro = () => {
  const run = DetectionRunSchema.parse({ model: 'micro', imgSize: 64, boxConvs: 1, fpnDim: 16, boxConvDim: 8 });
  return detectorConfig(run, native.presetConfig('micro') as unknown as Record<string, unknown>, 1);
};

describe('schedule, sampling and placements', () => {
  it('warm-up from 0.001 lr, x0.1 steps; epochs are seeded permutations; LSJ windows fit', () => {
    const c = { lr: 1, warmup: 10, lrSteps: [0.5, 0.75], iterations: 100 };
    expect(detectionLr(1, c)).toBeCloseTo(0.001, 12);
    expect(detectionLr(11, c)).toBe(1);
    expect(detectionLr(51, c)).toBeCloseTo(0.1, 12);
    expect(detectionLr(76, c)).toBeCloseTo(0.01, 12);
    const seen = [1, 2, 3].flatMap((t) => drawStep(t, 6, { seed: 3, batchSize: 2 }).indices);
    expect([...seen].sort()).toEqual([0, 1, 2, 3, 4, 5]);
    expect(drawStep(4, 6, { seed: 3, batchSize: 2 }).epoch).toBe(1);
    const rng = Rng.forKeys(1);
    for (let i = 0; i < 50; i++) {
      const p = lsjPlacement(800, 600, 512, rng, { lsjMin: 0.1, lsjMax: 2, flip: true });
      const sw = Math.round(800 * p.scale);
      expect(p.dx).toBeGreaterThanOrEqual(0);
      expect(p.dx).toBeLessThanOrEqual(Math.max(0, sw - 512));
    }
  });
});

describe('DetectionModel (Node API)', () => {
  it('trains on placed frames, saves, loads, detects in frame pixels', async () => {
    const m = native.DetectionModel.create(micro(), 1, { layerDecay: 0.7 });
    const f = await readFrame(join(DANILOV, '14_002_5_0017.png'));
    const frame = { image: f, scale: 64 / 512, dx: 0, dy: 0, flip: false, boxes: [161, 173, 179, 187], classes: [0] };
    const norm = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    const r = await m.trainStep([frame, { ...frame, flip: true }], { lr: 1e-3, weightDecay: 0.1, ...norm });
    expect(Number.isFinite(r.loss) && r.loss > 0).toBe(true);
    expect(r.step).toBe(1);
    const path = join(tmp.path, 'api.safetensors');
    await m.save(path, JSON.stringify({ classes: ['Stenosis'] }));
    const back = await native.DetectionModel.load(path);
    expect(back.step).toBe(1);
    expect(back.config).toEqual(m.config);
    const [d] = await back.detect([f], norm);
    expect(d!.boxes.length).toBe(4 * d!.scores.length);
    for (const v of d!.boxes) expect(v).toBeGreaterThanOrEqual(0);
    for (const v of d!.boxes) expect(v).toBeLessThanOrEqual(512);
    expect(() => m.trainStep([{ ...frame, boxes: [1, 2, 3] }], { lr: 1e-3, weightDecay: 0, ...norm })).toThrow(
      'frames[0]: 3 box values for 1 classes',
    );
    await expect(native.DetectionModel.load(join(tmp.path, 'missing.safetensors'))).rejects.toThrow(
      'missing.safetensors',
    );
  });
});

describe('vasomim finetune / evaluate / predict --task stenosis-det', () => {
  let data: string;
  let runs: string;
  const base = () => [
    'finetune',
    '--task',
    'stenosis-det',
    '--data',
    data,
    '--split',
    'frame',
    '--test-fraction',
    '0.34',
    '--model',
    'micro',
    '--img-size',
    '64',
    '--fpn-dim',
    '16',
    '--box-conv-dim',
    '8',
    '--box-convs',
    '1',
    '--iterations',
    '8',
    '--eval-every',
    '4',
    '--runs',
    runs,
  ];
  const metrics = (run: string) => readJsonLines(join(run, 'metrics.jsonl'));
  const losses = (run: string) =>
    metrics(run)
      .filter((r) => r.event === undefined)
      .map((r) => [r.step, r.loss]);
  beforeAll(() => {
    data = stenosisCopy('stenosis');
    runs = join(tmp.path, 'runs');
  });

  it('a run folder with metrics, checkpoints and validation AP; evaluate, coco-eval and predict agree', () => {
    const r = cli([...base(), '--name', 'full', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const run = join(runs, 'full');
    const res = JSON.parse(r.stdout) as { steps: number; best: string; bestAp50: number };
    expect(res.steps).toBe(8);
    expect(existsSync(join(run, 'checkpoints', 'last.safetensors'))).toBe(true);
    expect(existsSync(res.best)).toBe(true);
    const m = metrics(run);
    expect(m.filter((x) => x.event === undefined).map((x) => x.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(m.filter((x) => (x.event as unknown) === 'eval').map((x) => x.step)).toEqual([4, 8]);
    const cfg = JSON.parse(readFileSync(join(run, 'config.json'), 'utf8'));
    expect(cfg.dataset.split).toBe('frame');
    expect(cfg.counts).toEqual({ train: 4, val: 0, test: 2 });

    const out = join(tmp.path, 'eval');
    const e = cli([
      'evaluate',
      res.best,
      '--task',
      'stenosis-det',
      '--data',
      data,
      '--split-seed',
      '0',
      '--split',
      'frame',
      '--test-fraction',
      '0.34',
      '--out',
      out,
      '--json',
    ]);
    expect(e.code, e.stderr).toBe(0);
    for (const f of ['summary.json', 'per-image.csv', 'results.json', 'gt.json', 'contact-sheet.png'])
      expect(existsSync(join(out, f)), f).toBe(true);
    const s = JSON.parse(e.stdout) as { stats: number[]; frames: number };
    expect(s.frames).toBe(2);
    expect(readFileSync(join(out, 'per-image.csv'), 'utf8').trim().split('\n')).toHaveLength(3);
    const c = cli([
      'coco-eval',
      '--gt',
      join(out, 'gt.json'),
      '--dt',
      join(out, 'results.json'),
      '--out',
      join(out, 'again.json'),
    ]);
    expect(c.code, c.stderr).toBe(0);
    expect((JSON.parse(readFileSync(join(out, 'again.json'), 'utf8')) as { stats: number[] }).stats).toEqual(s.stats);

    const pout = join(tmp.path, 'pred');
    const p = cli([
      'predict',
      res.best,
      join(DANILOV, '14_002_5_0016.png'),
      '--task',
      'stenosis-det',
      '--out',
      pout,
      '--score',
      '0',
    ]);
    expect(p.code, p.stderr).toBe(0);
    expect(existsSync(join(pout, '14_002_5_0016.png'))).toBe(true);
    const results = JSON.parse(readFileSync(join(pout, 'results.json'), 'utf8')) as {
      image_id: number;
      bbox: number[];
    }[];
    for (const d of results) expect([d.image_id, d.bbox.length]).toEqual([1, 4]);
  }, 240_000);

  it('--max-steps then --resume, and Ctrl-C then --resume, repeat the full run bit for bit', async () => {
    const full = losses(join(runs, 'full'));
    expect(cli([...base(), '--name', 'partial', '--max-steps', '3']).code).toBe(0);
    const r = cli(['finetune', '--task', 'stenosis-det', '--resume', join(runs, 'partial')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('resuming');
    expect(losses(join(runs, 'partial'))).toEqual(full);

    const run = join(runs, 'sigint');
    const child = spawn(
      process.execPath,
      ['--import', import.meta.resolve('tsx'), join(ROOT, 'ts/src/cli/main.ts'), ...base(), '--name', 'sigint'],
      {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    let signalled = false;
    const code = await new Promise<number | null>((resolve) => {
      const poll = setInterval(() => {
        if (!signalled && existsSync(join(run, 'metrics.jsonl')) && losses(run).length >= 2) {
          signalled = true;
          child.kill('SIGINT');
        }
      }, 5);
      child.on('exit', (c) => {
        clearInterval(poll);
        resolve(c);
      });
    });
    expect(code, stderr).toBe(130);
    expect(stderr).toContain(`resume with: vasomim finetune --resume ${run}`);
    expect(losses(run).length).toBeLessThan(8);
    const again = cli(['finetune', '--task', 'stenosis-det', '--resume', run]);
    expect(again.code, again.stderr).toBe(0);
    expect(losses(run)).toEqual(full);
  }, 240_000);

  it('bad input: one line each, exit 2', () => {
    const bad = stenosisCopy('bad');
    const xml = join(bad, '14_002_5_0017.xml');
    writeFileSync(xml, readFileSync(xml, 'utf8').replace('<name>Stenosis</name>', '<name>Plaque</name>'));
    const r = cli([...base().map((a) => (a === data ? bad : a)), '--name', 'bad']);
    expect(r.code).toBe(2);
    expect(r.stderr.split('\n')[0]).toMatch(/14_002_5_0017\.xml: object 1: unknown category "Plaque"/);
    expect(r.stderr.split('\n')[1]).toMatch(/^usage: vasomim finetune --task stenosis-det/);
    const notDet = join(tmp.path, 'api.safetensors.txt');
    writeFileSync(notDet, 'x');
    const e = cli([
      'evaluate',
      join(SAMPLES, 'fercer-xca80', 'Angios_40_training', '1.png'),
      '--task',
      'stenosis-det',
      '--data',
      data,
      '--out',
      join(tmp.path, 'x'),
    ]);
    expect(e.code).toBe(2);
    expect(e.stderr.split('\n')[0]).toMatch(/^vasomim evaluate: .*1\.png/);
  });
});
