// The fine-tuned segmentation ViT as TS sees it: the native `SegModel`, the metadata saved with
// it (task, classes, normalisation, threshold), and a `Predictor` for `evaluate` / `predict`.
import { basename } from 'node:path';

import type { Predictor } from '../eval/predictor.js';
import { native } from '../native.js';

export type SegmentationModel = InstanceType<typeof native.SegModel>;

/** What `vasomim finetune` stores in a checkpoint's `extra` metadata. */
export interface SegmentationModelMeta {
  task: string;
  /** Class names by label; classes[0] is the background (binary: background, foreground). */
  classes: string[];
  /** Loader normalisation of training (one value per input channel). */
  mean: number[];
  std: number[];
  /** Foreground threshold (binary). */
  threshold: number;
  epoch?: number;
  valDsc?: number | null;
  init?: string;
  dataset?: string;
}

/** Thrown for a file that is not a usable segmentation model (CLI exit 2). */
export class ModelFileError extends Error {
  override name = 'ModelFileError';
}

export function modelMeta(model: SegmentationModel, path = 'model'): SegmentationModelMeta {
  const raw = model.extra;
  let meta: Partial<SegmentationModelMeta> = {};
  if (raw) {
    try {
      meta = JSON.parse(raw) as Partial<SegmentationModelMeta>;
    } catch (e) {
      throw new ModelFileError(`${path}: bad metadata (${(e as Error).message})`);
    }
  }
  const k = model.config.numClasses;
  const c = model.config.encoder.inChans;
  const grey = c === 3 ? { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] } : { mean: [0.449], std: [0.226] };
  return {
    task: meta.task ?? (k === 1 ? 'vessel-seg' : 'segment-seg'),
    classes: meta.classes ?? (k === 1 ? ['background', 'foreground'] : Array.from({ length: k }, (_, i) => (i === 0 ? 'background' : `class${i}`))),
    mean: meta.mean ?? grey.mean,
    std: meta.std ?? grey.std,
    threshold: meta.threshold ?? 0.5,
    ...meta,
  } as SegmentationModelMeta;
}

/** Load a fine-tuned model; a file of another kind is a ModelFileError naming it. */
export async function loadSegmentationModel(path: string): Promise<{ model: SegmentationModel; meta: SegmentationModelMeta }> {
  let model: SegmentationModel;
  try {
    model = await native.SegModel.load(path);
  } catch (e) {
    throw new ModelFileError((e as Error).message.includes(path) ? (e as Error).message : `${path}: ${(e as Error).message}`);
  }
  return { model, meta: modelMeta(model, path) };
}

/**
 * A Predictor over a segmentation model: each image is resized to the model's input (bicubic),
 * normalised as in training, predicted, and the K probability maps resized back to the image
 * size bilinearly (all in Rust). Binary: one foreground probability map; K ≥ 2 classes:
 * class-major softmax maps.
 */
export function segmentationPredictor(model: SegmentationModel, meta: SegmentationModelMeta, name = 'segvit', describe: Record<string, unknown> = {}): Predictor {
  const k = model.config.numClasses;
  return {
    name,
    classes: k,
    describe: () => ({
      kind: 'segvit',
      ...describe,
      task: meta.task,
      classes: k,
      imgSize: model.config.encoder.imgSize,
      inChans: model.config.encoder.inChans,
      headScale: model.config.headScale,
      threshold: meta.threshold,
      epoch: meta.epoch,
      valDsc: meta.valDsc,
      init: meta.init,
    }),
    async predict({ width, height, pixels }) {
      const [probs] = await model.predictImages([{ width, height, pixels }], { mean: meta.mean, std: meta.std });
      return { width, height, classes: k, probs: probs! };
    },
  };
}

/** Load a checkpoint and wrap it as a Predictor named after the file. */
export async function segmentationPredictorFromFile(path: string): Promise<{ predictor: Predictor; model: SegmentationModel; meta: SegmentationModelMeta }> {
  const { model, meta } = await loadSegmentationModel(path);
  return { predictor: segmentationPredictor(model, meta, basename(path), { checkpoint: path }), model, meta };
}
