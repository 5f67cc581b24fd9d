// What `evaluate` (and later `predict`) runs on each image: a Predictor turns a grey image into a
// soft output at the image's size. The unsupervised vesselness baseline is one; the fine-tuned
// ViT segmentor will be another (same interface: load the model once, predict per image).
import { BaselineSchema, type BaselineInput } from '../config/segmentation.js';
import { parseOptions } from '../config/vessels.js';
import { vesselness } from '../vessels/api.js';

export interface PredictorInput {
  width: number;
  height: number;
  /** Grey in 8-bit units, row-major. */
  pixels: Float32Array;
}

export interface Prediction {
  width: number;
  height: number;
  /**
   * 1: `probs` is one foreground score per pixel in [0, 1] (thresholded by `evaluate`);
   * K > 1: K class-major maps (class 0 = background), the label is the argmax.
   */
  classes: number;
  probs: Float32Array;
}

export interface Predictor {
  /** Short name for reports, e.g. `sato` or the checkpoint's file name. */
  readonly name: string;
  /** Output maps: 1 (binary) or K classes; when set, `evaluate` checks it against the dataset first. */
  readonly classes?: number;
  /** Everything needed to reproduce the outputs (written into summary.json). */
  describe(): Record<string, unknown>;
  predict(image: PredictorInput): Promise<Prediction>;
  /** Release native resources (models); optional. */
  close?(): void;
}

/**
 * The unsupervised baseline: the raw Sato or Frangi response (float32 unless
 * `filter.precision` says otherwise), an optional `border` zeroed, divided by its maximum so that
 * scores lie in [0, 1] per image (an all-zero response stays 0).
 */
export function vesselnessPredictor(options: BaselineInput = {}): Predictor {
  const cfg = parseOptions(BaselineSchema, options, 'baseline options');
  const filter = { ...cfg.filter, precision: cfg.filter.precision ?? ('f32' as const) };
  return {
    name: cfg.filter.filter,
    describe: () => ({
      kind: 'vesselness',
      filter,
      border: cfg.border,
      normalisation: 'response / max(response) per image',
    }),
    async predict(image) {
      const { width, height } = image;
      const r = await vesselness(image, filter);
      const probs = new Float32Array(width * height);
      const b = cfg.border;
      let max = 0;
      for (let y = b; y < height - b; y++)
        for (let x = b; x < width - b; x++) {
          const v = r.data[y * width + x]!;
          if (v > max) max = v;
        }
      if (max > 0)
        for (let y = b; y < height - b; y++)
          for (let x = b; x < width - b; x++) probs[y * width + x] = r.data[y * width + x]! / max;
      return { width, height, classes: 1, probs };
    },
  };
}
