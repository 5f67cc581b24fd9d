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
