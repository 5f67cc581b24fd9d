// The pre-training run configuration (METHOD.md §5–§8): one zod schema for the config file,
// the CLI flags and the Node API. A run preset (`demo`, `vasomim-vit-b`) fills every field; a
// config file and then flags override it, field by field.
import { z } from 'zod';

import { AugmentSchema } from './data.js';
import { DeviceSchema, PrecisionSchema, ModelConfigSchema } from './model.js';
import { int, nonneg, outputFields, pos, runFields, unit } from './fields.js';
import { parseOptions } from './vessels.js';

export const RUN_PRESETS = ['demo', 'vasomim-vit-b'] as const;
export type RunPreset = (typeof RUN_PRESETS)[number];

/**
 * How a run is spread over processes (docs/DISTRIBUTED.md): per invocation, not stored in the run,
 * so a resumed run may use another world size. The CLI checks them before it launches the ranks.
 */
const LaunchFields = {
  gpus: z
    .string()
    .regex(/^\d+(,\d+)*$/, 'gpus must be a comma-separated list of GPU indices, e.g. 0,1,2,3')
    .refine((v) => new Set(v.split(',')).size === v.split(',').length, 'gpus lists a GPU twice')
    .optional()
    .describe(
      'data parallel on this node: one process per GPU (e.g. 0,1,2,3); under torchrun/Slurm ranks join by themselves',
    ),
  nproc: int('nproc', 1)
    .optional()
    .describe(
      'data parallel over N CPU processes with the TCP test collective: a test double for machines ' +
        'without GPUs, not a product path',
    ),
  distTimeout: pos('distTimeout')
    .default(600)
    .describe('seconds a rank waits for its peers (to join, then for any one exchange) before failing'),
};

export const LaunchSchema = z.object(LaunchFields).refine((o) => o.gpus === undefined || o.nproc === undefined, {
  path: ['nproc'],
  message: 'give --gpus or --nproc, not both',
});

export const PretrainSchema = z
  .object({
    ...runFields(
      RUN_PRESETS,
      'dataset: tree with <source>_frangi/ maps, folder, or .csv/.jsonl manifest (default: bundled samples)',
    ),
    /** Any model-config field (config/model.ts); the preset's model, then these. */
    model: z.record(z.string(), z.unknown()).default({}),
    epochs: int('epochs', 1).describe('epochs'),
    warmupEpochs: nonneg('warmupEpochs').describe('linear warm-up epochs (then cosine)'),
    blr: pos('blr').describe('base lr; lr = blr * batchSize / 256 unless lr is given'),
    lr: pos('lr').optional().describe('absolute peak lr (overrides blr)'),
    minLr: nonneg('minLr').default(0).describe('lr at the end of the cosine'),
    batchSize: int('batchSize', 1).describe('effective batch size (all devices, all accumulation steps)'),
    maxMicroBatch: int('maxMicroBatch', 1).describe(
      'largest micro-batch per forward/backward (gradient accumulation above it)',
    ),
    weightDecay: nonneg('weightDecay').default(0.05).describe('AdamW weight decay (not on biases and norms)'),
    beta1: unit('beta1').default(0.9).describe('AdamW beta1'),
    beta2: unit('beta2').default(0.95).describe('AdamW beta2'),
    clipGrad: pos('clipGrad').optional().describe('clip the global gradient norm (default: none)'),
    maskRatio: z
      .number()
      .min(0, 'maskRatio must be in [0, 1)')
      .lt(1, 'maskRatio must be in [0, 1)')
      .default(0.5)
      .describe('masked share of patches'),
    normPixLoss: z.boolean().default(true).describe('per-patch normalised pixel targets (MAE norm_pix_loss)'),
    masking: z
      .enum(['random', 'vessel-guided'], { error: 'masking must be random or vessel-guided' })
      .default('vessel-guided')
      .describe('random (MAE) or vessel-guided with the epoch schedule alpha0 -> alphaT'),
    alpha0: unit('alpha0').default(0).describe('guided share of masked patches at the start of the schedule'),
    alphaT: unit('alphaT').default(0.5).describe('guided share of masked patches in the last epoch'),
    eta: unit('eta')
      .default(0.5)
      .describe("G = eta*B + (1-eta)*P: weight of the offline map B against the segmentor's P (1: maps only)"),
    consWeight: nonneg('consWeight').default(1).describe('weight of L_cons = BCE(S(recon), P) (0 = off)'),
    segmentor: z
      .string()
      .min(1)
      .nullable()
      .optional()
      .transform((v) => (v === null || v === 'none' ? undefined : v))
      .describe('frozen UNeXt-S checkpoint (vasomim train-segmentor); "bundled": the demo one; "none"'),
    checkpointEvery: int('checkpointEvery', 1).describe('checkpoint every n epochs (and at the end, and on Ctrl-C)'),
    sampleEvery: int('sampleEvery', 1).describe('sample grid every n epochs (and at the end)'),
    sampleImages: int('sampleImages', 1)
      .max(16, 'sampleImages must be <= 16')
      .default(4)
      .describe('images per sample grid (<= 16)'),
    seed: int('seed', 0).default(0).describe('seed of initialisation, batches and masks'),
    device: DeviceSchema,
    precision: PrecisionSchema,
    workers: int('workers', 1).optional().describe('loader threads (default: cores, at most 8)'),
    /** Any augmentation field (config/data.ts); size and channels come from the model. */
    augment: z.record(z.string(), z.unknown()).default({}),
    ...LaunchFields,
    maxSteps: int('maxSteps', 1)
      .optional()
      .describe('stop (with a checkpoint) after n optimizer steps in this invocation; resumable'),
    ...outputFields(),
  })
  .strict()
  .superRefine((o, ctx) => {
    if (o.warmupEpochs > o.epochs)
      ctx.addIssue({
        code: 'custom',
        path: ['warmupEpochs'],
        message: `warmupEpochs (${o.warmupEpochs}) must be <= epochs (${o.epochs})`,
      });
    if (o.eta < 1 || o.consWeight > 0)
      if (!o.segmentor)
        ctx.addIssue({
          code: 'custom',
          path: ['segmentor'],
          message:
            'eta < 1 and consWeight > 0 need a segmentor checkpoint (train one with `vasomim train-segmentor`, or ' +
            'set eta: 1 and consWeight: 0)',
        });
  });

