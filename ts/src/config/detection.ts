// Options of stenosis detection: the dataset adapters (one zod schema, shared by the CLI flags,
// config files and the Node API). See docs/DETECTION.md for the layouts and the split policies.
import { z } from 'zod';

import { choice, count, int, unit } from './fields.js';

export const DetectionDataSchema = z
  .object({
    format: choice('format', ['auto', 'stenosis', 'arcade', 'coco'])
      .default('auto')
      .describe(
        'auto: a .json file = coco, a stenosis/ folder (or <split>/annotations/) = arcade, else stenosis ' +
          '(Danilov et al.: images + Pascal-VOC .xml or *_labels.csv)',
      ),
    coordinates: choice('coordinates', ['continuous', 'voc'])
      .default('continuous')
      .describe(
        'Pascal-VOC / CSV corners: continuous (the integers as they are, w = xmax - xmin) or voc ' +
          "(detectron2's loader: xmin - 1, ymin - 1)",
      ),
    split: choice('split', ['auto', 'files', 'frame', 'patient'])
      .default('auto')
      .describe(
        'files: the splits the dataset ships (train_labels.csv / test_labels.csv, ARCADE folders); ' +
          'frame: seeded random frames (paper-like, leaks neighbouring frames of a video); patient: seeded ' +
          'random patients (honest); auto: files when the dataset has them, else patient',
      ),
    testFraction: unit('testFraction').default(0.1).describe('frame/patient splits: share of frames in test'),
    valFraction: unit('valFraction').default(0).describe('frame/patient splits: share of frames in val'),
    seed: int('seed', 0).default(0).describe('seed of the frame/patient split'),
    categories: z
      .array(z.string().min(1))
      .min(1, 'categories must name at least one class')
      .optional()
      .meta({
        description:
          'class names to detect (case-insensitive); another name in an annotation file is an error. ' +
          'COCO: categories of the file to keep (others are left out)',
        defaultText: 'Stenosis (stenosis dataset), stenosis (ARCADE), every category (COCO)',
      }),
    images: z
      .string()
      .min(1)
      .optional()
      .describe('coco: folder of the images, relative to the JSON file (default: beside it, then images/)'),
    limit: count('limit').optional().describe('use at most this many frames per split (smoke tests)'),
  })
  .strict();

export type DetectionDataInput = z.input<typeof DetectionDataSchema>;
export type DetectionDataConfig = z.output<typeof DetectionDataSchema>;

/** Run presets of `vasomim finetune --task stenosis-det` (docs/DETECTION.md). */
export const DETECTION_PRESETS = ['demo', 'cpu-512', 'paper'] as const;
export type DetectionPreset = (typeof DETECTION_PRESETS)[number];

export const DetectionRunSchema = z
  .object({
    preset: choice('preset', DETECTION_PRESETS)
      .default('demo')
      .describe('run preset (demo: micro ViT at 256 for the bundled samples; cpu-512; paper: ViT-B at 1024)'),
    data: z.string().min(1).optional().describe('dataset: Stenosis folder, ARCADE tree or COCO .json'),
    dataOptions: DetectionDataSchema.prefault({}),
    runs: z.string().min(1).default('runs').describe('folder for run folders'),
    name: z
      .string()
      .regex(/^[\w.-]+$/, 'name may contain letters, digits, _ . - only')
      .optional()
      .describe('run folder name (default: UTC timestamp)'),
    init: z.string().min(1).default('scratch').describe('pre-trained encoder file, or scratch'),
    model: choice('model', ['micro', 'tiny', 'small', 'base', 'large'])
      .default('micro')
      .describe('encoder preset when training from scratch'),
    imgSize: count('imgSize').default(256).describe('detector input side (a multiple of 64)'),
    inChans: z
      .union([z.literal(1), z.literal(3)], { error: 'inChans must be 1 or 3' })
      .default(3)
      .describe('input channels (3: the grey frame replicated, as the paper)'),
    iterations: count('iterations').default(300).describe('training steps'),
    batchSize: count('batchSize').default(2).describe('frames per step'),
    lr: z.number().positive('lr must be > 0').default(5e-4).describe('AdamW base learning rate'),
    weightDecay: z.number().min(0, 'weightDecay must be >= 0').default(0.1).describe('AdamW weight decay'),
    layerDecay: z.number().gt(0, 'layerDecay must be in (0, 1]').max(1, 'layerDecay must be in (0, 1]').default(0.7),
    warmup: int('warmup', 0).default(20).describe('linear warm-up steps (from 0.001 x lr)'),
    lrSteps: z
      .array(unit('lrSteps'))
      .default([0.889, 0.963])
      .describe('fractions of the run where the lr is multiplied by 0.1'),
    lsjMin: z.number().positive('lsjMin must be > 0').default(1).describe('LSJ: smallest resize factor of S'),
    lsjMax: z.number().positive('lsjMax must be > 0').default(1).describe('LSJ: largest resize factor of S'),
    flip: z.boolean().default(false).describe('random horizontal flips'),
    dropPath: unit('dropPath').default(0).describe('drop-path rate of the last block'),
    windowSize: count('windowSize').default(14).describe('window attention side (tokens)'),
    fpnDim: count('fpnDim').default(32).describe('pyramid channels (256 in ViTDet)'),
    anchorSizes: z.array(z.number().positive()).length(5, 'anchorSizes needs 5 sizes').default([8, 16, 32, 64, 128]),
    boxConvDim: count('boxConvDim').default(32),
    boxConvs: int('boxConvs', 0).default(2),
    boxFcDim: count('boxFcDim').default(256),
    rpnBatch: count('rpnBatch').default(256),
    roiBatch: count('roiBatch').default(64),
    rpnPreNmsTrain: count('rpnPreNmsTrain').default(1000),
    rpnPreNmsTest: count('rpnPreNmsTest').default(1000),
    rpnPostNms: count('rpnPostNms').default(300),
    evalEvery: count('evalEvery').default(100).describe('steps between validation AP50 checks (and checkpoints)'),
    evalSplit: choice('evalSplit', ['auto', 'train', 'val', 'test'])
      .default('auto')
      .describe('split of the validation AP (auto: val when it has frames, else train)'),
    seed: int('seed', 0).default(0),
    device: z.string().default('cpu').describe('cpu, cuda or cuda:N'),
    maxSteps: count('maxSteps').optional().describe('stop after this many steps of this invocation (resumable)'),
  })
  .strict();

