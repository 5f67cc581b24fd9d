// Options of `vasomim finetune` (VASOMIM.md §9): one zod schema for the Node API, config files
// and CLI flags. The defaults are the CPU recipe of docs/SEGMENTATION.md §5 (ViT-Ti encoder,
// a quarter-width U-Net head, 224², batch 4, lr 2e-3, 40 epochs); `headScale: 1` is the paper's head.
import { z } from 'zod';

import { DeviceSchema, ModelConfigSchema } from './model.js';
import { SegmentationDataSchema } from './segmentation.js';

export const FT_TASKS = ['vessel-seg', 'segment-seg', 'stenosis-seg'] as const;
export type FtTask = (typeof FT_TASKS)[number];

/** The dataset task each fine-tuning task reads (ARCADE: V, VS, S). */
export const TASK_DATA: Record<FtTask, 'vessel' | 'segment' | 'stenosis'> = {
  'vessel-seg': 'vessel',
  'segment-seg': 'segment',
  'stenosis-seg': 'stenosis',
};

const pos = (what: string) => z.number({ error: `${what} must be a number` }).finite().positive(`${what} must be > 0`);
const int = (what: string, min: number) =>
  z.number({ error: `${what} must be a number` }).int(`${what} must be an integer`).min(min, `${what} must be >= ${min}`);
const unit = (what: string) => z.number({ error: `${what} must be a number` }).min(0, `${what} must be in [0, 1]`).max(1, `${what} must be in [0, 1]`);

export const FinetuneSchema = z
  .object({
    task: z.enum(FT_TASKS, { error: `task must be one of ${FT_TASKS.join(', ')}` }).default('vessel-seg'),
    /** Dataset folder or manifest with a train split (test is never read by fine-tuning). */
    data: z.string({ error: 'data must be a dataset path' }).min(1, 'data must be a dataset path'),
    /** Dataset adapter options (format, classes, masks, maskThreshold, splits). `task` comes from `task`. */
    dataOptions: SegmentationDataSchema.prefault({}),
    /** `scratch`, or a pre-trained checkpoint: ours, `encoder.safetensors` of `vasomim pretrain`, MAE .pth, timm safetensors. */
    init: z.string().min(1, 'init must be "scratch" or a checkpoint path').default('scratch'),
    /** Preset name for a bare checkpoint whose shapes match no preset (init only). */
    initPreset: z.string().optional(),
    /** Encoder when training from scratch (any model-config field; `imgSize` / `inChans` below win). */
    model: z.record(z.string(), z.unknown()).default({ preset: 'tiny' }),
    /** Input side (the position embedding of a pre-trained encoder is resampled to it). */
    imgSize: int('imgSize', 16).refine((v) => v % 16 === 0, 'imgSize must be a multiple of 16 (patch 16)').default(224),
    /** Input channels; default: the pre-trained encoder's (scratch: 3, grey replicated). */
    inChans: z.union([z.literal(1), z.literal(3)], { error: 'inChans must be 1 or 3' }).optional(),
    /** U-Net head width multiplier (1 = the paper's 512/256/128/64/32). */
    headScale: pos('headScale').max(4, 'headScale must be <= 4').default(0.25),
    epochs: int('epochs', 1).default(40),
    warmupEpochs: z.number().min(0, 'warmupEpochs must be >= 0').default(2),
    /** Peak learning rate; default: blr · batchSize / 256 when blr is given, else 2e-3 (the CPU recipe). */
    lr: pos('lr').optional(),
    blr: pos('blr').optional(),
    minLr: z.number().min(0, 'minLr must be >= 0').default(1e-6),
    layerDecay: pos('layerDecay').max(1, 'layerDecay must be in (0, 1]').default(0.75),
    dropPath: z.number().min(0, 'dropPath must be in [0, 1)').lt(1, 'dropPath must be in [0, 1)').default(0.1),
    weightDecay: z.number().min(0, 'weightDecay must be >= 0').default(0.05),
    batchSize: int('batchSize', 2).default(4),
    /** RandomResizedCrop area range and horizontal-flip probability of the training images and masks. */
    scale: z.tuple([z.number(), z.number()]).refine(([a, b]) => a > 0 && a <= b && b <= 1, 'scale must satisfy 0 < min <= max <= 1').default([0.5, 1]),
    hflip: unit('hflip').default(0.5),
    /** Validation: the dataset's val split when it has one, else this many training images (evenly spaced in name order) held out. 0 = none (best = last). */
    valCount: int('valCount', 0).default(8),
    /** Foreground threshold on the sigmoid output (binary tasks). */
    threshold: unit('threshold').default(0.5),
    seed: int('seed', 0).default(0),
    /** Where the model runs: cpu | cuda | cuda:N. */
    device: DeviceSchema,
    /** Parent folder of run folders. */
    runs: z.string().min(1).default('runs/finetune'),
    /** Run folder name (default: a UTC timestamp). */
    name: z.string().min(1).optional(),
    /** Loader threads (default: cores, at most 8). */
    workers: int('workers', 1).optional(),
    /** Stop after this many optimizer steps (smoke tests). */
    maxSteps: int('maxSteps', 1).optional(),
  })
  .strict()
  .transform((o, ctx) => {
    const lr = o.lr ?? (o.blr !== undefined ? (o.blr * o.batchSize) / 256 : 2e-3);
    if (o.warmupEpochs >= o.epochs && o.epochs > 1)
      ctx.addIssue({ code: 'custom', message: `warmupEpochs (${o.warmupEpochs}) must be < epochs (${o.epochs})`, path: ['warmupEpochs'] });
    const model = ModelConfigSchema.safeParse({ ...o.model, imgSize: o.imgSize, ...(o.inChans ? { inChans: o.inChans } : {}) });
    if (!model.success) {
      for (const i of model.error.issues) ctx.addIssue({ code: 'custom', message: i.message, path: ['model', ...i.path.map(String)] });
      return z.NEVER;
    }
    return { ...o, lr, model: model.data, dataOptions: { ...o.dataOptions, task: TASK_DATA[o.task] } };
  });

export type FinetuneInput = z.input<typeof FinetuneSchema>;
export type FinetuneConfig = z.output<typeof FinetuneSchema>;
