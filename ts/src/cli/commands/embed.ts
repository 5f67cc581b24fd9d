// `vasomim embed <checkpoint> <image…> --out <features.npy>`: encoder features of angiograms.
import { z } from 'zod';

import { checkPrecision, DeviceSchema, PrecisionSchema } from '../../config/model.js';
import { parseOptions } from '../../config/vessels.js';
import { checkImageFiles } from '../../data/read.js';
import { loadModel } from '../../model/index.js';
import { command, UsageError, type CommandSpec } from '../args.js';
import { flagInput, schemaFlags } from '../schema-flags.js';

/** The options of `embed`: its flags and their checks. */
export const EmbedSchema = z
  .object({
    out: z
      .string()
      .regex(/\.npy$/i, 'out must end in .npy')
      .describe('output .npy (float32, shape (N, 2, D))'),
    preset: z.string().min(1).optional().describe('preset of a checkpoint without a config'),
    device: DeviceSchema,
    precision: PrecisionSchema,
  })
  .strict();

export const spec: CommandSpec = {
  name: 'embed',
  summary: 'Encoder features of images as a NumPy array (N, 2, D).',
  usage: 'vasomim embed <checkpoint> <image...> --out <features.npy> [options]',
  description:
    'Row 0 of each image is the cls token after the final norm, row 1 the mean of the patch tokens\n' +
    "after the final norm; no masking. Images of the model's input size are used as they are,\n" +
    'others are resized bicubically (antialiased); grey values are scaled to [0, 1], replicated to\n' +
    "the model's channels and normalised with the ImageNet mean/std, as in pre-training.",
  options: [],
  flags: schemaFlags(EmbedSchema, { short: { out: 'o' } }),
  flagsTitle: 'embed options:',
  examples: ['vasomim embed vit_base_vasomim.safetensors data/samples/cadica-samples/*.png --out features.npy'],
};

export const run = command(spec, async ({ values, positionals }) => {
  if (positionals.length < 2) throw new UsageError('expected a checkpoint and at least one image');
  const options = flagInput(spec.flags!, values);
  if (!options.out) throw new UsageError('--out <features.npy> is required');
  const { out, preset, device, precision } = parseOptions(EmbedSchema, options, 'options');
  checkPrecision(device, precision);
  const [ckpt, ...images] = positionals;
  await checkImageFiles(images);
  const model = await loadModel(ckpt!, { ...(preset ? { preset } : {}), device });
  model.setPrecision(precision);
  const f = await model.embedFiles(images, out);
  process.stdout.write(`wrote ${out} (float32 ${f.shape.join('x')}: cls, mean patch token)\n`);
  return 0;
});
