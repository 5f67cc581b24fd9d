// Fine-tuning the segmentation ViT: the SegmentationModel handle, a micro `finetune` run (binary and
// multi-class), `evaluate <model>` and `predict`, and the errors for bad input.
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  finetune,
  holdOut,
  imageDsc,
  loadSegmentationModel,
  predictFiles,
  readImage,
  segmentationPredictor,
  type SegmentationSample,
} from '../src/index.js';
import { native } from '../src/native.js';
import { cli, encodePng, SAMPLES, tempDir, xcaSubset } from './helpers.js';

const tmp = tempDir('vasomim-finetune-');
afterAll(() => tmp.cleanup());
const XCA = join(SAMPLES, 'fercer-xca80');

const MICRO = {
  model: { preset: 'micro' },
  imgSize: 64,
  headScale: 0.125,
  batchSize: 2,
  epochs: 2,
  warmupEpochs: 1,
  lr: 1e-3,
  workers: 1,
} as const;
const micro = {
  encoder: { ...native.presetConfig('micro'), imgSize: 64 },
  numClasses: 1,
  headScale: 0.125,
  dropPath: 0.1,
};

describe('SegmentationModel', () => {
  it('layer-decay groups, save/load round trip, predictImages equals predict on loader-normalised input', async () => {
    const m = native.SegmentationModel.create(micro, 3);
    const groups = m.paramGroups();
    const depth = micro.encoder.depth;
    const byName = new Map(groups.map((g) => [g.name, g]));
    expect(byName.has('norm.weight')).toBe(false); // unused final norm: not trained
    expect(byName.get('patch_embed.proj.weight')!.lrScale).toBeCloseTo(0.75 ** (depth + 1), 12);
    expect(byName.get('blocks.1.attn.qkv.weight')!.lrScale).toBeCloseTo(0.75 ** (depth - 1), 12);
    expect(byName.get('head.classifier.weight')!.lrScale).toBe(1);
    expect(byName.get('head.classifier.bias')!.decay).toBe(false);
    expect(byName.get('cls_token')!.decay).toBe(false);
    expect(byName.get('blocks.0.mlp.fc1.weight')!.decay).toBe(true);

    // one step on a flat batch, then save -> load -> same probabilities
    const s = 64;
    const images = new Float32Array(2 * 3 * s * s).map((_, i) => Math.sin(i * 0.37));
    const maps = new Float32Array(2 * s * s).map((_, i) => ((i * 7) % 5 === 0 ? 1 : 0));
    const r = await m.trainStep(images, maps, { lr: 1e-3, weightDecay: 0.05 });
    expect(r.step).toBe(1);
    expect(r.loss).toBeCloseTo(r.dice + r.ce, 5);
    const path = join(tmp.path, 'segmodel.safetensors');
    await m.save(path, JSON.stringify({ task: 'vessel-seg', threshold: 0.4 }));
    const back = await native.SegmentationModel.load(path);
    expect(back.step).toBe(1);
    expect(JSON.parse(back.extra!).threshold).toBe(0.4);
    expect(Array.from(await back.predict(images))).toEqual(Array.from(await m.predict(images)));

    // predictImages at the model size = the loader's normalisation (x/255 - mean)/std, replicated
    const grey = new Float32Array(s * s).map((_, i) => (i * 13) % 256);
    const mean = [0.485, 0.456, 0.406];
    const std = [0.229, 0.224, 0.225];
    const x = new Float32Array(3 * s * s);
    for (let c = 0; c < 3; c++)
      for (let i = 0; i < s * s; i++) x[c * s * s + i] = (grey[i]! / 255 - mean[c]!) / std[c]!;
    const [viaImages] = await m.predictImages([{ width: s, height: s, pixels: grey }], { mean, std });
    const direct = await m.predict(x);
    let err = 0;
    for (let i = 0; i < s * s; i++) err = Math.max(err, Math.abs(viaImages![i]! - direct[i]!));
    expect(err).toBeLessThan(1e-5);
    // other sizes come back at their own size
    const [odd] = await m.predictImages([{ width: 50, height: 30, pixels: new Float32Array(1500).fill(100) }], {
      mean,
      std,
    });
    expect(odd!.length).toBe(1500);
  });

  it('rejects bad arguments with one clear error', async () => {
    const m = native.SegmentationModel.create(micro, 0);
    expect(() => m.predict(new Float32Array(10))).toThrow(/not a positive multiple of C\*S\*S/);
    expect(() =>
      m.trainStep(new Float32Array(3 * 64 * 64), new Float32Array(64 * 64).fill(2), { lr: 1e-3, weightDecay: 0 }),
    ).toThrow(/outside \[0, 1\]/);
    expect(() => native.SegmentationModel.create({ ...micro, encoder: { ...micro.encoder, patchSize: 8 } })).toThrow(
      /patch size must be 16/,
    );
    await expect(native.SegmentationModel.load(join(XCA, 'Angios_40_training', '1.png'))).rejects.toThrow(/1\.png/);
  });

  it('parses saved metadata with its schema: defaults when absent, an error naming file and field', async () => {
    const m = native.SegmentationModel.create(micro, 0);
    const bare = join(tmp.path, 'bare.safetensors');
    await m.save(bare);
    expect((await loadSegmentationModel(bare)).meta).toMatchObject({ task: 'vessel-seg', threshold: 0.5 });
    const bad = join(tmp.path, 'bad-meta.safetensors');
    await m.save(bad, JSON.stringify({ task: 'vessel-seg', threshold: 7 }));
    await expect(loadSegmentationModel(bad)).rejects.toThrow(/bad-meta\.safetensors: bad metadata:[\s\S]*threshold/);
  });
});

