// The fine-tuned segmentation ViT as TS sees it: the native `SegmentationModel`, the metadata saved with
// it (task, classes, normalisation, threshold), and a `Predictor` for `evaluate` / `predict`.
import { basename } from 'node:path';

import type { Predictor } from '../eval/predictor.js';
import { SegmentationMetaSchema, type SegmentationMeta } from '../config/checkpoint.js';
import type { NativeModelConfig } from '../config/model.js';
import { formatZodError } from '../config/vessels.js';
import { InputFileError } from '../errors.js';
import { native } from '../native.js';
import type { SegmentationModel } from '../native.js';

export type { SegmentationModel };

/** A segmentation model's config as the native side returns it (camelCase). */
export interface SegmentationConfig {
  encoder: NativeModelConfig;
  /** 1: binary (sigmoid); K ≥ 2: classes 0..K−1 with softmax (0 = background). */
  numClasses: number;
  /** Multiplier of the head widths (512, 256, 128, 64, 32); 1 = the paper's head. */
  headScale: number;
  /** Drop-path rate of the last block (linear over depth). */
  dropPath: number;
}

/** The typed config of a model. */
export function segmentationConfig(model: SegmentationModel): SegmentationConfig {
  return model.config as SegmentationConfig;
}

/** What `vasomim finetune` stores in a checkpoint's `extra` metadata (`SegmentationMetaSchema`). */
export type SegmentationModelMeta = SegmentationMeta;

/** Thrown for a file that is not a usable segmentation model (CLI exit 2). */
export class ModelFileError extends InputFileError {
  override name = 'ModelFileError';
}

/**
 * The metadata of a model: its saved `extra` parsed with `SegmentationMetaSchema` (every field optional here,
 * so a bare model also works), with defaults from the model for what is absent.
 */
export function modelMeta(model: SegmentationModel, path = 'model'): SegmentationModelMeta {
  let meta: Partial<SegmentationModelMeta> = {};
  if (model.extra) {
    let value: unknown;
    try {
      value = JSON.parse(model.extra);
    } catch (e) {
      throw new ModelFileError(`${path}: bad metadata (${(e as Error).message})`);
    }
    const r = SegmentationMetaSchema.partial().safeParse(value);
    if (!r.success) throw new ModelFileError(`${path}: bad metadata:\n${formatZodError(r.error)}`);
    meta = r.data;
  }
  const k = segmentationConfig(model).numClasses;
  const c = segmentationConfig(model).encoder.inChans;
  const grey = c === 3 ? { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] } : { mean: [0.449], std: [0.226] };
  const classes =
    k === 1
      ? ['background', 'foreground']
      : Array.from({ length: k }, (_, i) => (i === 0 ? 'background' : `class${i}`));
  return {
    ...meta,
    task: meta.task ?? (k === 1 ? 'vessel-seg' : 'segment-seg'),
    classes: meta.classes ?? classes,
    mean: meta.mean ?? grey.mean,
    std: meta.std ?? grey.std,
    threshold: meta.threshold ?? 0.5,
  };
}

/** Load a fine-tuned model; a file of another kind is a ModelFileError naming it. */
export async function loadSegmentationModel(
  path: string,
  device = 'cpu',
): Promise<{ model: SegmentationModel; meta: SegmentationModelMeta }> {
  let model: SegmentationModel;
  try {
    model = await native.SegmentationModel.load(path, device);
  } catch (e) {
    throw new ModelFileError(
      (e as Error).message.includes(path) ? (e as Error).message : `${path}: ${(e as Error).message}`,
    );
  }
  return { model, meta: modelMeta(model, path) };
}

/**
 * A Predictor over a segmentation model: each image is resized to the model's input (bicubic),
 * normalised as in training, predicted, and the K probability maps resized back to the image
 * size bilinearly (all in Rust). Binary: one foreground probability map; K ≥ 2 classes:
 * class-major softmax maps.
 */
export function segmentationPredictor(
  model: SegmentationModel,
  meta: SegmentationModelMeta,
  name = 'segvit',
  describe: Record<string, unknown> = {},
): Predictor {
  const cfg = segmentationConfig(model);
  const k = cfg.numClasses;
  return {
    name,
    classes: k,
    describe: () => ({
      kind: 'segvit',
      ...describe,
      task: meta.task,
      classes: k,
      imgSize: cfg.encoder.imgSize,
      inChans: cfg.encoder.inChans,
      headScale: cfg.headScale,
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
export async function segmentationPredictorFromFile(
  path: string,
  device = 'cpu',
  precision = 'auto',
): Promise<{ predictor: Predictor; model: SegmentationModel; meta: SegmentationModelMeta }> {
  const { model, meta } = await loadSegmentationModel(path, device);
  model.setPrecision(precision);
  return { predictor: segmentationPredictor(model, meta, basename(path), { checkpoint: path }), model, meta };
}
