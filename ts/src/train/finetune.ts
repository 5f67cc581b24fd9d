// `finetune`: the downstream segmentation loop (METHOD.md §9), top to bottom:
//
//   config -> dataset (train split; val split or a fixed hold-out of train; test never read)
//     -> masks of train written once as PNGs into the run folder (binary {0, 255}, or the class id
//        as the grey value) so the Rust loader crops / flips them with their image
//     -> model (scratch, or the encoder of a pre-trained checkpoint + a new U-Net head)
//     -> for each epoch, batch: lr = warm-up + cosine(epoch + it / iters); model.trainStepBatch
//     -> per epoch: validation DSC (threshold 0.5 / argmax, per image, at the image size),
//        checkpoints/last.safetensors, and checkpoints/best.safetensors when the DSC improves.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { parseCheckpointExtra, type FinetuneLoopState } from '../config/checkpoint.js';
import { OUTPUT_KEYS } from '../config/fields.js';
import { resolveFinetuneConfig, type FinetuneConfig, type FinetuneInput } from '../config/finetune.js';
import { checkPrecision } from '../config/model.js';
import { DatasetError, type DataSample } from '../data/dataset.js';
import { openLoader } from '../data/loader.js';
import { labelsOf } from '../eval/evaluate.js';
import { dice, multiClassMetrics } from '../eval/metrics.js';
import { segmentationPredictor, type SegmentationModel, type SegmentationModelMeta } from '../model/segmentation.js';
import { native, packageVersion } from '../native.js';
import {
  checkSegmentationSamples,
  loadSegmentationSample,
  openSegmentationDataset,
  splitSamples,
  type SegmentationDataset,
  type SegmentationSample,
} from '../segmentation/dataset.js';
import { writePng } from '../util/png.js';
import { RunOutputs } from '../report/outputs.js';
import { LAST_CHECKPOINT, planRun } from './rundir.js';
import { lrAt, type LrSchedule } from './schedule.js';

export interface FtStepRecord {
  step: number;
  epoch: number;
  iter: number;
  lr: number;
  loss: number;
  dice: number;
  ce: number;
  imgPerSec: number;
}

export interface FtEpochRecord {
  event: 'epoch';
  epoch: number;
  step: number;
  loss: number;
  valDsc: number | null;
  best: boolean;
  seconds: number;
}

export interface FinetuneEvents {
  onStep?: (r: FtStepRecord, total: { steps: number; stepsDone: number }) => void;
  onEpoch?: (r: FtEpochRecord) => void;
  onLog?: (line: string) => void;
  /** Validation progress (images done of total). */
  onValidate?: (done: number, total: number) => void;
  /** Polled after every step: true stops the run with a checkpoint (Ctrl-C). */
  shouldStop?: () => boolean;
}

export interface FinetuneResult {
  run: string;
  best: string;
  last: string;
  bestEpoch: number;
  bestValDsc: number | null;
  /** 'interrupted' (Ctrl-C) / 'stopped' (maxSteps): `last` written; `--resume <run>` continues. */
  status: 'completed' | 'interrupted' | 'stopped';
  steps: number;
  epochs: number;
  train: number;
  val: string[];
}

/**
 * The validation images: the dataset's val split when it has one, else `count` training images
 * evenly spaced in name order (indices round((j + ½)·n / count)), which leave the training set.
 */
export function holdOut(
  train: SegmentationSample[],
  count: number,
): { train: SegmentationSample[]; val: SegmentationSample[] } {
  if (count === 0) return { train, val: [] };
  if (count >= train.length)
    throw new DatasetError(`valCount ${count} leaves no training images (train has ${train.length})`);
  const pick = new Set<number>();
  for (let j = 0; j < count; j++) pick.add(Math.min(train.length - 1, Math.floor(((j + 0.5) * train.length) / count)));
  return { train: train.filter((_, i) => !pick.has(i)), val: train.filter((_, i) => pick.has(i)) };
}

