// `finetune --task stenosis-det`: the detector's training loop, top to bottom:
//
//   config (preset -> config file -> flags) -> dataset (train split; validation on val, or on
//   train when there is none; test never read) -> model (scratch, or the encoder of a pre-trained
//   file + new pyramid and heads; a resumed run reloads checkpoints/last.safetensors)
//   -> for each step t: frames of the epoch's seeded permutation, each with an LSJ placement
//      (flip, resize by U[lsjMin, lsjMax] x S, a random S x S window) drawn from Rng(seed, t);
//      lr = linear warm-up from 0.001 x lr, x0.1 at each lrSteps fraction; model.trainStep
//   -> every evalEvery steps and at the end: validation AP50 (COCO), checkpoints/last, and
//      checkpoints/best when the AP50 improves (ties: the better AP). Ctrl-C / maxSteps: a checkpoint, then stop.
// All randomness is keyed by (seed, step), so a resumed run repeats the uninterrupted one.
import { join, resolve } from 'node:path';

import {
  DETECTION_INVOCATION,
  DETECTION_PRESET_VALUES,
  DetectionRunSchema,
  detectorConfig,
  type DetectionRunConfig,
  type DetectionPreset,
} from '../config/detection.js';
import { mergeConfig } from '../config/pretrain.js';
import { parseOptions } from '../config/vessels.js';
import { DatasetError } from '../data/dataset.js';
import { native, packageVersion } from '../native.js';
import { LAST_CHECKPOINT, planRun, type RunDir } from '../train/rundir.js';
import { Rng } from '../train/rng.js';
import { openDetectionDataset, type DetectionSample } from './dataset.js';
import { scoreSamples } from './evaluate.js';
import { defaultNorm, readFrame, type DetectionModel, type DetectorMeta } from './model.js';

export interface DetStepRecord {
  step: number;
  epoch: number;
  lr: number;
  loss: number;
  rpnCls: number;
  rpnLoc: number;
  cls: number;
  boxReg: number;
  imgPerSec: number;
}

export interface DetEvalRecord {
  event: 'eval';
  step: number;
  split: string;
  ap: number;
  ap50: number;
  ap75: number;
  best: boolean;
}

export interface DetectionFinetuneEvents {
  onStep?: (r: DetStepRecord, total: { steps: number; stepsDone: number }) => void;
  onEval?: (r: DetEvalRecord) => void;
  onLog?: (line: string) => void;
  /** Polled after every step: true stops the run with a checkpoint (Ctrl-C). */
  shouldStop?: () => boolean;
}

export interface DetectionFinetuneResult {
  status: 'completed' | 'interrupted' | 'stopped';
  run: string;
  steps: number;
  last: string;
  best: string | null;
  bestAp50: number | null;
  bestStep: number | null;
}

/** The run config of layered inputs: preset values under the layers, then the schema. */
export function resolveDetectionRun(...layers: Record<string, unknown>[]): DetectionRunConfig {
  const merged = layers.reduce((m, l) => mergeConfig(m, l), {} as Record<string, unknown>);
  const preset = (merged.preset ?? 'demo') as DetectionPreset;
  const base = DETECTION_PRESET_VALUES[preset] ?? {};
  const c = parseOptions(DetectionRunSchema, mergeConfig(base as Record<string, unknown>, merged), 'options');
  if (c.lsjMin > c.lsjMax) throw new DatasetError(`lsjMin (${c.lsjMin}) must be <= lsjMax (${c.lsjMax})`);
  return c;
}

/** The lr of step t (1-based): linear warm-up from 0.001·lr, then ×0.1 at each lrSteps fraction. */
export function detectionLr(t: number, c: Pick<DetectionRunConfig, 'lr' | 'warmup' | 'lrSteps' | 'iterations'>) {
  const warm = c.warmup > 0 && t <= c.warmup ? 0.001 + (1 - 0.001) * ((t - 1) / c.warmup) : 1;
  const drops = c.lrSteps.filter((f) => t > f * c.iterations).length;
  return c.lr * warm * 0.1 ** drops;
}