export type PretrainInput = z.input<typeof PretrainSchema>;
export type PretrainConfig = Omit<z.output<typeof PretrainSchema>, 'model' | 'augment'> & {
  model: z.output<typeof ModelConfigSchema>;
  augment: z.output<typeof AugmentSchema>;
};

/**
 * The presets. `vasomim-vit-b` is the paper's recipe (§8: ViT-B/16, 800 epochs, 40 warm-up,
 * blr 1.5e-4, batch 2048, mask 0.5, AdamW 0.9/0.95, wd 0.05, checkpoint every 20 epochs).
 * `demo` is the same method at laptop scale: ViT-Ti with a light decoder on the bundled
 * angiograms, a few minutes on 2 CPU cores.
 */
export const PRESETS: Record<RunPreset, Omit<PretrainInput, 'preset'>> = {
  'vasomim-vit-b': {
    model: { preset: 'base' },
    epochs: 800,
    warmupEpochs: 40,
    blr: 1.5e-4,
    batchSize: 2048,
    maxMicroBatch: 256,
    checkpointEvery: 20,
    sampleEvery: 20,
    segmentor: undefined,
  },
  demo: {
    model: { preset: 'tiny', decoderEmbedDim: 128, decoderDepth: 2, decoderNumHeads: 4 },
    epochs: 80,
    warmupEpochs: 8,
    blr: 1.5e-4,
    lr: 1.5e-3,
    batchSize: 8,
    maxMicroBatch: 8,
    checkpointEvery: 20,
    sampleEvery: 20,
    segmentor: 'bundled',
  },
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Layer `over` on `base`: nested objects (model, augment) merge key by key, the rest replaces. */
export function mergeConfig(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    out[k] = isObject(v) && isObject(out[k]) ? mergeConfig(out[k] as Record<string, unknown>, v) : v;
  }
  return out;
}

/**
 * Resolve a run config: the preset named in `layers` (last wins; default demo), then each layer
 * in order (config file, flags). Every problem is reported with its field path.
 */
export function resolvePretrainConfig(...layers: Record<string, unknown>[]): PretrainConfig {
  const named = [...layers].reverse().find((l) => l.preset !== undefined)?.preset;
  const preset = (RUN_PRESETS as readonly unknown[]).includes(named) ? (named as RunPreset) : 'demo';
  let merged: Record<string, unknown> = { ...PRESETS[preset], preset };
  for (const l of layers) merged = mergeConfig(merged, l);
  const base = parseOptions(PretrainSchema, merged, 'pre-training config');
  const model = parseOptions(
    ModelConfigSchema,
    { ...base.model, normPixLoss: base.normPixLoss },
    'pre-training config (model)',
  );
  const augment = parseOptions(
    AugmentSchema,
    { ...base.augment, size: model.imgSize, channels: model.inChans },
    'pre-training config (augment)',
  );
  return { ...base, model, augment };
}
