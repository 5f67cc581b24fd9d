// `vasomim predict <model> <images...> --out <dir>`: masks and overlays of a fine-tuned model.
import { predictFiles } from '../../eval/predict.js';
import { helpText, num, parseCommand, UsageError, type CommandSpec } from '../args.js';
import { formatDuration, Progress } from '../progress.js';

export const spec: CommandSpec = {
  name: 'predict',
  summary: 'Segment images with a fine-tuned model: mask and overlay PNGs.',
  usage: 'vasomim predict <model.safetensors> <images...> --out <dir> [options]',
  description:
    'The model is a checkpoint of `vasomim finetune` (best.safetensors / last.safetensors). Each image is\n' +
    'resized to the model\'s input, predicted, and the probabilities resized back to the image size.\n' +
    'Writes <out>/<name>_mask.png (binary: 0/255 at the threshold; classes: the class id as grey value)\n' +
    'and <out>/<name>_overlay.png (the image with the foreground tinted). Runs on the CPU.',
  options: [
    { name: 'out', short: 'o', type: 'string', arg: '<dir>', help: 'output folder' },
    { name: 'threshold', short: 't', type: 'string', arg: '<t>', help: 'foreground threshold (binary models)', default: 'the model\'s (0.5)' },
    { name: 'alpha', type: 'string', arg: '<a>', help: 'overlay opacity in [0, 1]', default: '0.5' },
    { name: 'json', type: 'boolean', help: 'print the result as one JSON line on stdout' },
  ],
  examples: ['vasomim predict runs/finetune/xca/checkpoints/best.safetensors data/samples/fercer-xca80/Angios_40_testing/1.png --out runs/predict'],
};

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand(spec, argv);
  if (values.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  const [model, ...images] = positionals;
  if (!model) throw new UsageError('give a model checkpoint and at least one image');
  if (images.length === 0) throw new UsageError('give at least one image after the model');
  if (!values.out) throw new UsageError('--out <dir> is required');
  const threshold = num(values, 'threshold');
  const alpha = num(values, 'alpha');
  if (threshold !== undefined && !(threshold >= 0 && threshold <= 1)) throw new UsageError('--threshold must be in [0, 1]');
  if (alpha !== undefined && !(alpha >= 0 && alpha <= 1)) throw new UsageError('--alpha must be in [0, 1]');
  let bar: Progress | undefined;
  try {
    const r = await predictFiles(model, images, { out: values.out as string, threshold, alpha }, (done, total) => {
      bar ??= new Progress('predict', total, 'img');
      bar.update(done, done);
    });
    bar?.end();
    bar = undefined;
    process.stderr.write(`${r.files.length} image(s) in ${formatDuration(r.seconds)} (${r.imagesPerSecond.toFixed(2)} img/s); wrote masks and overlays to ${values.out}\n`);
    if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
    return 0;
  } finally {
    bar?.end();
  }
}
