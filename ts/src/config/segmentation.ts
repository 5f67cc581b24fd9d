// Options of downstream segmentation: the dataset adapters, `evaluate` and `predict` (one zod
// schema each, shared by the CLI flags, config files and the Node API).
import { z } from 'zod';

import { DeviceSchema, PrecisionSchema } from './model.js';
import { FilterSchema } from './vessels.js';

export const SPLITS = ['train', 'val', 'test'] as const;
export type SplitName = (typeof SPLITS)[number];

export const SegmentationDataSchema = z
  .object({
    format: z
      .enum(['auto', 'paired', 'arcade', 'manifest'])
      .default('auto')
      .describe('auto: .csv/.jsonl = manifest, syntax/ or stenosis/ (or <split>/annotations/) = ARCADE, else paired'),
    task: z.enum(['vessel', 'segment', 'stenosis']).optional().meta({
      description: 'ARCADE task: vessel (binary), segment (one class per category), stenosis (binary)',
      defaultText: 'vessel (stenosis for a stenosis/ folder)',
    }),
    classes: z
      .number()
      .int('classes must be an integer')
      .min(1, 'classes must be >= 1')
      .max(255, 'classes must be <= 255')
      .optional()
      .describe('expected number of foreground classes (ARCADE categories, label masks); another count is an error'),
    masks: z
      .enum(['binary', 'labels'])
      .default('binary')
      .describe('mask files: binary (>= maskThreshold is foreground) or labels (value = class)'),
    maskThreshold: z
      .number()
      .min(1, 'maskThreshold must be in [1, 255]')
      .max(255, 'maskThreshold must be in [1, 255]')
      .default(128)
      .describe('grey level from which a binary mask pixel is foreground (fercer-xca80: 128)'),
    splits: z
      .object({
        train: z.string().min(1).optional().describe('paired folders: the train split folder, relative to the root'),
        val: z.string().min(1).optional().describe('paired folders: the val split folder'),
        test: z.string().min(1).optional().describe('paired folders: the test split folder'),
      })
      .strict()
      .optional()
      .describe('paired folders: the folder of each split (default: found by name)'),
  })
  .strict();

export type SegmentationDataInput = z.input<typeof SegmentationDataSchema>;
export type SegmentationDataConfig = z.output<typeof SegmentationDataSchema>;

export const BaselineSchema = z
  .object({
    /** The unsupervised vesselness filter, with its own defaults (Sato sigmas 1..4, Frangi 1,3,5,7,9). */
    filter: FilterSchema.prefault({}),
    border: z
      .number()
      .int('border must be an integer')
      .min(0, 'border must be >= 0')
      .default(0)
      .describe('baseline: pixels zeroed on every side of the response before normalising'),
  })
  .strict();

export type BaselineInput = z.input<typeof BaselineSchema>;

export const EvaluateSchema = z
  .object({
    out: z
      .string()
      .min(1, 'out must be a folder')
      .describe('output folder: per-image.csv, summary.json, thresholds.csv, contact-sheet.png'),
    data: SegmentationDataSchema.prefault({}),
    tuneSplit: z.enum(SPLITS).default('train').describe('split the threshold is chosen on'),
    evalSplit: z.enum(SPLITS).default('test').describe('split the metrics are reported on'),
    threshold: z
      .number()
      .min(0, 'threshold must be in [0, 1]')
      .max(1, 'threshold must be in [0, 1]')
      .optional()
      .describe(
        'fixed threshold on the normalised output, no tuning (default: models: their own, 0.5; baselines: tuned)',
      ),
    steps: z
      .number()
      .int('steps must be an integer')
      .min(2, 'steps must be >= 2')
      .max(10000, 'steps must be <= 10000')
      .default(100)
      .describe('threshold grid for tuning: k/steps, k = 1..steps-1'),
    examples: z
      .number()
      .int('examples must be an integer')
      .min(0, 'examples must be >= 0')
      .max(32, 'examples must be <= 32')
      .default(4)
      .describe('worst and best cases in the contact sheet (each; 0 = none)'),
    panel: z
      .number()
      .int('panel must be an integer')
      .min(32, 'panel must be >= 32')
      .max(1024, 'panel must be <= 1024')
      .default(192)
      .describe('side of one contact-sheet panel in pixels'),
    limit: z
      .number()
      .int('limit must be an integer')
      .min(1, 'limit must be >= 1')
      .optional()
      .describe('only the first n images of each split'),
    jobs: z
      .number()
      .int('jobs must be an integer')
      .min(0, 'jobs must be >= 0')
      .default(0)
      .describe('images in flight, 0 = all cores'),
    device: DeviceSchema,
    precision: PrecisionSchema,
  })
  .strict();

export type EvaluateInput = z.input<typeof EvaluateSchema>;
export type EvaluateConfig = z.output<typeof EvaluateSchema>;

export const PredictSchema = z
  .object({
    out: z.string().min(1, 'out must be a folder').describe('output folder'),
    threshold: z
      .number()
      .min(0, 'threshold must be in [0, 1]')
      .max(1, 'threshold must be in [0, 1]')
      .optional()
      .meta({ description: 'foreground threshold (binary models)', defaultText: "the model's (0.5)" }),
    alpha: z
      .number()
      .min(0, 'alpha must be in [0, 1]')
      .max(1, 'alpha must be in [0, 1]')
      .default(0.5)
      .describe('overlay opacity in [0, 1]'),
    device: DeviceSchema,
    precision: PrecisionSchema,
  })
  .strict();

export type PredictInput = z.input<typeof PredictSchema>;
