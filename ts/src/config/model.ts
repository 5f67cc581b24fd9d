// The model configuration: one zod schema for the Node API, config files and CLI flags. A preset
// (micro, tiny, small, base, large, huge) gives every field; any field may be overridden.
import { z } from 'zod';

import { native } from '../native.js';
import { channels, count } from './fields.js';
import { ConfigError, parseOptions } from './vessels.js';

export const PRESET_NAMES = ['micro', 'tiny', 'small', 'base', 'large', 'huge'] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

export const ModelConfigSchema = z
  .object({
    preset: z
      .enum(PRESET_NAMES)
      .default('base')
      .describe('ViT size by name (micro is for tests); the other fields override it'),
    imgSize: count('imgSize').optional().describe('input side in pixels (divisible by the patch size)'),
    patchSize: count('patchSize').optional(),
    inChans: channels('inChans')
      .optional()
      .describe('input channels: 3 = grey replicated (paper, timm), 1 = grey-native'),
    embedDim: count('embedDim').optional(),
    depth: count('depth').optional(),
    numHeads: count('numHeads').optional(),
    decoderEmbedDim: count('decoderEmbedDim').optional(),
    decoderDepth: count('decoderDepth').optional(),
    decoderNumHeads: count('decoderNumHeads').optional(),
    mlpRatio: z.number().finite().positive('mlpRatio must be > 0').optional(),
    /** Per-patch normalised pixel targets (MAE's norm_pix_loss). */
    normPixLoss: z.boolean().optional(),
  })
  .strict()
  .transform(({ preset, ...over }) => {
    const base = native.presetConfig(preset) as NativeModelConfig;
    const cleaned = Object.fromEntries(Object.entries(over).filter(([, v]) => v !== undefined));
    return { ...base, ...cleaned } as typeof base;
  });

export type ModelConfigInput = z.input<typeof ModelConfigSchema>;
export type ModelConfig = z.output<typeof ModelConfigSchema>;

/** Model config fields as the native side takes and returns them (camelCase). */
export interface NativeModelConfig {
  imgSize: number;
  patchSize: number;
  inChans: number;
  embedDim: number;
  depth: number;
  numHeads: number;
  decoderEmbedDim: number;
  decoderDepth: number;
  decoderNumHeads: number;
  mlpRatio: number;
  normPixLoss: boolean;
}

/** The fields that size the ViT and its decoder: a preset gives them, so the CLI makes no flags for them. */
export const ARCHITECTURE_FIELDS = [
  'patchSize',
  'embedDim',
  'depth',
  'numHeads',
  'decoderEmbedDim',
  'decoderDepth',
  'decoderNumHeads',
  'mlpRatio',
  'normPixLoss',
] as const satisfies readonly (keyof NativeModelConfig)[];

/**
 * Where a model runs: `cpu` (default), `cuda` (the first GPU) or `cuda:N`. Checked against the
 * native build at parse time, so an unavailable device is a config error (CLI exit 2), never a
 * silent CPU run.
 */
export const DeviceSchema = z
  .string()
  .default('cpu')
  .superRefine((v, ctx) => {
    try {
      native.checkDevice(v);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
    }
  })
  .meta({
    description: 'where the model runs: cpu | cuda | cuda:N (cuda needs a CUDA build: docs/CUDA.md)',
    placeholder: '<cpu|cuda|cuda:N>',
  });

/**
 * How a model computes (docs/CUDA.md §Precision): `auto` (bf16 on CUDA, f32 on the CPU), `f32`,
 * `tf32` (CUDA) or `bf16` (autocast as torch.autocast: matrix products in bf16, statistics, softmax
 * and losses in f32). Weights and optimizer state stay f32 in every mode; bit-identical resume is
 * an f32-on-CPU promise.
 */
export const PrecisionSchema = z
  .enum(['auto', 'f32', 'tf32', 'bf16'])
  .default('auto')
  .meta({ description: 'compute precision: auto (bf16 on cuda, f32 on cpu) | f32 | tf32 | bf16' });

/** A device and precision that do not go together (tf32 is a CUDA tensor-core format), as a config error. */
export function checkPrecision(device: string, precision: z.output<typeof PrecisionSchema>): void {
  if (precision === 'tf32' && !device.startsWith('cuda'))
    throw new ConfigError(`precision: tf32 needs a CUDA device (device is ${device}); use f32 or bf16`);
}

/** AdamW and step settings of pre-training: the one place their defaults live. */
export const StepOptionsSchema = z
  .object({
    /** Learning rate of this step (the schedule is the caller's). */
    lr: z.number().finite().min(0, 'lr must be >= 0'),
    weightDecay: z.number().finite().min(0, 'weightDecay must be >= 0').default(0.05),
    beta1: z.number().min(0).lt(1, 'beta1 must be < 1').default(0.9),
    beta2: z.number().min(0).lt(1, 'beta2 must be < 1').default(0.95),
    eps: z.number().positive('eps must be > 0').default(1e-8),
    /** Global gradient-norm clip (none by default, as MAE pre-training). */
    clipGrad: z.number().positive('clipGrad must be > 0').optional(),
    /** Accumulate gradients over this many micro-batches (same update, less memory). */
    microBatches: z.number().int().positive('microBatches must be > 0').default(1),
    /** Weight of L_cons = BCE(S(recon), P) in every step (0: off; > 0 needs an attached segmentor). */
    consWeight: z.number().finite().min(0, 'consWeight must be >= 0').default(0),
  })
  .strict();

export type StepOptionsInput = z.input<typeof StepOptionsSchema>;

export function parseModelConfig(value: unknown): ModelConfig {
  return parseOptions(ModelConfigSchema, value, 'model config');
}