export type DetectionRunInput = z.input<typeof DetectionRunSchema>;
export type DetectionRunConfig = z.output<typeof DetectionRunSchema>;

/** Preset values under the flags (a preset is the defaults a user sees). */
export const DETECTION_PRESET_VALUES: Record<DetectionPreset, Partial<DetectionRunInput>> = {
  demo: {},
  'cpu-512': {
    model: 'small',
    flip: true,
    imgSize: 512,
    iterations: 3000,
    batchSize: 2,
    lr: 1e-4,
    warmup: 250,
    lsjMin: 0.5,
    lsjMax: 1.5,
    dropPath: 0.1,
    fpnDim: 128,
    anchorSizes: [16, 32, 64, 128, 256],
    boxConvDim: 128,
    boxConvs: 4,
    boxFcDim: 512,
    rpnBatch: 256,
    roiBatch: 128,
    rpnPreNmsTrain: 2000,
    rpnPostNms: 1000,
    evalEvery: 500,
  },
  paper: {
    model: 'base',
    flip: true,
    imgSize: 1024,
    iterations: 46800,
    batchSize: 16,
    lr: 1e-4,
    warmup: 250,
    lsjMin: 0.1,
    lsjMax: 2,
    dropPath: 0.1,
    fpnDim: 256,
    anchorSizes: [32, 64, 128, 256, 512],
    boxConvDim: 256,
    boxConvs: 4,
    boxFcDim: 1024,
    rpnBatch: 256,
    roiBatch: 512,
    rpnPreNmsTrain: 2000,
    rpnPostNms: 1000,
    evalEvery: 2000,
  },
};

/** Keys of an invocation, not of the run (a resumed run takes them from the command line). */
export const DETECTION_INVOCATION = ['maxSteps', 'device'] as const;

/** The core's DetectionConfig of a run (encoder shape from `encoder`, the rest from the run). */
export function detectorConfig(run: DetectionRunConfig, encoder: Record<string, unknown>, numClasses: number) {
  const depth = encoder.depth as number;
  return {
    encoder: { ...encoder, imgSize: run.imgSize, inChans: run.inChans },
    numClasses,
    windowSize: run.windowSize,
    globalBlocks: Array.from({ length: depth }, (_, i) => i).filter((i) => i % 3 === 2 || depth < 3),
    dropPath: run.dropPath,
    fpnDim: run.fpnDim,
    anchorSizes: run.anchorSizes,
    rpnBatch: run.rpnBatch,
    rpnPositiveFraction: 0.5,
    rpnPreNmsTrain: run.rpnPreNmsTrain,
    rpnPreNmsTest: run.rpnPreNmsTest,
    rpnPostNms: run.rpnPostNms,
    rpnNms: 0.7,
    boxConvDim: run.boxConvDim,
    boxConvs: run.boxConvs,
    boxFcDim: run.boxFcDim,
    pooler: 7,
    roiBatch: run.roiBatch,
    roiPositiveFraction: 0.25,
    scoreThreshold: 0.05,
    testNms: 0.5,
    detectionsPerImage: 100,
  };
}
