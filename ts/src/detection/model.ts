// The detector as TS sees it: the native `DetectionModel`, the metadata `vasomim finetune --task
// stenosis-det` saves with it (classes, normalisation, input side, best validation AP50), loading
// with errors that name the file, and detection of frames read from disk.
import { native } from '../native.js';
import type { DetectionModel } from '../native.js';
import { readImage } from '../vessels/api.js';
import { InputFileError } from '../errors.js';

export type { DetectionModel };

/** What a detector checkpoint's `extra` metadata holds. */
export interface DetectorMeta {
  task: 'stenosis-det';
  classes: string[];
  mean: number[];
  std: number[];
  /** Validation AP50 of this checkpoint and the step it was taken at (null before any check). */
  valAp50: number | null;
  step: number;
}

/** Thrown for a file that is not a usable detector (CLI exit 2, as every bad input file). */
export class DetectorFileError extends InputFileError {
  override name = 'DetectorFileError';
}

/** The ImageNet statistics for 3 channels (grey replicated), their grey mean for 1. */
export function defaultNorm(inChans: number): { mean: number[]; std: number[] } {
  return inChans === 3 ? { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] } : { mean: [0.449], std: [0.226] };
}

/** The metadata of a detector (defaults for a bare file). */
export function detectorMeta(model: DetectionModel, path = 'model'): DetectorMeta {
  const cfg = model.config as { numClasses: number; encoder: { inChans: number } };
  const dflt: DetectorMeta = {
    task: 'stenosis-det',
    classes: Array.from({ length: cfg.numClasses }, (_, i) => (cfg.numClasses === 1 ? 'stenosis' : `class${i + 1}`)),
    ...defaultNorm(cfg.encoder.inChans),
    valAp50: null,
    step: Number(model.step),
  };
  if (!model.extra) return dflt;
  try {
    return { ...dflt, ...(JSON.parse(model.extra) as Partial<DetectorMeta>) };
  } catch (e) {
    throw new DetectorFileError(`${path}: bad metadata (${(e as Error).message})`);
  }
}

/** Load a fine-tuned detector; a missing, unreadable or other kind of file is a DetectorFileError naming it. */
export async function loadDetector(path: string, device?: string): Promise<DetectionModel> {
  try {
    return await native.DetectionModel.load(path, device);
  } catch (e) {
    const m = (e as Error).message;
    throw new DetectorFileError(m.includes(path) ? m : `${path}: ${m}`);
  }
}

/** One frame's detections in frame pixels: boxes [x1, y1, x2, y2], scores, class indices. */
export interface FrameDetections {
  boxes: number[][];
  scores: number[];
  classes: number[];
}

/** A grey frame as the native side takes it. */
export interface Frame {
  width: number;
  height: number;
  pixels: Float32Array;
}

/** Decodes an image file to a grey frame (8-bit units). */
export async function readFrame(path: string): Promise<Frame> {
  const im = await readImage(path);
  const scale = im.bitDepth > 8 ? 255 / (2 ** im.bitDepth - 1) : 1;
  const pixels = scale === 1 ? im.pixels : im.pixels.map((v) => v * scale);
  return { width: im.width, height: im.height, pixels };
}

/** Detections of frames, `batch` at a time; `onProgress(done, total)` after each batch. */
export async function detectFrames(
  model: DetectionModel,
  frames: (() => Promise<Frame>)[],
  norm: { mean: number[]; std: number[] },
  batch = 2,
  onProgress?: (done: number, total: number) => void,
): Promise<FrameDetections[]> {
  const out: FrameDetections[] = [];
  for (let i = 0; i < frames.length; i += batch) {
    const imgs = await Promise.all(frames.slice(i, i + batch).map((f) => f()));
    const dets = await model.detect(imgs, norm);
    for (const d of dets) {
      const boxes: number[][] = [];
      for (let k = 0; k < d.boxes.length; k += 4) boxes.push(d.boxes.slice(k, k + 4));
      out.push({ boxes, scores: d.scores, classes: d.classes });
    }
    onProgress?.(out.length, frames.length);
  }
  return out;
}
