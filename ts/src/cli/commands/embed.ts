// `vasomim embed <checkpoint> <image…> --out <features.npy>`: encoder features of angiograms.
import { checkPrecision, DeviceSchema, PrecisionSchema } from '../../config/model.js';
import { checkImageFiles } from '../../data/read.js';
import { loadModel } from '../../model/index.js';
import { command, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'embed',
  summary: 'Encoder features of images as a NumPy array (N, 2, D).',
  usage: 'vasomim embed <checkpoint> <image...> --out <features.npy> [options]',
  description:
    'Row 0 of each image is the cls token after the final norm, row 1 the mean of the patch tokens\n' +
    "after the final norm; no masking. Images of the model's input size are used as they are,\n" +
    'others are resized bicubically (antialiased); grey values are scaled to [0, 1], replicated to\n' +
    "the model's channels and normalised with the ImageNet mean/std, as in pre-training.",
  options: [
    { name: 'out', short: 'o', type: 'string', arg: '<file>', help: 'output .npy (float32, shape (N, 2, D))' },
    { name: 'preset', type: 'string', arg: '<name>', help: 'preset of a checkpoint without a config' },
    { name: 'device', type: 'string', arg: '<cpu|cuda|cuda:N>', help: 'where the model runs (default: cpu)' },
    {
      name: 'precision',
      type: 'string',
      arg: '<auto|f32|tf32|bf16>',
      help: 'compute precision (default: auto = bf16 on cuda, f32 on cpu)',
    },
  ],
  examples: ['vasomim embed vit_base_vasomim.safetensors data/samples/cadica-samples/*.png --out features.npy'],
};

export const run = command(spec, async ({ values, positionals }) => {
  if (positionals.length < 2) throw new UsageError('expected a checkpoint and at least one image');
  const out = values.out as string | undefined;
  if (!out) throw new UsageError('--out <features.npy> is required');
  if (!/\.npy$/i.test(out)) throw new UsageError(`--out ${out}: must end in .npy`);
  const preset = values.preset as string | undefined;
  const [ckpt, ...images] = positionals;
  const device = DeviceSchema.safeParse(values.device);
  if (!device.success) throw new UsageError(`--device: ${device.error.issues[0]!.message}`);
  const precision = PrecisionSchema.safeParse(values.precision);
  if (!precision.success) throw new UsageError(`--precision: ${precision.error.issues[0]!.message}`);
  checkPrecision(device.data, precision.data);
  await checkImageFiles(images);
  const model = await loadModel(ckpt!, { ...(preset ? { preset } : {}), device: device.data });
  model.setPrecision(precision.data);
  const f = await model.embedFiles(images, out);
  process.stdout.write(`wrote ${out} (float32 ${f.shape.join('x')}: cls, mean patch token)\n`);
  return 0;
});
