// `vasomim report`: micro runs of every kind (pre-training, segmentor, fine-tuning, evaluation)
// write report.html at their end; the page is checked in headless Chromium (no console error, no
// request, every chart drawn, every picture decoded, a screenshot that is not blank), and the
// chart data against metrics.jsonl. Chromium tests skip, saying why, when `chromium` is absent.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { finetune, prepareVesselMaps, readImage } from '../src/index.js';
import { buildReport, chartsFor, readFolder } from '../src/report/index.js';
import { thin } from '../src/report/charts.js';
import { chromiumPath, loadPage, type PageReport } from './chromium.js';
import { cli, SAMPLES, tempDir, xcaSubset } from './helpers.js';

const tmp = tempDir('vasomim-report-');
afterAll(() => tmp.cleanup());
const runs = join(tmp.path, 'runs');
const data = join(tmp.path, 'xa');
const CHROMIUM = chromiumPath();
const NO_CHROMIUM = 'chromium is not installed (apt-get install chromium): the page is not checked in a browser';
/** Test-name suffix saying why a browser test skips. */
const SKIPS = CHROMIUM ? '' : ` (skipped: ${NO_CHROMIUM})`;

/** A micro pre-training run (64², micro ViT, 2 epochs of 2 steps) with the given extra flags. */
function pretrainRun(name: string, extra: string[] = []) {
  const r = cli([
    'pretrain',
    ...['--data', data, '--runs', runs, '--name', name, '--model', 'micro', '--img-size', '64'],
    ...['--batch-size', '4', '--epochs', '2', '--warmup-epochs', '1', '--eta', '1', '--cons-weight', '0'],
    ...['--segmentor', 'none', '--workers', '1', '--sample-every', '1', ...extra],
  ]);
  expect(r.code, r.stderr).toBe(0);
  return join(runs, name);
}

beforeAll(async () => {
  const src = join(data, 'src');
  mkdirSync(src, { recursive: true });
  for (const p of [
    'cadica-samples/p10_v7_00031.png',
    'cadica-samples/p11_v5_00033.png',
    'arcade-samples/STEN_001_0000.png',
  ])
    copyFileSync(join(SAMPLES, p), join(src, p.split('/')[1]!));
  copyFileSync(join(SAMPLES, 'arcade-samples/STEN_002_0000.png'), join(src, 'STEN_002_0000.png'));
  await prepareVesselMaps(data);
}, 60_000);

/** The page checks every report must pass. */
function expectGoodPage(p: PageReport, charts: number, images: number) {
  expect(p.errors).toEqual([]);
  expect(p.requests).toEqual([]);
  expect(p.canvases).toBe(charts);
  expect(p.drawnCanvases).toBe(charts);
  expect(p.images).toBe(images);
  expect(p.loadedImages).toBe(images);
}

/** The screenshot is not blank: a good share of non-white pixels and more than a few grey levels. */
async function expectNotBlank(png: Buffer) {
  const f = join(tmp.path, `shot-${Date.now()}.png`);
  writeFileSync(f, png);
  const img = await readImage(f);
  const px = Array.from(img.pixels);
  const nonWhite = px.filter((v) => v < 240).length / px.length;
  expect(nonWhite).toBeGreaterThan(0.05);
  expect(new Set(px).size).toBeGreaterThan(32);
}

