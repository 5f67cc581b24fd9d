// `pretrain`: the VasoMIM pre-training loop, readable top to bottom (nanoGPT-style):
//
//   config -> run folder -> data (maps) -> model (+ frozen segmentor) -> for each epoch, batch:
//     lr = schedule(epoch + it / iters)                     pure function of the position
//     guidance = model.guidance(batch, eta)                 Rust: P = σ(S(img)), per-patch mass of G
//     masks = batchMasks(policy, epoch, sampleIds, mass)    TS: seeded by (seed, epoch, sample)
//     stats = model.trainBatch(batch, masks, {lr, ...})     Rust: L_rec + w·L_cons, AdamW
//     metrics.jsonl, progress; checkpoint / sample grid every N epochs; Ctrl-C -> checkpoint.
//
// Batches are a pure function of (seed, epoch, batch index), masks of (seed, epoch, sample id)
// and learning rates of (epoch, iteration), and a checkpoint holds weights, AdamW moments and
// the loop position in one file: a resumed run repeats the uninterrupted one exactly.
//
// Data parallel (distributed.ts, docs/DISTRIBUTED.md): under a launcher each rank trains on its
// DistributedSampler shard of every batch (batchSize / world images); Rust averages gradients
// and losses, the logging counters are summed here; rank 0 alone writes the run folder.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { parseLoopState, PretrainLoopStateSchema, type PretrainLoopState as LoopState } from '../config/checkpoint.js';
import { OUTPUT_KEYS } from '../config/fields.js';
import { resolvePretrainConfig, type PretrainConfig } from '../config/pretrain.js';
import { native, packageVersion } from '../native.js';
import { openLoader, type Batch, type DataLoader } from '../data/loader.js';
import { RunOutputs } from '../report/outputs.js';
import { StepOptionsSchema, checkPrecision } from '../config/model.js';
import { loadModel, type Model } from '../model/index.js';
import { demoSamples, bundledSegmentor } from './demo.js';
import { groupFromEnv, joinGroup, rankDevice, rankZeroFirst, reduceStep, type Group } from './distributed.js';
import { batchMasks, guidedAlpha, maskCounts, runMaskOptions } from './masking.js';
import { MaskFrequency } from './maskfreq.js';
import { LAST_CHECKPOINT, planRun, RunDir } from './rundir.js';
import { sampleGrid } from './samples.js';
import { absoluteLr, lrAt, type LrSchedule } from './schedule.js';

export interface PretrainEvents {
  /** Every optimizer step, with the record written to metrics.jsonl. */
  onStep?: (r: StepRecord, total: { steps: number; images: number; imagesDone: number; imagesHere: number }) => void;
  /** Free-form progress lines (run folder, checkpoints, maps). */
  onLog?: (line: string) => void;
  /** Polled after every step: true stops the run with a checkpoint (Ctrl-C). */
  shouldStop?: () => boolean;
}

export interface StepRecord {
  step: number;
  epoch: number;
  iter: number;
  lr: number;
  loss: number;
  lossRec: number;
  lossCons: number | null;
  gradNorm: number;
  /** Masked patches chosen by the guidance, mean per image. */
  guided: number;
  /** Share of masked patches that contain vessel (offline map mass > 0); null without maps. */
  vesselShare: number | null;
  imgPerSec: number;
}

export interface PretrainResult {
  run: string;
  status: 'completed' | 'interrupted' | 'stopped';
  step: number;
  epoch: number;
  /** The newest checkpoint written (the one to resume from). */
  checkpoint?: string;
  /** The encoder exported for timm at the end of a completed run. */
  encoder?: string;
}

/** Raised when a step's loss or gradient is not finite; the last good checkpoint is kept. */
export class NonFiniteLossError extends Error {
  override name = 'NonFiniteLossError';
}

function schedule(c: PretrainConfig): LrSchedule {
  return { lr: c.lr ?? absoluteLr(c.blr, c.batchSize), minLr: c.minLr, warmupEpochs: c.warmupEpochs, epochs: c.epochs };
}