/** The frames of step t and their placements, drawn from (seed, t) and the epoch's permutation. */
export function drawStep(
  t: number,
  n: number,
  c: Pick<DetectionRunConfig, 'seed' | 'batchSize'>,
): { epoch: number; indices: number[] } {
  const start = (t - 1) * c.batchSize;
  const indices: number[] = [];
  let epoch = Math.floor(start / n);
  for (let k = 0; k < c.batchSize; k++) {
    const g = start + k;
    epoch = Math.floor(g / n);
    const perm = Array.from({ length: n }, (_, i) => i);
    Rng.forKeys(c.seed, 1, epoch).shuffle(perm);
    indices.push(perm[g % n]!);
  }
  return { epoch: Math.floor(start / n), indices };
}

/** An LSJ placement of a w × h frame in an s × s input (detectron2: flip, ResizeScale, FixedSizeCrop). */
export function lsjPlacement(
  w: number,
  h: number,
  s: number,
  rng: Rng,
  c: Pick<DetectionRunConfig, 'lsjMin' | 'lsjMax' | 'flip'>,
) {
  const flip = c.flip && rng.uniform() < 0.5;
  const target = s * (c.lsjMin + (c.lsjMax - c.lsjMin) * rng.uniform());
  const scale = Math.min(target / w, target / h);
  const sw = Math.max(1, Math.round(w * scale));
  const sh = Math.max(1, Math.round(h * scale));
  const dx = Math.floor(rng.uniform() * (Math.max(0, sw - s) + 1));
  const dy = Math.floor(rng.uniform() * (Math.max(0, sh - s) + 1));
  return { scale, dx, dy, flip };
}

async function initModel(c: DetectionRunConfig, numClasses: number, log: (l: string) => void) {
  const preset = native.presetConfig(c.model) as unknown as Record<string, unknown>;
  const cfg = detectorConfig(c, preset, numClasses);
  const options = { layerDecay: c.layerDecay, device: c.device };
  if (c.init === 'scratch') return native.DetectionModel.create(cfg, c.seed, options);
  const m = await native.DetectionModel.fromPretrained(c.init, cfg, c.seed, options);
  const info = m.initInfo!;
  log(
    `encoder from ${c.init} (${info.configSource})` +
      (info.adapted.length ? `; adapted: ${info.adapted.join(', ')}` : '') +
      (info.missing.length ? `; missing: ${info.missing.join(', ')}` : '') +
      (info.unexpected.length ? `; ${info.unexpected.length} unused tensors` : ''),
  );
  return m;
}