describe('report of a pre-training run', () => {
  let run = '';
  it('pretrain writes report.html (--report-every 1), its charts are the metrics.jsonl series', () => {
    run = pretrainRun('pre', ['--report-every', '1']);
    expect(existsSync(join(run, 'report.html'))).toBe(true);
    expect(existsSync(join(run, 'samples', 'mask-frequency.npy'))).toBe(true);
    const f = readFolder(run);
    expect(f.kind).toBe('pretrain');
    expect(f.pictures.map((p) => p.caption)).toEqual([
      'epoch 0: reconstructions',
      'epoch 1: reconstructions',
      'masking frequency per patch position (all epochs so far)',
    ]);
    const charts = chartsFor('pretrain', [f]);
    const byTitle = new Map(charts.map((c) => [c.title, c]));
    const metrics = readFileSync(join(run, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const steps = metrics.filter((r) => r.event === undefined);
    const epochs = metrics.filter((r) => r.event === 'epoch');
    const loss = byTitle.get('Loss per step')!;
    expect(loss.labels).toEqual(['L (total)', 'L_rec']); // L_cons is off in this run: no series
    expect(loss.data[0]).toEqual(steps.map((s) => s.step));
    expect(loss.data[1]).toEqual(steps.map((s) => s.loss));
    expect(loss.data[2]).toEqual(steps.map((s) => s.lossRec));
    const share = byTitle.get('Masked patches that contain vessel, against the schedule α')!;
    expect(share.data).toEqual([
      epochs.map((e) => e.epoch),
      epochs.map((e) => e.vesselShare),
      epochs.map((e) => e.alpha),
    ]);
    const perEpoch = byTitle.get('Loss per epoch (mean over its steps)')!;
    const e1 = steps.filter((s) => s.epoch === 1).map((s) => s.loss);
    expect(e1.length).toBeGreaterThan(0);
    expect(perEpoch.data[1]![1]).toBeCloseTo(e1.reduce((a, b) => a + b, 0) / e1.length, 12);
    expect(charts.length).toBe(8);
    const html = readFileSync(join(run, 'report.html'), 'utf8');
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=|https?:\/\/(?!github\.com\/leeoniya)/);
  });

  it.skipIf(!CHROMIUM)(`renders in headless Chromium: no error, no request, 8 charts, 3 pictures${SKIPS}`, async () => {
    const out = join(tmp.path, 'pre.html');
    const r = cli(['report', run, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const p = await loadPage(CHROMIUM!, out);
    expectGoodPage(p, 8, 3);
    await expectNotBlank(p.screenshot);
  });

  it.skipIf(!CHROMIUM)('the browser check can fail: a page with a request and a console error is caught', async () => {
    const bad = join(tmp.path, 'bad.html');
    writeFileSync(
      bad,
      '<html><body><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body></html>',
    );
    const p = await loadPage(CHROMIUM!, bad);
    expect(p.requests).toEqual(['http://127.0.0.1:9/x.png']);
    expect(p.errors.some((e) => e.includes('boom'))).toBe(true);
    expect(p.loadedImages).toBe(0);
  });

  it('--compare puts two runs on the same axes; kinds must match; bad folders are named', () => {
    const other = pretrainRun('pre-random', ['--masking', 'random']);
    const c = chartsFor('pretrain', [readFolder(run), readFolder(other)]);
    expect(c[0]!.labels).toEqual(['pre: L (total)', 'pre: L_rec', 'pre-random: L (total)', 'pre-random: L_rec']);
    const out = join(tmp.path, 'cmp.html');
    const r = cli(['report', run, '--compare', other, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toContain('pre vs pre-random');
    const none = cli(['report', join(tmp.path, 'nothing-here')]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain(`${join(tmp.path, 'nothing-here')} does not exist`);
    const notRun = cli(['report', data]);
    expect(notRun.stderr).toMatch(/is not a run or evaluation folder/);
    const two = cli(['report', run, other]);
    expect(two.code).toBe(2);
    expect(two.stderr).toContain('--compare');
  }, 120_000);
});

describe('report of segmentor, fine-tuning and evaluation folders', () => {
  it.skipIf(!CHROMIUM)(
    `each kind renders with its charts and pictures; --compare of evaluations${SKIPS}`,
    async () => {
      // segmentor: 1 epoch at 64², report at the end
      const seg = cli([
        'train-segmentor',
        ...['--data', data, '--runs', runs, '--name', 'seg', '--epochs', '2', '--batch-size', '2'],
        ...['--img-size', '64', '--workers', '1'],
      ]);
      expect(seg.code, seg.stderr).toBe(0);
      expect(readFolder(join(runs, 'seg')).kind).toBe('segmentor');
      expectGoodPage(await loadPage(CHROMIUM!, join(runs, 'seg', 'report.html')), 3, 1);

      // fine-tuning: micro ViT, 2 epochs, validation on 2 held-out images
      const xca = xcaSubset(tmp.path, 'xca', [1, 2, 3, 4], [1, 2]);
      const ft = await finetune({
        ...{ model: { preset: 'micro' }, imgSize: 64, headScale: 0.125, batchSize: 2, epochs: 2, warmupEpochs: 1 },
        ...{ data: xca, valCount: 2, runs: join(tmp.path, 'ft'), name: 'ft', workers: 1 },
      });
      const f = readFolder(ft.run);
      expect(f.kind).toBe('finetune');
      const html = buildReport([ft.run]);
      expect(html).toContain(`<td>${ft.bestEpoch}</td>`);
      expectGoodPage(await loadPage(CHROMIUM!, join(ft.run, 'report.html')), 4, 0);

      // evaluation of the fine-tuned model, and two evaluations compared
      for (const [name, extra] of [
        ['eval-a', []],
        ['eval-b', ['--threshold', '0.3']],
      ] as const) {
        const e = cli(['evaluate', ft.best, '--data', xca, '--out', join(tmp.path, name), '--examples', '1', ...extra]);
        expect(e.code, e.stderr).toBe(0);
      }
      const ev = join(tmp.path, 'eval-a');
      expect(readFolder(ev).kind).toBe('evaluation');
      const r = cli(['report', ev]);
      expect(r.code, r.stderr).toBe(0);
      expect(readFileSync(join(ev, 'report.html'), 'utf8')).toMatch(/<td>\d\.\d{4} ± \d\.\d{4}<\/td>/);
      expectGoodPage(await loadPage(CHROMIUM!, join(ev, 'report.html')), 2, 1);
      const cmp = join(tmp.path, 'evals.html');
      expect(cli(['report', ev, '--compare', join(tmp.path, 'eval-b'), '--out', cmp]).code).toBe(0);
      expectGoodPage(await loadPage(CHROMIUM!, cmp), 2, 2);
      const mixed = cli(['report', ev, '--compare', ft.run]);
      expect(mixed.stderr).toMatch(/cannot compare .*\(evaluation\) with .*\(finetune\)/);
    },
    240_000,
  );
});

describe('thin', () => {
  it('averages long series into windows, keeps short ones', () => {
    expect(thin([1, 2, 3], [4, 5, 6], 5)).toEqual({ xs: [1, 2, 3], ys: [4, 5, 6] });
    expect(thin([1, 2, 3, 4, 5], [1, 3, Number.NaN, 6, 10], 3)).toEqual({ xs: [2, 4, 5], ys: [2, 6, 10] });
  });
});