describe('validation split', () => {
  it('holds out evenly spaced training images, never the test split', () => {
    const train = Array.from({ length: 40 }, (_, i) => ({ id: `${i + 1}.png` }) as SegmentationSample);
    const { train: t, val } = holdOut(train, 8);
    expect(val.map((s) => s.id)).toEqual([
      '3.png',
      '8.png',
      '13.png',
      '18.png',
      '23.png',
      '28.png',
      '33.png',
      '38.png',
    ]);
    expect(t.length).toBe(32);
    expect(t.some((s) => val.includes(s))).toBe(false);
    expect(() => holdOut(train.slice(0, 4), 4)).toThrow(/leaves no training images/);
  });

  it('imageDsc: binary Dice and the mean over present classes', () => {
    expect(imageDsc(Uint8Array.from([1, 1, 0, 0]), Uint8Array.from([1, 0, 0, 0]), 2, 2, 1)).toBeCloseTo(2 / 3, 12);
    // class 1: pred {0}, truth {0, 1} -> 2/3; class 2: pred {3}, truth {3} -> 1; mean 5/6
    expect(imageDsc(Uint8Array.from([1, 0, 0, 2]), Uint8Array.from([1, 1, 0, 2]), 2, 2, 3)).toBeCloseTo(5 / 6, 12);
  });
});

