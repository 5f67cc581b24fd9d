// `vasomim predict <model> <images...> --out <dir>`: masks and overlays of a fine-tuned model.
import { checkImageFiles } from '../../data/read.js';
import { predictFiles } from '../../eval/predict.js';
import { PredictSchema } from '../../config/segmentation.js';
import { parseOptions } from '../../config/vessels.js';
import { command, UsageError, type CommandSpec } from '../args.js';
import { formatDuration, Progress } from '../progress.js';
import { flagInput, schemaFlags } from '../schema-flags.js';
import { isDetectionTask, runPredict, predictSpec } from '../detection.js';

export const spec: CommandSpec = {
  name: 'predict',
  summary: 'Segment images with a fine-tuned model: mask and overlay PNGs.',
  usage: 'vasomim predict <model.safetensors> <images...> --out <dir> [options]',
  description:
    'The model is a checkpoint of `vasomim finetune` (best.safetensors / last.safetensors). Each image is\n' +
    "resized to the model's input, predicted, and the probabilities resized back to the image size.\n" +
    'Writes <out>/<name>_mask.png (binary: 0/255 at the threshold; classes: the class id as grey value)\n' +
    'and <out>/<name>_overlay.png (the image with the foreground tinted).',
  options: [{ name: 'json', type: 'boolean', help: 'print the result as one JSON line on stdout' }],
  flags: schemaFlags(PredictSchema, { short: { out: 'o', threshold: 't' } }),
  flagsTitle: 'prediction options:',
  examples: [
    'vasomim predict runs/finetune/xca/checkpoints/best.safetensors ' +
      'data/samples/fercer-xca80/Angios_40_testing/1.png --out runs/predict',
  ],
};

const runSegmentation = command(spec, async ({ values, positionals }) => {
  const [model, ...images] = positionals;
  if (!model) throw new UsageError('give a model checkpoint and at least one image');
  if (images.length === 0) throw new UsageError('give at least one image after the model');
  const options = flagInput(spec.flags!, values);
  if (!options.out) throw new UsageError('--out <dir> is required');
  const parsed = parseOptions(PredictSchema, options, 'options');
  await checkImageFiles(images);
  let bar: Progress | undefined;
  try {
    const r = await predictFiles(model, images, parsed, (done, total) => {
      bar ??= new Progress('predict', total, 'img');
      bar.update(done, done);
    });
    bar?.end();
    bar = undefined;
    process.stderr.write(
      `${r.files.length} image(s) in ${formatDuration(r.seconds)} (${r.imagesPerSecond.toFixed(2)} img/s); wrote ` +
        `masks and overlays to ${parsed.out}\n`,
    );
    if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
    return 0;
  } finally {
    bar?.end();
  }
});

/** `--task stenosis-det` goes to the detector's command (../detection.ts), anything else to segmentation. */
export const run = (argv: string[]) => (isDetectionTask(argv) ? runPredict(argv) : runSegmentation(argv));

/** The spec of a command line (the detector's for `--task stenosis-det`). */
export const specFor = (argv: string[]) => (isDetectionTask(argv) ? predictSpec : spec);
