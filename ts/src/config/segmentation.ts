// Options of downstream segmentation: the dataset adapters and `evaluate` (one zod schema each,
// shared by the CLI flags, config files and the Node API).
import { z } from 'zod';

import { DeviceSchema } from './model.js';
import { FilterSchema } from './vessels.js';

export const SPLITS = ['train', 'val', 'test'] as const;
export type SplitName = (typeof SPLITS)[number];

export const SegmentationDataSchema = z
  .object({
    /** auto: a .csv/.jsonl file is a manifest, a folder with syntax/ or stenosis/ (or <split>/annotations/) is ARCADE, else paired folders. */
    format: z.enum(['auto', 'paired', 'arcade', 'manifest']).default('auto'),
    /** ARCADE: vessel (union of the segments, binary), segment (one class per category), stenosis (binary). Default: vessel, or stenosis for a stenosis/ folder. */
    task: z.enum(['vessel', 'segment', 'stenosis']).optional(),
    /** Expected number of foreground classes (ARCADE categories; label masks); a dataset with another count is an error. */
    classes: z.number().int('classes must be an integer').min(1, 'classes must be >= 1').max(255, 'classes must be <= 255').optional(),
    /** Paired / manifest masks: binary (value >= maskThreshold is foreground) or labels (value = class). */
    masks: z.enum(['binary', 'labels']).default('binary'),
    /** Grey level at or above which a binary mask pixel is foreground (fercer-xca80 masks: 128). */
    maskThreshold: z.number().min(1, 'maskThreshold must be in [1, 255]').max(255, 'maskThreshold must be in [1, 255]').default(128),
    /** Paired folders: the folder of each split, relative to the root (default: found by name). */
    splits: z
      .object({ train: z.string().min(1).optional(), val: z.string().min(1).optional(), test: z.string().min(1).optional() })
      .strict()
      .optional(),
  })
  .strict();

export type SegmentationDataInput = z.input<typeof SegmentationDataSchema>;
export type SegmentationDataConfig = z.output<typeof SegmentationDataSchema>;

export const BaselineSchema = z
  .object({
    /** The unsupervised vesselness filter, with its own defaults (Sato sigmas 1..4, Frangi 1,3,5,7,9). */
    filter: FilterSchema.prefault({}),
    /** Pixels zeroed on every side of the response before normalising (0 = none). */
    border: z.number().int('border must be an integer').min(0, 'border must be >= 0').default(0),
  })
  .strict();

export type BaselineInput = z.input<typeof BaselineSchema>;

export const EvaluateSchema = z
  .object({
    /** Output folder: per-image.csv, summary.json, thresholds.csv, contact-sheet.png. */
    out: z.string().min(1, 'out must be a folder'),
    data: SegmentationDataSchema.prefault({}),
    /** Split the threshold is chosen on. */
    tuneSplit: z.enum(SPLITS).default('train'),
    /** Split the metrics are reported on. */
    evalSplit: z.enum(SPLITS).default('test'),
    /** A fixed threshold on the normalised output (skips tuning; models: 0.5). */
    threshold: z.number().min(0, 'threshold must be in [0, 1]').max(1, 'threshold must be in [0, 1]').optional(),
    /** Threshold grid for tuning: k / steps for k = 1 .. steps - 1. */
    steps: z.number().int('steps must be an integer').min(2, 'steps must be >= 2').max(10000, 'steps must be <= 10000').default(100),
    /** Best and worst cases shown in the contact sheet (each). */
    examples: z.number().int('examples must be an integer').min(0, 'examples must be >= 0').max(32, 'examples must be <= 32').default(4),
    /** Side of one panel of the contact sheet in pixels. */
    panel: z.number().int('panel must be an integer').min(32, 'panel must be >= 32').max(1024, 'panel must be <= 1024').default(192),
    /** Use only the first n images of each split (quick runs). */
    limit: z.number().int('limit must be an integer').min(1, 'limit must be >= 1').optional(),
    /** Images processed concurrently (0 = cores). */
    jobs: z.number().int('jobs must be an integer').min(0, 'jobs must be >= 0').default(0),
    /** Where the model runs: cpu | cuda | cuda:N. */
    device: DeviceSchema,
  })
  .strict();

export type EvaluateInput = z.input<typeof EvaluateSchema>;
export type EvaluateConfig = z.output<typeof EvaluateSchema>;
