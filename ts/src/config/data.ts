// Options of the data pipeline — dataset index, augmentation, loader, frame extraction: one zod
// schema each, shared by the CLI flags, config files and the Node API.
import { availableParallelism } from 'node:os';

import { z } from 'zod';

import { channels } from './fields.js';
import { DEFAULT_EXCLUDE } from './vessels.js';

/** ImageNet statistics (method §2) for grey replicated to 3 channels. */
export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;
/** Grey-native (1 channel): the mean of the three ImageNet values, as a grey image sees them. */
export const GREY_MEAN = [0.449] as const;
export const GREY_STD = [0.226] as const;

const range = (what: string, lo: number, hi: number | undefined) =>
  z
    .tuple([z.number({ error: `${what} must be two numbers` }), z.number({ error: `${what} must be two numbers` })])
    .refine(([a, b]) => a > lo && a <= b && (hi === undefined || b <= hi) && Number.isFinite(b), {
      message:
        hi === undefined
          ? `${what} must satisfy ${lo} < min <= max`
          : `${what} must satisfy ${lo} < min <= max <= ${hi}`,
    });

export const AugmentSchema = z
  .object({
    size: z
      .number()
      .int('size must be an integer')
      .min(16, 'size must be >= 16')
      .max(4096, 'size must be <= 4096')
      .default(224)
      .describe('output side in pixels'),
    /** RandomResizedCrop (training); false resizes the whole image (evaluation). */
    randomCrop: z.boolean().default(true),
    /** RandomResizedCrop area fraction (VasoMIM: 0.2–1). */
    scale: range('scale', 0, 1).default([0.2, 1.0]),
    /** RandomResizedCrop aspect range w/h. */
    ratio: range('ratio', 0, undefined).default([3 / 4, 4 / 3]),
    /** Probability of the horizontal flip. */
    hflip: z.number().min(0, 'hflip must be in [0, 1]').max(1, 'hflip must be in [0, 1]').default(0.5),
    channels: channels('channels')
      .default(3)
      .describe('output channels: 3 = grey replicated (paper, ImageNet statistics), 1 = grey-native'),
    mean: z.array(z.number()).optional(),
    std: z.array(z.number().positive('each std must be > 0')).optional(),
  })
  .strict()
  .transform((o, ctx) => {
    const mean = o.mean ?? [...(o.channels === 3 ? IMAGENET_MEAN : GREY_MEAN)];
    const std = o.std ?? [...(o.channels === 3 ? IMAGENET_STD : GREY_STD)];
    if (mean.length !== o.channels || std.length !== o.channels)
      ctx.addIssue({
        code: 'custom',
        message: `mean and std need ${o.channels} value(s) each (channels = ${o.channels})`,
        path: ['mean'],
      });
    return { ...o, mean, std };
  });

export type AugmentInput = z.input<typeof AugmentSchema>;
export type AugmentConfig = z.output<typeof AugmentSchema>;

export const DatasetSchema = z
  .object({
    mapSuffixes: z
      .array(z.string().regex(/^[\w.-]+$/, 'suffix may contain letters, digits, _ . - only'))
      .min(1)
      .default(['_frangi', '_filter_92'])
      .describe("map folder suffixes tried in order (XA-170K: _frangi; the authors' loader: _filter_92)"),
    exclude: z
      .array(z.string())
      .default(DEFAULT_EXCLUDE)
      .describe('basename globs (* and ?) of images to skip, comma-separated'),
  })
  .strict();

export type DatasetInput = z.input<typeof DatasetSchema>;
export type DatasetConfig = z.output<typeof DatasetSchema>;

const cores = () => Math.max(1, availableParallelism());

export const LoaderSchema = z
  .object({
    batchSize: z
      .number()
      .int('batchSize must be an integer')
      .min(1, 'batchSize must be >= 1')
      .default(64)
      .describe('batch size'),
    /** Integer seed: batches are a pure function of (seed, epoch, batch). */
    seed: z.number().int('seed must be an integer').min(0, 'seed must be >= 0').max(Number.MAX_SAFE_INTEGER).default(0),
    shuffle: z.boolean().default(true),
    /** Drop a short last batch (always true across ranks: DistributedSampler drop_last). */
    dropLast: z.boolean().default(true),
    rank: z.number().int().min(0, 'rank must be >= 0').default(0),
    world: z.number().int().min(1, 'world must be >= 1').default(1),
    /** Worker threads building batches (default: all cores, at most 8). */
    workers: z.number().int('workers must be an integer').min(1, 'workers must be >= 1').max(256).optional(),
    /** Batches built ahead of the consumer (default 2 per worker). */
    prefetch: z.number().int('prefetch must be an integer').min(1, 'prefetch must be >= 1').optional(),
    /**
     * require: every image must have a map (pre-training); optional: use maps when all have one;
     * ignore: images only.
     */
    maps: z.enum(['require', 'optional', 'ignore']).default('require'),
    /** Before training, read every header: image/map size mismatches and unreadable files fail early. */
    verify: z.boolean().default(true),
    /** Smallest image side accepted by the preflight check. */
    minSide: z.number().int().min(1).default(16),
    augment: AugmentSchema.prefault({}),
    dataset: DatasetSchema.prefault({}),
  })
  .strict()
  .refine((o) => o.rank < o.world, { message: 'rank must be < world', path: ['rank'] })
  .transform((o) => {
    const workers = o.workers ?? Math.min(8, cores());
    return { ...o, workers, prefetch: o.prefetch ?? 2 * workers };
  });

export type LoaderInput = z.input<typeof LoaderSchema>;
export type LoaderConfig = z.output<typeof LoaderSchema>;

export const FramesSchema = z
  .object({
    out: z.string().min(1, 'out must be a folder').describe('output folder (required)'),
    overwrite: z.boolean().default(false).describe('rewrite PNGs that exist'),
  })
  .strict();

export type FramesInput = z.input<typeof FramesSchema>;