describe('finetune (micro)', () => {
  const data = xcaSubset(tmp.path, 'xca-mini', [1, 2, 3, 4, 5, 6], [1, 2]);
  /** `vasomim finetune` of a micro ViT at 64² on `data` for `epochs` epochs, into <tmp>/runs. */
  const microRun = (epochs: number) => [
    'finetune',
    '--data',
    data,
    '--model',
    'micro',
    '--img-size',
    '64',
    '--head-scale',
    '0.125',
    '--epochs',
    String(epochs),
    '--batch-size',
    '2',
    '--val-count',
    '2',
    '--workers',
    '1',
    '--runs',
    join(tmp.path, 'runs'),
  ];
  let best = '';

  it('trains, validates on the hold-out, writes best/last checkpoints, metrics and masks', async () => {
    const epochs: number[] = [];
    const r = await finetune(
      { ...MICRO, data, valCount: 2, runs: join(tmp.path, 'runs'), name: 'bin', seed: 1 },
      { onEpoch: (e) => epochs.push(e.epoch) },
    );
    expect(epochs).toEqual([0, 1]);
    expect(existsSync(r.best) && existsSync(r.last)).toBe(true);
    expect(r.val).toEqual(['training/2.png', 'training/5.png']);
    expect(r.train).toBe(4);
    expect(r.steps).toBe(4);
    const lines = readFileSync(join(r.run, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const steps = lines.filter((l) => l.event === undefined);
    const ep = lines.filter((l) => l.event === 'epoch');
    expect(steps.map((l) => l.step)).toEqual([1, 2, 3, 4]);
    expect(ep.length).toBe(2);
    expect(ep.every((l) => typeof l.valDsc === 'number' && l.valDsc >= 0 && l.valDsc <= 1)).toBe(true);
    // best = the epoch with the highest val DSC
    const bestEp = ep.reduce((a, b) => (b.valDsc > a.valDsc ? b : a));
    expect(r.bestEpoch).toBe(bestEp.epoch);
    const { model, meta } = await loadSegmentationModel(r.best);
    expect(meta.epoch).toBe(bestEp.epoch);
    expect(meta.valDsc).toBeCloseTo(bestEp.valDsc, 12);
    expect(model.config.encoder.imgSize).toBe(64);
    // the written training masks are the truth in {0, 255}
    const masks = readdirSync(join(r.run, 'masks')).sort();
    expect(masks.length).toBe(4);
    const m0 = await readImage(join(r.run, 'masks', masks[0]!));
    const gt = await readImage(join(data, 'training', '1_gt.png'));
    expect(Array.from(m0.pixels).every((v, i) => v === (gt.pixels[i]! >= 128 ? 255 : 0))).toBe(true);
    // val DSC recomputed from the best checkpoint with the predictor
    const pred = segmentationPredictor(model, meta);
    const img = await readImage(join(data, 'training', '2.png'));
    const p = await pred.predict(img);
    expect(p.probs.length).toBe(img.width * img.height);
    best = r.best;
  });

  it('vasomim evaluate <model> writes the CSV, summary and contact sheet; predict writes masks and overlays', () => {
    const out = join(tmp.path, 'eval-model');
    const e = cli(['evaluate', best, '--data', data, '--out', out, '--examples', '1', '--json']);
    expect(e.code, e.stderr).toBe(0);
    const s = JSON.parse(e.stdout);
    expect(s.images).toBe(2);
    expect(s.threshold).toMatchObject({ value: 0.5, how: 'fixed' });
    expect(s.predictor.kind).toBe('segvit');
    for (const f of ['per-image.csv', 'summary.json', 'contact-sheet.png']) expect(existsSync(join(out, f))).toBe(true);
    expect(readFileSync(join(out, 'per-image.csv'), 'utf8').trim().split('\n').length).toBe(3);

    const pout = join(tmp.path, 'pred');
    const p = cli([
      'predict',
      best,
      join(data, 'testing', '1.png'),
      join(data, 'testing', '2.png'),
      '--out',
      pout,
      '--json',
    ]);
    expect(p.code, p.stderr).toBe(0);
    expect(readdirSync(pout).sort()).toEqual(['1_mask.png', '1_overlay.png', '2_mask.png', '2_overlay.png']);
  });

  it('predicted masks are the thresholded probabilities at the image size', async () => {
    const pout = join(tmp.path, 'pred');
    const mask = await readImage(join(pout, '1_mask.png'));
    const img = await readImage(join(data, 'testing', '1.png'));
    expect([mask.width, mask.height]).toEqual([img.width, img.height]);
    const { model, meta } = await loadSegmentationModel(best);
    const pr = await segmentationPredictor(model, meta).predict(img);
    expect(Array.from(mask.pixels).every((v, i) => v === (pr.probs[i]! >= 0.5 ? 255 : 0))).toBe(true);
    const ov = await readImage(join(pout, '1_overlay.png'));
    expect(ov.channels).toBe(3);
  });

  it('predictFiles (Node API) checks its options through PredictSchema and writes nothing on a bad one', async () => {
    const out = join(tmp.path, 'pred-api');
    const one = [join(data, 'testing', '1.png')];
    await expect(predictFiles(best, one, { out, alpha: 2 })).rejects.toThrow(
      /invalid options:[\s\S]*alpha must be in \[0, 1\]/,
    );
    await expect(predictFiles(best, one, { out, precision: 'fp8' as never })).rejects.toThrow(/precision/);
    expect(existsSync(out)).toBe(false);
    const r = await predictFiles(best, one, { out, threshold: 0.5 });
    expect(r.files.map((f) => f.mask)).toEqual([join(out, '1_mask.png')]);
  });

  it('multi-class: label masks train a K-class model; evaluate reports per class', async () => {
    // labels: vessel pixels of the left half = 1, right half = 2
    const root = join(tmp.path, 'labels');
    for (const [dir, ids] of [
      ['training', [1, 2, 3, 4, 5]],
      ['testing', [6]],
    ] as const) {
      mkdirSync(join(root, dir), { recursive: true });
      for (const k of ids) {
        copyFileSync(join(XCA, 'Angios_40_training', `${k}.png`), join(root, dir, `${k}.png`));
        const gt = await readImage(join(XCA, 'Angios_40_training', `${k}_gt.png`));
        const lab = gt.pixels.map((v, i) => (v >= 128 ? (i % gt.width < gt.width / 2 ? 1 : 2) : 0));
        writeFileSync(join(root, dir, `${k}_gt.png`), encodePng(gt.width, gt.height, lab));
      }
    }
    const r = await finetune({
      ...MICRO,
      epochs: 1,
      task: 'segment-seg',
      data: root,
      dataOptions: { masks: 'labels', classes: 2 },
      valCount: 1,
      runs: join(tmp.path, 'runs'),
      name: 'mc',
    });
    const { model, meta } = await loadSegmentationModel(r.best);
    expect(model.config.numClasses).toBe(3);
    expect(meta.classes.length).toBe(3);
    /** `vasomim evaluate` of `model` on this 2-class label-mask dataset. */
    const evaluate = (model: string, out: string, ...more: string[]) =>
      cli(['evaluate', model, '--data', root, '--masks', 'labels', '--classes', '2', '--out', out, ...more]);
    const e = evaluate(r.best, join(tmp.path, 'eval-mc'), '--json', '--examples', '0');
    expect(e.code, e.stderr).toBe(0);
    expect(JSON.parse(e.stdout).perClass.length).toBe(2);
    // a binary model on this 3-class dataset: one clear error before any image is predicted
    const w = evaluate(best, join(tmp.path, 'eval-wrong'));
    expect(w.code).toBe(2);
    expect(w.stderr).toMatch(/outputs 1 map \(binary\) but the dataset is 3 classes/);
    // and segment-seg on a binary dataset
    await expect(
      finetune({ ...MICRO, task: 'segment-seg', data, runs: join(tmp.path, 'runs'), name: 'x' }),
    ).rejects.toThrow(/needs a multi-class dataset/);
  });

  it('bad input: mask size mismatch, empty test split, not a model', async () => {
    const bad = xcaSubset(tmp.path, 'xca-bad', [1, 2, 3, 4, 5], [1]);
    writeFileSync(join(bad, 'training', '3_gt.png'), encodePng(10, 10, new Uint8Array(100)));
    await expect(
      finetune({ ...MICRO, data: bad, valCount: 1, runs: join(tmp.path, 'runs'), name: 'bad' }),
    ).rejects.toThrow(/3_gt\.png: mask is 10x10 but its image .*3\.png is 300x300/);
    expect(existsSync(join(tmp.path, 'runs', 'bad'))).toBe(false); // nothing written before the check

    const noTest = join(tmp.path, 'no-test');
    mkdirSync(join(noTest, 'training'), { recursive: true });
    copyFileSync(join(XCA, 'Angios_40_training', '1.png'), join(noTest, 'training', '1.png'));
    copyFileSync(join(XCA, 'Angios_40_training', '1_gt.png'), join(noTest, 'training', '1_gt.png'));
    const e = cli(['evaluate', best, '--data', noTest, '--out', join(tmp.path, 'eval-empty')]);
    expect(e.code).toBe(2);
    expect(e.stderr).toMatch(/the test split is empty \(found train 1\)/);

    const n = cli([
      'evaluate',
      join(XCA, 'Angios_40_training', '1.png'),
      '--data',
      data,
      '--out',
      join(tmp.path, 'eval-nm'),
    ]);
    expect(n.code).toBe(2);
    expect(n.stderr).toMatch(/1\.png/);
    const f = cli(['finetune', '--data', data, '--head-scale', '9']);
    expect(f.code).toBe(2);
    expect(f.stderr).toMatch(/headScale must be <= 4/);
  });

  it('vasomim finetune on the command line', () => {
    const r = cli([...microRun(1), '--name', 'cli', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.steps).toBe(2);
    expect(existsSync(out.best)).toBe(true);
    expect(r.stderr).toMatch(/epoch 0: loss [\d.]+, val DSC [\d.]+ \(best\)/);
  });

  it('--resume after --max-steps repeats the uninterrupted run', async () => {
    const args = [...microRun(3), '--drop-path', '0.1'];
    const key = (run: string) =>
      readFileSync(join(run, 'metrics.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .map((r) => JSON.stringify([r.step, r.epoch, r.iter, r.lr, r.loss, r.valDsc, r.best, r.event]));
    expect(cli([...args, '--name', 'rs-full']).code).toBe(0);
    const full = key(join(tmp.path, 'runs', 'rs-full'));
    expect(full.length).toBeGreaterThan(6);
    expect(cli([...args, '--name', 'rs-part', '--max-steps', '3']).code).toBe(0);
    const part = join(tmp.path, 'runs', 'rs-part');
    const r = cli(['finetune', '--resume', part]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('resuming at epoch');
    expect(key(part)).toEqual(full);
  }, 120_000);

  it('--help of finetune, predict and evaluate', () => {
    for (const c of ['finetune', 'predict', 'evaluate']) {
      const h = cli([c, '--help']);
      expect(h.code).toBe(0);
      expect(h.stdout).toMatch(new RegExp(`usage: vasomim ${c}`));
    }
  });
});
