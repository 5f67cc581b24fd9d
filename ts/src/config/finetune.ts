// Options of `vasomim finetune` (METHOD.md §9): one zod schema for the Node API, config files
// and CLI flags. The defaults are the CPU recipe of docs/SEGMENTATION.md §5 (ViT-Ti encoder,
// a quarter-width U-Net head, 224², batch 4, lr 2e-3, 40 epochs); `headScale: 1` is the paper's head.
import { z } from 'zod';

import { DeviceSchema, PrecisionSchema, ModelConfigSchema } from './model.js';
import { channels, choice, int, outputFields, pos, unit } from './fields.js';
import { mergeConfig } from './pretrain.js';
import { SegmentationDataSchema } from './segmentation.js';
import { parseOptions } from './vessels.js';

export const FT_TASKS = ['vessel-seg', 'segment-seg', 'stenosis-seg'] as const;
export type FtTask = (typeof FT_TASKS)[number];

/** The dataset task each fine-tuning task reads (ARCADE: V, VS, S). */
export const TASK_DATA: Record<FtTask, 'vessel' | 'segment' | 'stenosis'> = {
  'vessel-seg': 'vessel',
  'segment-seg': 'segment',
  'stenosis-seg': 'stenosis',
};

export const FinetuneSchema = z
  .object({
    task: choice('task', FT_TASKS)
      .default('vessel-seg')
      .describe('vessel-seg (binary), segment-seg (K classes) or stenosis-seg (binary)'),
    data: z
      .string({ error: 'data must be a dataset path' })
      .min(1, 'data must be a dataset path')
      .describe('dataset folder or manifest with a train split (layouts: vasomim evaluate --help); test is never read'),
    /** Dataset adapter options (format, classes, masks, maskThreshold, splits). `task` comes from `task`. */
    dataOptions: SegmentationDataSchema.prefault({}),
    init: z
      .string()
      .min(1, 'init must be "scratch" or a checkpoint path')
      .default('scratch')
      .describe('scratch, or a pre-trained checkpoint: ours, encoder.safetensors of pretrain, MAE .pth, timm'),
    initPreset: z.string().optional().describe('preset of a bare --init checkpoint whose shapes match no preset'),
    /** Encoder when training from scratch (any model-config field; `imgSize` / `inChans` below win). */
    model: z.record(z.string(), z.unknown()).default({ preset: 'tiny' }),
    imgSize: int('imgSize', 16)
      .refine((v) => v % 16 === 0, 'imgSize must be a multiple of 16 (patch 16)')
      .default(224)
      .describe("input side, multiple of 16 (a pre-trained encoder's position embedding is resampled)"),
    inChans: channels('inChans')
      .optional()
      .describe("input channels (default: the pre-trained encoder's; scratch: 3, grey replicated)"),
    headScale: pos('headScale')
      .max(4, 'headScale must be <= 4')
      .default(0.25)
      .describe("U-Net head width multiplier (1 = the paper's 512/256/128/64/32)"),
    epochs: int('epochs', 1).default(40).describe('epochs'),
    warmupEpochs: z.number().min(0, 'warmupEpochs must be >= 0').default(2).describe('linear warm-up epochs'),
    lr: pos('lr')
      .optional()
      .describe('peak learning rate (default: blr * batchSize / 256 when blr is given, else 2e-3)'),
    blr: pos('blr').optional().describe('base learning rate (lr = blr * batchSize / 256)'),
    minLr: z.number().min(0, 'minLr must be >= 0').default(1e-6).describe('final learning rate of the cosine'),
    layerDecay: pos('layerDecay').max(1, 'layerDecay must be in (0, 1]').default(0.75).describe('layer-wise LR decay'),
    dropPath: z
      .number()
      .min(0, 'dropPath must be in [0, 1)')
      .lt(1, 'dropPath must be in [0, 1)')
      .default(0.1)
      .describe('drop-path rate of the last block'),
    weightDecay: z.number().min(0, 'weightDecay must be >= 0').default(0.05).describe('AdamW weight decay'),
    batchSize: int('batchSize', 2).default(4).describe('images per step'),
    scale: z
      .tuple([z.number(), z.number()])
      .refine(([a, b]) => a > 0 && a <= b && b <= 1, 'scale must satisfy 0 < min <= max <= 1')
      .default([0.5, 1])
      .describe('RandomResizedCrop area range of the training images and masks'),
    hflip: unit('hflip').default(0.5).describe('horizontal flip probability'),
    valCount: int('valCount', 0)
      .default(8)
      .describe('without a val split: training images held out (evenly spaced by name) for validation; 0 = none'),
    threshold: unit('threshold').default(0.5).describe('foreground threshold on the sigmoid output (binary tasks)'),
    seed: int('seed', 0).default(0).describe('initialisation of the head (and a scratch encoder), batches, drop-path'),
    device: DeviceSchema,
    precision: PrecisionSchema,
    runs: z.string().min(1).default('runs/finetune').describe('parent folder of run folders'),
    name: z.string().min(1).optional().describe('run folder name (default: UTC timestamp)'),
    workers: int('workers', 1).optional().describe('loader threads (default: cores, at most 8)'),
    maxSteps: int('maxSteps', 1).optional().describe('stop after n optimizer steps in total (smoke tests); resumable'),
    ...outputFields(),
  })
  .strict()
  .transform((o, ctx) => {
    const lr = o.lr ?? (o.blr !== undefined ? (o.blr * o.batchSize) / 256 : 2e-3);
    if (o.warmupEpochs >= o.epochs && o.epochs > 1)
      ctx.addIssue({
        code: 'custom',
        message: `warmupEpochs (${o.warmupEpochs}) must be < epochs (${o.epochs})`,
        path: ['warmupEpochs'],
      });
    const model = ModelConfigSchema.safeParse({
      ...o.model,
      imgSize: o.imgSize,
      ...(o.inChans ? { inChans: o.inChans } : {}),
    });
    if (!model.success) {
      for (const i of model.error.issues)
        ctx.addIssue({ code: 'custom', message: i.message, path: ['model', ...i.path.map(String)] });
      return z.NEVER;
    }
    return { ...o, lr, model: model.data, dataOptions: { ...o.dataOptions, task: TASK_DATA[o.task] } };
  });

export type FinetuneInput = z.input<typeof FinetuneSchema>;
export type FinetuneConfig = z.output<typeof FinetuneSchema>;

/** Resolve fine-tuning options: the layers (config file, flags) merged in order, then the schema. */
export function resolveFinetuneConfig(...layers: Record<string, unknown>[]): FinetuneConfig {
  return parseOptions(
    FinetuneSchema,
    layers.reduce((m, l) => mergeConfig(m, l), {}),
    'finetune config',
  );
}
