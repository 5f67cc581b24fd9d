// `train-segmentor`: the frozen segmentor S of VasoMIM (UNeXt-S, METHOD.md §4) trained on
// (augmented image, augmented vessel map) pairs: 0.5·BCE + 0.5·(1 − batch soft Dice), Adam,
// poly decay lr·(1 − epoch/E)^0.9 per epoch. One zod schema (presets `paper` and `demo`), a run
// folder like pre-training's; a checkpoint at the end of every epoch, so an interrupted run
// resumes at the epoch it was in (the step count in the checkpoint says which).
import { copyFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { z } from 'zod';

import { AugmentSchema } from '../config/data.js';
import { DeviceSchema, PrecisionSchema, checkPrecision } from '../config/model.js';
import { channels, int, OUTPUT_KEYS, outputFields, runFields } from '../config/fields.js';
import { parseOptions } from '../config/vessels.js';
import { openLoader } from '../data/loader.js';
import { createSegmentor, loadSegmentor, polyLr, type Segmentor } from '../model/segmentor.js';
import { packageVersion } from '../native.js';
import { writePng } from '../util/png.js';
import { demoSamples } from './demo.js';
import { mergeConfig } from '../config/pretrain.js';
import { RunOutputs } from '../report/outputs.js';
import { LAST_CHECKPOINT, planRun, type RunDir } from './rundir.js';

export const SEGMENTOR_PRESETS = ['paper', 'demo'] as const;

export const SegmentorRunSchema = z
  .object({
    ...runFields(
      SEGMENTOR_PRESETS,
      'dataset with vessel maps (tree with <source>_frangi/, folder, manifest; default: bundled samples)',
    ),
    epochs: int('epochs', 1).describe('epochs'),
    batchSize: int('batchSize', 2).describe('batch size'),
    lr: z.number().finite().positive('lr must be > 0').default(1e-3).describe('Adam learning rate at epoch 0'),
    imgSize: int('imgSize', 32)
      .refine((v) => v % 32 === 0, 'imgSize must be divisible by 32')
      .default(224)
      .describe('crop size (divisible by 32)'),
    inChans: channels('inChans').default(3).describe('input channels (3 = grey replicated, as pre-training)'),
    seed: int('seed', 0).default(0).describe('seed of initialisation and batches'),
    device: DeviceSchema,
    precision: PrecisionSchema,
    workers: int('workers', 1).optional().describe('loader threads (default: cores, at most 8)'),
    checkpointEvery: int('checkpointEvery', 1).default(10).describe('keep a numbered checkpoint every n epochs'),
    ...outputFields(),
  })
  .strict();

export type SegmentorRunInput = z.input<typeof SegmentorRunSchema>;
export type SegmentorRunConfig = z.output<typeof SegmentorRunSchema>;

/** `paper`: §4 (200 epochs, batch 256, Adam 1e-3). `demo`: the bundled angiograms, 2 CPU cores. */
export const SEGMENTOR_PRESET_VALUES: Record<(typeof SEGMENTOR_PRESETS)[number], Partial<SegmentorRunInput>> = {
  paper: { epochs: 200, batchSize: 256, checkpointEvery: 10 },
  demo: { epochs: 60, batchSize: 8, checkpointEvery: 20 },
};

export function resolveSegmentorConfig(...layers: Record<string, unknown>[]): SegmentorRunConfig {
  const named = [...layers].reverse().find((l) => l.preset !== undefined)?.preset;
  const preset = (SEGMENTOR_PRESETS as readonly unknown[]).includes(named)
    ? (named as (typeof SEGMENTOR_PRESETS)[number])
    : 'demo';
  let merged: Record<string, unknown> = { ...SEGMENTOR_PRESET_VALUES[preset], preset };
  for (const l of layers) merged = mergeConfig(merged, l);
  return parseOptions(SegmentorRunSchema, merged, 'segmentor config');
}

export interface SegmentorStep {
  step: number;
  epoch: number;
  iter: number;
  lr: number;
  loss: number;
  bce: number;
  dice: number;
}

export interface SegmentorResult {
  run: string;
  status: 'completed' | 'interrupted';
  epoch: number;
  /** The trained segmentor (`<run>/segmentor.safetensors`) when completed. */
  segmentor?: string;
  checkpoint?: string;
}

export async function trainSegmentor(
  layers: Record<string, unknown>[],
  options: {
    resume?: string;
    onStep?: (s: SegmentorStep, total: { images: number; done: number; here: number }) => void;
    onLog?: (l: string) => void;
    shouldStop?: () => boolean;
  } = {},
): Promise<SegmentorResult> {
  const log = options.onLog ?? (() => {});
  // workers belongs to this invocation, not to the run.
  const plan = planRun({
    layers,
    resume: options.resume,
    resolve: resolveSegmentorConfig,
    invocation: ['workers', ...OUTPUT_KEYS],
  });
  const cfg: SegmentorRunConfig = plan.config;
  let run: RunDir;
  let seg: Segmentor;
  checkPrecision(cfg.device, cfg.precision);
  if (plan.resumed) {
    run = plan.resumed;
    seg = await loadSegmentor(run.lastCheckpoint(), { device: cfg.device });
    seg.setPrecision(cfg.precision);
  } else {
    run = plan.create();
    plan.write(run, { versions: { vasomim: packageVersion(), node: process.version } });
    seg = createSegmentor({ inChans: cfg.inChans }, cfg.seed, cfg.device);
    seg.setPrecision(cfg.precision);
    log(`run folder ${resolve(run.path)}`);
  }
  const outputs = new RunOutputs(run, cfg, log);
  const dataset = cfg.data ?? (await demoSamples(join(run.path, 'vessel-maps'), log));
  const augment = parseOptions(AugmentSchema, { size: cfg.imgSize, channels: cfg.inChans }, 'augment');
  const loader = await openLoader(dataset, {
    batchSize: cfg.batchSize,
    seed: cfg.seed,
    maps: 'require',
    workers: cfg.workers,
    augment,
  });
  const iters = loader.batchesPerEpoch;
  // The optimizer step count in the checkpoint says where to go on (batches are a pure function
  // of (seed, epoch, index), so a resumed run sees the same batches).
  let epoch = Math.floor(seg.step / iters);
  let startBatch = seg.step % iters;
  if (options.resume) log(`resuming ${run.path} at epoch ${epoch} (step ${seg.step})`);
  run.truncateMetrics(seg.step);
  // A run resumed inside an epoch: that epoch's mean loss also counts the steps logged before.
  let carried = { sum: 0, count: 0 };
  if (startBatch > 0)
    for (const r of run.readMetrics())
      if (r.epoch === epoch && r.event === undefined && typeof r.loss === 'number')
        carried = { sum: carried.sum + r.loss, count: carried.count + 1 };
  const total = cfg.epochs * iters * cfg.batchSize;
  let here = 0;
  let checkpoint: string | undefined;
  try {
    for (; epoch < cfg.epochs; epoch++, startBatch = 0) {
      const lr = polyLr(cfg.lr, epoch, cfg.epochs);
      let sum = carried.sum;
      let count = carried.count;
      carried = { sum: 0, count: 0 };
      for await (const batch of loader.epoch(epoch, { startBatch })) {
        const r = await seg.trainStepBatch(batch, { lr });
        if (!Number.isFinite(r.loss))
          throw new Error(
            `step ${seg.step} (epoch ${epoch}): non-finite loss ${r.loss}; ` +
              `the last good checkpoint is ${checkpoint ?? 'none'}`,
          );
        here += batch.n;
        sum += r.loss;
        count++;
        const rec: SegmentorStep = {
          step: seg.step,
          epoch,
          iter: batch.index,
          lr,
          loss: r.loss,
          bce: r.bce,
          dice: r.dice,
        };
        run.log({ ...rec });
        options.onStep?.(rec, { images: total, done: seg.step * cfg.batchSize, here });
        if (options.shouldStop?.() && batch.index + 1 < iters) {
          checkpoint = join(run.checkpoints, LAST_CHECKPOINT);
          await seg.save(checkpoint);
          return { run: run.path, status: 'interrupted', epoch, checkpoint };
        }
      }
      const done = epoch + 1;
      run.log({ step: seg.step, epoch, event: 'epoch', loss: count ? sum / count : null });
      checkpoint = join(run.checkpoints, LAST_CHECKPOINT);
      await seg.save(checkpoint);
      if (done % cfg.checkpointEvery === 0 || done === cfg.epochs)
        copyFileSync(checkpoint, join(run.checkpoints, `checkpoint-${String(done).padStart(4, '0')}.safetensors`));
      outputs.epochEnd(done, seg.step);
      if (options.shouldStop?.() && done < cfg.epochs)
        return { run: run.path, status: 'interrupted', epoch: done, checkpoint };
    }
    const out = join(run.path, 'segmentor.safetensors');
    await seg.save(out, false);
    await predictionSheet(seg, await loader.batchAt(0, 0), cfg, join(run.samples, 'predictions.png'));
    outputs.finish(seg.step);
    return { run: run.path, status: 'completed', epoch: cfg.epochs, segmentor: out, checkpoint };
  } finally {
    loader.close();
  }
}

/** Rows of image | vessel map | predicted probability for the first images of a batch. */
async function predictionSheet(
  seg: Segmentor,
  batch: Awaited<ReturnType<Awaited<ReturnType<typeof openLoader>>['batchAt']>>,
  cfg: SegmentorRunConfig,
  path: string,
): Promise<void> {
  const S = cfg.imgSize;
  const C = cfg.inChans;
  const n = Math.min(4, batch.n);
  const images = batch.images();
  const maps = batch.maps()!;
  const prob = await seg.predict(images, { size: S });
  const gap = 4;
  const W = 3 * S + 2 * gap;
  const H = n * S + (n - 1) * gap;
  const out = new Uint8Array(W * H).fill(255);
  const mean = C === 3 ? 0.485 : 0.449;
  const std = C === 3 ? 0.229 : 0.226;
  for (let i = 0; i < n; i++)
    for (let y = 0; y < S; y++)
      for (let x = 0; x < S; x++) {
        const row = (i * (S + gap) + y) * W;
        out[row + x] = Math.max(0, Math.min(255, Math.round((images[(i * C * S + y) * S + x]! * std + mean) * 255)));
        out[row + S + gap + x] = Math.round(255 * maps[(i * S + y) * S + x]!);
        out[row + 2 * (S + gap) + x] = Math.round(255 * prob[(i * S + y) * S + x]!);
      }
  writePng(path, { width: W, height: H, data: out });
}