/** Fine-tune the detector; see the top of this module. `resume`: a run folder to continue. */
export async function finetuneDetection(
  input: Record<string, unknown>,
  events: DetectionFinetuneEvents = {},
  resume?: string,
): Promise<DetectionFinetuneResult> {
  const log = events.onLog ?? (() => {});
  const plan = planRun({
    layers: [input],
    resume,
    resolve: resolveDetectionRun,
    invocation: DETECTION_INVOCATION,
  });
  const c = plan.config;
  if (!c.data) throw new DatasetError('data: a dataset is required (Stenosis folder, ARCADE tree or COCO .json)');
  const ds = openDetectionDataset(c.data, c.dataOptions);
  const train = ds.splits.train;
  if (train.length === 0) throw new DatasetError(`${ds.root}: the train split is empty`);
  const evalSplit = c.evalSplit === 'auto' ? (ds.splits.val.length ? 'val' : 'train') : c.evalSplit;
  const evalSamples = ds.splits[evalSplit];
  if (evalSamples.length === 0) throw new DatasetError(`${ds.root}: the ${evalSplit} split is empty (evalSplit)`);

  let run: RunDir;
  let model: DetectionModel;
  let bestAp50: number | null = null;
  let bestAp: number | null = null;
  let bestStep: number | null = null;
  if (plan.resumed) {
    run = plan.resumed;
    model = await native.DetectionModel.load(run.lastCheckpoint(), c.device);
    const meta = JSON.parse(model.extra ?? '{}') as Partial<DetectorMeta> & {
      bestAp50?: number;
      bestAp?: number;
      bestStep?: number;
    };
    bestAp50 = meta.bestAp50 ?? null;
    bestAp = meta.bestAp ?? null;
    bestStep = meta.bestStep ?? null;
    run.truncateMetrics(Number(model.step));
    log(`resuming ${run.path} at step ${model.step}`);
  } else {
    model = await initModel(c, ds.classes.length, log);
    run = plan.create();
    plan.write(run, {
      version: packageVersion(),
      dataset: { root: ds.root, format: ds.format, split: ds.split, classes: ds.classes, evalSplit },
      counts: { train: train.length, val: ds.splits.val.length, test: ds.splits.test.length },
      detector: model.config,
    });
  }
  const norm = defaultNorm(c.inChans);
  const lastPath = join(run.checkpoints, LAST_CHECKPOINT);
  const bestPath = join(run.checkpoints, 'best.safetensors');
  const meta = (valAp50: number | null) =>
    JSON.stringify({
      task: 'stenosis-det',
      classes: ds.classes,
      ...norm,
      valAp50,
      step: Number(model.step),
      bestAp50,
      bestAp,
      bestStep,
    });
  const frames = new Map<string, Awaited<ReturnType<typeof readFrame>>>();
  const frameOf = async (s: DetectionSample) => {
    // Small datasets stay decoded; large ones are decoded per step.
    const hit = frames.get(s.image);
    if (hit) return hit;
    const f = await readFrame(s.image);
    if (train.length <= 256) frames.set(s.image, f);
    return f;
  };

  const evaluate = async (): Promise<number> => {
    const { coco } = await scoreSamples(model, evalSamples, ds.classes, norm);
    const ap50 = coco.summary.AP50;
    // Ties in AP50 (common once a small set is learnt) go to the better AP.
    const best = bestAp50 === null || ap50 > bestAp50 || (ap50 === bestAp50 && coco.summary.AP > (bestAp ?? -1));
    const step = Number(model.step);
    if (best) [bestAp50, bestAp, bestStep] = [ap50, coco.summary.AP, step];
    const rec: DetEvalRecord = {
      event: 'eval',
      step,
      split: evalSplit,
      ap: coco.summary.AP,
      ap50,
      ap75: coco.summary.AP75,
      best,
    };
    run.log(rec as unknown as Record<string, unknown>);
    events.onEval?.(rec);
    if (best) await model.save(bestPath, meta(ap50));
    return ap50;
  };

  const result = (status: DetectionFinetuneResult['status']): DetectionFinetuneResult => ({
    status,
    run: resolve(run.path),
    steps: Number(model.step),
    last: lastPath,
    best: bestStep === null ? null : bestPath,
    bestAp50,
    bestStep,
  });

  const startStep = Number(model.step);
  let lastAp: number | null = null;
  for (let t = startStep + 1; t <= c.iterations; t++) {
    const { epoch, indices } = drawStep(t, train.length, c);
    const rng = Rng.forKeys(c.seed, 2, t);
    const batch = [];
    for (const i of indices) {
      const s = train[i]!;
      const f = await frameOf(s);
      const p = lsjPlacement(f.width, f.height, c.imgSize, rng, c);
      batch.push({
        image: f,
        ...p,
        boxes: s.boxes.flat(),
        classes: s.labels,
      });
    }
    const lr = detectionLr(t, c);
    const t0 = performance.now();
    const r = await model.trainStep(batch, { lr, weightDecay: c.weightDecay, ...norm });
    const rec: DetStepRecord = {
      step: t,
      epoch,
      lr,
      loss: r.loss,
      rpnCls: r.rpnCls,
      rpnLoc: r.rpnLoc,
      cls: r.cls,
      boxReg: r.boxReg,
      imgPerSec: batch.length / ((performance.now() - t0) / 1000),
    };
    run.log(rec as unknown as Record<string, unknown>);
    events.onStep?.(rec, { steps: c.iterations, stepsDone: t });
    const end = t === c.iterations;
    const stop = events.shouldStop?.() || (c.maxSteps !== undefined && t - startStep >= c.maxSteps);
    if (t % c.evalEvery === 0 || end) lastAp = await evaluate();
    if (t % c.evalEvery === 0 || end || stop) await model.save(lastPath, meta(lastAp));
    if (stop && !end) return result(events.shouldStop?.() ? 'interrupted' : 'stopped');
  }
  if (startStep >= c.iterations) log(`the run already has ${startStep} of ${c.iterations} steps`);
  return result('completed');
}