/** Mean per-image DSC (binary) or mean over present foreground classes (multi-class). */
export function imageDsc(
  labels: Uint8Array,
  truth: Uint8Array,
  width: number,
  height: number,
  classes: number,
): number {
  if (classes === 1) return dice(labels, truth);
  const per = multiClassMetrics(labels, truth, width, height, classes).filter((c) => c.present);
  return per.length ? per.reduce((a, c) => a + c.dsc, 0) / per.length : 1;
}

/** Mean validation DSC of `model` on `samples`. */
export async function validate(
  ds: SegmentationDataset,
  model: SegmentationModel,
  meta: SegmentationModelMeta,
  samples: SegmentationSample[],
  onDone?: (n: number) => void,
): Promise<number> {
  const predictor = segmentationPredictor(model, meta);
  let sum = 0;
  for (let i = 0; i < samples.length; i++) {
    const x = await loadSegmentationSample(ds, samples[i]!);
    const pred = await predictor.predict({ width: x.width, height: x.height, pixels: x.image });
    sum += imageDsc(labelsOf(pred, meta.threshold), x.truth, x.width, x.height, pred.classes);
    onDone?.(i + 1);
  }
  return sum / samples.length;
}

/** Masks as the loader reads them: binary 0/255, multi-class the class id as grey value. */
async function writeMasks(ds: SegmentationDataset, samples: SegmentationSample[], dir: string): Promise<DataSample[]> {
  mkdirSync(dir, { recursive: true });
  const out: DataSample[] = [];
  for (let i = 0; i < samples.length; i++) {
    const x = await loadSegmentationSample(ds, samples[i]!);
    const data = ds.kind === 'binary' ? x.truth.map((v) => v * 255) : x.truth;
    const map = join(dir, `${String(i).padStart(5, '0')}.png`);
    writePng(map, { width: x.width, height: x.height, data });
    out.push({ image: samples[i]!.image, map, source: 'train' });
  }
  return out;
}

/**
 * Fine-tune (or, with `resume` = a run folder, continue one from `checkpoints/last.safetensors`:
 * batches, drop-path draws and learning rates are functions of (seed, epoch, step), so the resumed
 * run repeats the uninterrupted one).
 */