/** The config of a new or resumed run (see `planRun`); maxSteps, workers and the launch belong to the invocation. */
export function planPretrain(layers: Record<string, unknown>[], resume: string | undefined) {
  return planRun({
    layers,
    resume,
    resolve: resolvePretrainConfig,
    invocation: ['maxSteps', 'workers', 'gpus', 'nproc', 'distTimeout', ...OUTPUT_KEYS],
  });
}

/** Every rank takes batchSize / world images of each batch. */
export function checkWorld(cfg: PretrainConfig, world: number): void {
  if (cfg.batchSize % world !== 0)
    throw new Error(`batchSize (${cfg.batchSize}) must be a multiple of the number of ranks (${world})`);
}

/**
 * Run (or resume, with `resume` = a run folder) VasoMIM pre-training. `layers` are config
 * objects applied over the preset in order (config file, then flags).
 */
export async function pretrain(
  layers: Record<string, unknown>[],
  options: { resume?: string; group?: Group | null } & PretrainEvents = {},
): Promise<PretrainResult> {
  // The group: given (null = one process), else from the launcher's variables.
  const group = options.group === undefined ? groupFromEnv() : (options.group ?? undefined);
  const world = group?.worldSize ?? 1;
  const owner = (group?.rank ?? 0) === 0; // rank 0 owns the run folder and the log
  const log = owner ? (options.onLog ?? (() => {})) : () => {};
  const plan = planPretrain(layers, options.resume);
  const cfg: PretrainConfig = plan.config;
  checkWorld(cfg, world);
  const device = rankDevice(cfg.device, group);
  let run: RunDir | undefined;
  let model: Model;
  let state: LoopState | undefined;
  checkPrecision(cfg.device, cfg.precision);
  if (plan.resumed) {
    // Every rank loads the same checkpoint (the run folder must be readable by all of them).
    run = plan.resumed;
    const ckpt = run.lastCheckpoint();
    model = await loadModel(ckpt, { device });
    model.setPrecision(cfg.precision);
    state = parseLoopState(PretrainLoopStateSchema, model.loadInfo?.loopState, ckpt, 'vasomim pretrain');
    if (owner) run.truncateMetrics(state.step);
    const ranks = world > 1 ? ` on ${world} ranks` : '';
    log(`resuming ${run.path} at epoch ${state.epoch}, batch ${state.nextBatch} (step ${state.step})${ranks}`);
  } else {
    if (owner) {
      run = plan.create();
      plan.write(run, { versions: versions(), device: cfg.device });
      log(`run folder ${resolve(run.path)}`);
    }
    model = native.Model.create(cfg.model, cfg.seed, [], device);
    model.setPrecision(cfg.precision);
  }
  if (group) {
    const path = await joinGroup(model, group, { device, timeoutS: cfg.distTimeout, runPath: run?.path });
    run ??= new RunDir(path);
    log(`${world} ranks joined (${group.launcher}, rank 0 at ${group.masterAddr}:${group.commPort})`);
  }
  const runDir = run!; // rank 0's folder on every rank; only rank 0 writes to it
  // Rank 0 writes the report and TensorBoard events.
  const outputs = owner ? new RunOutputs(runDir, cfg, log) : undefined;

  // Data: the bundled angiograms (maps computed into the run folder) or the user's dataset.
  const needMaps = cfg.masking === 'vessel-guided' && cfg.eta > 0;
  const dataset =
    cfg.data ?? (await rankZeroFirst(model, group, () => demoSamples(join(runDir.path, 'vessel-maps'), log)));
  const perDevice = cfg.batchSize / world;
  const microBatches = Math.ceil(perDevice / cfg.maxMicroBatch);
  // DistributedSampler(drop_last=True) shards: rank r takes positions r, r + world, ... of the epoch's order.
  const loader: DataLoader = await openLoader(dataset, {
    batchSize: perDevice,
    rank: group?.rank ?? 0,
    world,
    seed: cfg.seed,
    maps: needMaps ? 'require' : 'optional',
    workers: cfg.workers,
    augment: cfg.augment,
  });
  if (cfg.segmentor) {
    const path = cfg.segmentor === 'bundled' ? bundledSegmentor() : cfg.segmentor;
    if (!existsSync(path))
      throw new Error(`segmentor checkpoint ${path} does not exist (train one with \`vasomim train-segmentor\`)`);
    await model.attachSegmentor(path);
  }

  const L = (cfg.model.imgSize / cfg.model.patchSize) ** 2;
  const grid = cfg.model.imgSize / cfg.model.patchSize;
  maskCounts(L, cfg.maskRatio);
  const iters = loader.batchesPerEpoch;
  const sched = schedule(cfg);
  const freq = state ? MaskFrequency.fromJSON(grid, grid, state.maskFrequency) : new MaskFrequency(grid, grid);
  let step = state?.step ?? 0;
  let epoch = state?.epoch ?? 0;
  let startBatch = state?.nextBatch ?? 0;
  const totalSteps = cfg.epochs * iters;
  const stepsLimit = cfg.maxSteps ?? Number.POSITIVE_INFINITY;
  let stepsHere = 0;
  let epochMasked = state?.epochMasked ?? 0;
  let epochVessel = state?.epochVessel ?? 0;
  let stopping: 'interrupted' | 'stopped' | undefined;
  let imagesHere = 0;
  const t0 = performance.now();
  let lastCheckpoint: string | undefined = state ? join(runDir.checkpoints, LAST_CHECKPOINT) : undefined;

  const save = async (ep: number, nextBatch: number, periodic: boolean) => {
    if (!owner) return;
    const ls: LoopState = {
      version: 1,
      epoch: ep,
      nextBatch,
      step,
      maskFrequency: freq.toJSON(),
      epochMasked: nextBatch ? epochMasked : 0,
      epochVessel: nextBatch ? epochVessel : 0,
    };
    const last = join(runDir.checkpoints, LAST_CHECKPOINT);
    await model.saveTraining(last, JSON.stringify(ls));
    if (periodic) {
      const p = join(runDir.checkpoints, `checkpoint-${String(ep).padStart(4, '0')}.safetensors`);
      await model.saveTraining(p, JSON.stringify(ls));
      log(`checkpoint ${p}`);
    }
    lastCheckpoint = last;
  };

  const grids = async (ep: number) => {
    if (!owner) return;
    const b = await loader.batchAt(0, 0);
    const path = join(runDir.samples, `epoch-${String(ep).padStart(4, '0')}.png`);
    const mean = await sampleGrid(model, b, cfg, ep, path);
    freq.writeHeatMap(join(runDir.samples, 'mask-frequency'), mean);
  };

  try {
    for (; epoch < cfg.epochs; epoch++, startBatch = 0) {
      const opts = runMaskOptions(cfg, epoch);
      // Guided masking needs G; L_cons reuses the P computed with it; with maps, the vessel share is logged.
      const needGuidance = cfg.masking === 'vessel-guided' || cfg.consWeight > 0 || loader.hasMaps;
      const guidanceEta = cfg.masking === 'vessel-guided' ? cfg.eta : loader.hasMaps ? 1 : 0;
      for await (const batch of loader.epoch(epoch, { startBatch })) {
        const it = batch.index;
        const lr = lrAt(epoch + it / iters, sched);
        const g = needGuidance ? await model.guidance(batch, guidanceEta, false).catch(guidanceError(cfg)) : undefined;
        const masks = batchMasks(opts, L, batch.samples, g?.mass);
        const mask = Float32Array.from(masks.mask);
        let r;
        try {
          const stepOptions = StepOptionsSchema.parse({
            lr,
            weightDecay: cfg.weightDecay,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            clipGrad: cfg.clipGrad,
            microBatches,
            consWeight: cfg.consWeight,
          });
          r = await model.trainBatch(
            batch,
            new Uint32Array(masks.idsKeep.buffer),
            new Uint32Array(masks.idsRestore.buffer),
            mask,
            stepOptions,
          );
        } catch (e) {
          const msg = (e as Error).message;
          if (!msg.includes('non-finite')) throw e;
          if (owner) runDir.log({ step: step + 1, epoch, iter: it, event: 'non-finite', message: msg });
          throw new NonFiniteLossError(
            `step ${step + 1} (epoch ${epoch}, batch ${it}, lr ${lr.toExponential(3)}): ${msg}. The run stopped; ` +
              (lastCheckpoint
                ? `the last good checkpoint is ${lastCheckpoint} ` +
                  `(resume with --resume ${runDir.path}, perhaps with a lower lr or clipGrad)`
                : 'no checkpoint was written yet'),
          );
        }
        step++;
        stepsHere++;
        const here = new MaskFrequency(grid, grid);
        here.add(masks.mask, g?.vessel ?? undefined);
        // Summed over the ranks: the numbers of the whole batch, and whether any rank got Ctrl-C.
        const all = await reduceStep(model, world, {
          stop: options.shouldStop?.() ?? false,
          images: batch.n,
          guided: masks.guided.reduce((a, b) => a + b, 0),
          vessel: g?.vessel ? vesselCounts(masks.mask, g.vessel) : undefined,
          freq: here,
        });
        imagesHere += all.images;
        freq.merge(all.freq);
        const counts = all.vessel;
        if (counts) {
          epochMasked += counts.masked;
          epochVessel += counts.vessel;
        }
        const rec: StepRecord = {
          step,
          epoch,
          iter: it,
          lr,
          loss: r.loss,
          lossRec: r.lossRec,
          lossCons: r.lossCons ?? null,
          gradNorm: r.gradNorm,
          guided: all.guided / all.images,
          vesselShare: counts ? counts.vessel / Math.max(1, counts.masked) : null,
          imgPerSec: imagesHere / ((performance.now() - t0) / 1000),
        };
        if (owner) {
          runDir.log({ ...rec });
          options.onStep?.(rec, {
            steps: totalSteps,
            images: totalSteps * all.images,
            imagesDone: step * all.images,
            imagesHere,
          });
        }
        if (all.stop || stepsHere >= stepsLimit) {
          stopping = all.stop ? 'interrupted' : 'stopped';
          if (it + 1 < iters) {
            await save(epoch, it + 1, false);
            return { run: runDir.path, status: stopping, step, epoch, checkpoint: lastCheckpoint };
          }
        }
      }
      // End of the epoch (also when a stop request came with its last batch).
      const done = epoch + 1;
      // The paper's check of the schedule: the share of masked patches that contain vessel, per epoch.
      if (owner)
        runDir.log({
          step,
          epoch,
          event: 'epoch',
          vesselShare: epochMasked > 0 ? epochVessel / epochMasked : null,
          alpha: cfg.masking === 'vessel-guided' ? guidedAlpha(epoch, cfg.epochs, cfg.alpha0, cfg.alphaT) : 0,
        });
      epochMasked = epochVessel = 0;
      const periodic = done % cfg.checkpointEvery === 0 || done === cfg.epochs;
      if (periodic || stopping) await save(done, 0, periodic);
      if (done % cfg.sampleEvery === 0 || done === cfg.epochs) await grids(epoch);
      outputs?.epochEnd(done, step);
      if (stopping && done < cfg.epochs)
        return { run: runDir.path, status: stopping, step, epoch: done, checkpoint: lastCheckpoint };
    }
  } finally {
    loader.close();
  }
  const encoder = join(runDir.path, 'encoder.safetensors');
  if (owner) await model.exportTimm(encoder);
  log(`encoder for timm: ${encoder}`);
  outputs?.finish(step);
  return { run: runDir.path, status: 'completed', step, epoch: cfg.epochs, checkpoint: lastCheckpoint, encoder };
}

/** Masked patches, and those among them whose offline-map mass is > 0, over a batch. */
export function vesselCounts(mask: ArrayLike<number>, vessel: ArrayLike<number>): { masked: number; vessel: number } {
  let m = 0;
  let v = 0;
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    m++;
    if (vessel[i]! > 0) v++;
  }
  return { masked: m, vessel: v };
}

function versions(): Record<string, string> {
  return { vasomim: packageVersion(), node: process.version };
}

function guidanceError(cfg: PretrainConfig) {
  return (e: Error): never => {
    throw new Error(`guidance (masking ${cfg.masking}, eta ${cfg.eta}): ${e.message}`);
  };
}

export type { Batch };
export { resolvePretrainConfig };
