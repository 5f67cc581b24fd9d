// `predict`: a fine-tuned segmentation model applied to image files — per image a mask PNG
// (binary: 0/255 at the threshold; classes: the class id as grey value) and an overlay PNG (the
// image with the foreground tinted red, or each class in the contact-sheet palette).
import { mkdirSync } from 'node:fs';
import { basename, extname, join } from 'node:path';

import { labelsOf } from './evaluate.js';
import { PredictSchema, type PredictInput } from '../config/segmentation.js';
import { parseOptions } from '../config/vessels.js';
import { palette } from './sheet.js';
import { segmentationPredictorFromFile } from '../model/segmentation.js';
import { native } from '../native.js';
import { writePng } from '../util/png.js';

/**
 * Options of {@link predictFiles}: the fields of `PredictSchema` (out, threshold, alpha, device,
 * precision), checked by it as the CLI's flags are.
 */
export type PredictOptions = PredictInput;

export interface PredictedFile {
  image: string;
  mask: string;
  overlay: string;
  width: number;
  height: number;
  /** Foreground share of the mask. */
  foreground: number;
}

export interface PredictResult {
  files: PredictedFile[];
  seconds: number;
  imagesPerSecond: number;
}

/** Overlay of labels on a grey image (RGB bytes). */
export function overlay(
  grey: ArrayLike<number>,
  labels: Uint8Array,
  width: number,
  height: number,
  classes: number,
  alpha = 0.5,
): Uint8Array {
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    const g = Math.max(0, Math.min(255, Math.round(grey[i]!)));
    const l = labels[i]!;
    const c = l === 0 ? null : classes === 1 ? ([255, 48, 48] as const) : palette(l);
    for (let k = 0; k < 3; k++) rgb[3 * i + k] = c ? Math.round((1 - alpha) * g + alpha * c[k]!) : g;
  }
  return rgb;
}

export async function predictFiles(
  model: string,
  images: string[],
  options: PredictOptions,
  onProgress?: (done: number, total: number) => void,
): Promise<PredictResult> {
  if (images.length === 0) throw new Error('no images to predict');
  const o = parseOptions(PredictSchema, options, 'options');
  const { predictor, meta } = await segmentationPredictorFromFile(model, o.device, o.precision);
  const threshold = o.threshold ?? meta.threshold;
  mkdirSync(o.out, { recursive: true });
  const files: PredictedFile[] = [];
  const used = new Set<string>();
  const t0 = performance.now();
  for (const image of images) {
    const img = await native.readImage(image).catch((e: Error) => {
      throw new Error(`${image}: ${e.message}`);
    });
    const { width, height } = img;
    const pred = await predictor.predict({ width, height, pixels: img.pixels });
    const labels = labelsOf(pred, threshold);
    let stem = basename(image, extname(image));
    for (let k = 2; used.has(stem); k++) stem = `${basename(image, extname(image))}-${k}`;
    used.add(stem);
    const mask = join(o.out, `${stem}_mask.png`);
    const ov = join(o.out, `${stem}_overlay.png`);
    writePng(mask, { width, height, data: pred.classes === 1 ? labels.map((v) => v * 255) : labels });
    writePng(ov, {
      width,
      height,
      data: overlay(img.pixels, labels, width, height, pred.classes, o.alpha),
      channels: 3,
    });
    let fg = 0;
    for (const v of labels) if (v) fg++;
    files.push({ image, mask, overlay: ov, width, height, foreground: fg / labels.length });
    onProgress?.(files.length, images.length);
  }
  const seconds = (performance.now() - t0) / 1000;
  return { files, seconds, imagesPerSecond: images.length / Math.max(seconds, 1e-9) };
}