export async function finetune(
  input: FinetuneInput,
  events: FinetuneEvents = {},
  resume?: string,
): Promise<FinetuneResult> {
  // The loader's thread count and a step limit belong to this invocation, not to the run.
  const plan = planRun({
    layers: [input],
    resume,
    resolve: resolveFinetuneConfig,
    invocation: ['workers', 'maxSteps', ...OUTPUT_KEYS],
    key: 'input',
  });
  const c: FinetuneConfig = plan.config;
  const resumed = plan.resumed;
  const log = events.onLog ?? (() => {});
  const ds = openSegmentationDataset(c.data, c.dataOptions);
  const wantMulti = c.task === 'segment-seg';
  if (wantMulti !== (ds.kind === 'multiclass'))
    throw new DatasetError(
      `${ds.root}: task ${c.task} needs a ${wantMulti ? 'multi-class' : 'binary'} dataset, ` +
        `this one is ${ds.kind} (${ds.classes.length - 1} foreground class(es))`,
    );
  const numClasses = ds.kind === 'binary' ? 1 : ds.classes.length;
  const all = splitSamples(ds, 'train');
  const split = ds.splits.val.length > 0 ? { train: all, val: ds.splits.val } : holdOut(all, c.valCount);
  await checkSegmentationSamples([...split.train, ...split.val]);

  checkPrecision(c.device, c.precision);
  const run = resumed ?? plan.create();
  log(`run folder ${run.path}`);
  const outputs = new RunOutputs(run, c, log);
  const masks = await writeMasks(ds, split.train, join(run.path, 'masks'));

  const lastPath = resumed ? resumed.lastCheckpoint() : join(run.checkpoints, LAST_CHECKPOINT);
  const model = resumed
    ? await native.SegmentationModel.load(lastPath, c.device)
    : c.init === 'scratch'
      ? native.SegmentationModel.create(
          { encoder: c.model, numClasses, headScale: c.headScale, dropPath: c.dropPath },
          c.seed,
          { layerDecay: c.layerDecay, device: c.device },
        )
      : await native.SegmentationModel.fromPretrained(
          c.init,
          {
            numClasses,
            headScale: c.headScale,
            dropPath: c.dropPath,
            imgSize: c.imgSize,
            inChans: c.inChans,
            preset: c.initPreset,
            layerDecay: c.layerDecay,
            device: c.device,
          },
          c.seed,
        );
  model.setPrecision(c.precision);
  const enc = model.config.encoder;
  const info = model.initInfo ?? { configSource: 'checkpoint', missing: [], unexpected: [], adapted: [] };
  if (c.init !== 'scratch' && !resumed) {
    const missing = info.missing.slice(0, 6).join(', ') + (info.missing.length > 6 ? ', …' : '');
    log(
      `encoder from ${c.init} (${info.configSource}): ${info.missing.length} missing` +
        `${info.missing.length ? ` (${missing})` : ''}, ${info.unexpected.length} unused` +
        `${info.adapted.length ? `, adapted: ${info.adapted.join('; ')}` : ''}`,
    );
  }
  const loader = await openLoader(masks, {
    batchSize: c.batchSize,
    seed: c.seed,
    maps: 'require',
    workers: c.workers,
    augment: { size: enc.imgSize, randomCrop: true, scale: c.scale, hflip: c.hflip, channels: enc.inChans as 1 | 3 },
  });
  const aug = loader.config.augment;
  const meta: SegmentationModelMeta = {
    task: c.task,
    classes: ds.classes,
    mean: aug.mean,
    std: aug.std,
    threshold: c.threshold,
    init: c.init,
    dataset: resolve(c.data),
  };
  const iters = loader.batchesPerEpoch;
  if (iters === 0)
    throw new DatasetError(`${ds.root}: ${split.train.length} training image(s) make no full batch of ${c.batchSize}`);
  const sched: LrSchedule = { lr: c.lr, minLr: c.minLr, warmupEpochs: c.warmupEpochs, epochs: c.epochs };
  if (!resumed)
    plan.write(run, {
      resolved: { ...c, encoder: enc, numClasses, headScale: c.headScale },
      split: {
        train: split.train.map((s) => s.id),
        val: split.val.map((s) => s.id),
        valFrom: ds.splits.val.length > 0 ? 'val split' : `train hold-out (${c.valCount})`,
      },
      init: info,
      params: model.numParams,
      versions: { vasomim: packageVersion(), node: process.version },
    });
  log(
    `${c.task}: ${split.train.length} train / ${split.val.length} val images, ` +
      `${numClasses === 1 ? 'binary' : `${numClasses} classes`}, ` +
      `ViT ${enc.embedDim}x${enc.depth} at ${enc.imgSize}² (${enc.inChans} ch), head x${c.headScale}, ` +
      `${(model.numParams / 1e6).toFixed(2)} M params, ${c.epochs} epochs x ${iters} steps, ` +
      `lr ${c.lr.toExponential(2)}`,
  );

  const best = join(run.checkpoints, 'best.safetensors');
  const last = join(run.checkpoints, LAST_CHECKPOINT);
  let bestDsc = -Infinity;
  let bestEpoch = -1;
  let step = model.step;
  let carried = { loss: 0, steps: 0 };
  if (resumed) {
    const ls = parseCheckpointExtra(model.extra, lastPath).loop;
    if (!ls) throw new Error(`${lastPath}: no loop state (not written by \`vasomim finetune\`)`);
    bestDsc = ls.bestDsc ?? -Infinity;
    bestEpoch = ls.bestEpoch;
    carried = { loss: ls.epochLoss ?? 0, steps: ls.epochSteps ?? 0 };
    run.truncateMetrics(step);
    log(`resuming at epoch ${Math.floor(step / iters)}, batch ${step % iters} (step ${step})`);
  }
  const totalSteps = c.maxSteps !== undefined ? Math.min(c.maxSteps, c.epochs * iters) : c.epochs * iters;
  let epochsDone = Math.floor(step / iters);
  const extra = (e: number, v: number | null, partial = { loss: 0, steps: 0 }) =>
    JSON.stringify({
      ...meta,
      epoch: e,
      valDsc: v,
      loop: {
        bestDsc: Number.isFinite(bestDsc) ? bestDsc : null,
        bestEpoch,
        epochLoss: partial.loss,
        epochSteps: partial.steps,
      } satisfies FinetuneLoopState,
    });
  const result = (status: FinetuneResult['status']): FinetuneResult => ({
    run: run.path,
    best,
    last,
    bestEpoch,
    bestValDsc: Number.isFinite(bestDsc) ? bestDsc : null,
    status,
    steps: step,
    epochs: epochsDone,
    train: split.train.length,
    val: split.val.map((s) => s.id),
  });
  try {
    for (let epoch = Math.floor(step / iters); epoch < c.epochs && step < totalSteps; epoch++) {
      const t0 = performance.now();
      let lossSum = carried.loss;
      let n = carried.steps;
      carried = { loss: 0, steps: 0 };
      for await (const batch of loader.epoch(epoch, { startBatch: step % iters })) {
        const it = batch.index;
        const lr = lrAt(epoch + it / iters, sched);
        const ts = performance.now();
        const r = await model.trainStepBatch(batch, { lr, weightDecay: c.weightDecay });
        step = r.step;
        if (!Number.isFinite(r.loss)) throw new Error(`non-finite loss at step ${step}`);
        lossSum += r.loss;
        n++;
        const rec: FtStepRecord = {
          step,
          epoch,
          iter: it,
          lr,
          loss: r.loss,
          dice: r.dice,
          ce: r.ce,
          imgPerSec: batch.n / ((performance.now() - ts) / 1000),
        };
        run.log(rec as unknown as Record<string, unknown>);
        events.onStep?.(rec, { steps: totalSteps, stepsDone: step });
        // A stop inside an epoch saves the position; at an epoch's end the epoch is finished first.
        const stop = events.shouldStop?.()
          ? 'interrupted'
          : step >= totalSteps && step < c.epochs * iters
            ? 'stopped'
            : undefined;
        if (stop && it + 1 < iters) {
          await model.save(last, extra(epoch, null, { loss: lossSum, steps: n }));
          return result(stop);
        }
        if (step >= totalSteps) break;
      }
      epochsDone = epoch + 1;
      const valDsc = split.val.length
        ? await validate(ds, model, meta, split.val, (d) => events.onValidate?.(d, split.val.length))
        : null;
      const isBest = valDsc === null ? true : valDsc > bestDsc;
      if (isBest) {
        bestDsc = valDsc ?? -Infinity;
        bestEpoch = epoch;
        await model.save(best, extra(epoch, valDsc));
      }
      await model.save(last, extra(epoch, valDsc));
      const rec: FtEpochRecord = {
        event: 'epoch',
        epoch,
        step,
        loss: n ? lossSum / n : NaN,
        valDsc,
        best: isBest,
        seconds: (performance.now() - t0) / 1000,
      };
      run.log(rec as unknown as Record<string, unknown>);
      events.onEpoch?.(rec);
      outputs.epochEnd(epochsDone, step);
      if (epochsDone < c.epochs) {
        if (events.shouldStop?.()) return result('interrupted');
        if (step >= totalSteps) return result('stopped');
      }
    }
  } finally {
    loader.native.close();
  }
  outputs.finish(step);
  return result('completed');
}
