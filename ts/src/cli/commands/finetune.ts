// `vasomim finetune --task vessel-seg|segment-seg|stenosis-seg --data <dataset> --init <ckpt>|scratch`:
// the segmentation ViT trained on a dataset's train split, best-validation checkpoint kept.
import { resolve } from 'node:path';

import { parseOptions } from '../../config/vessels.js';
import { FinetuneSchema } from '../../config/finetune.js';
import { ARCHITECTURE_FIELDS, ModelConfigSchema } from '../../config/model.js';
import { mergeConfig } from '../../config/pretrain.js';
import { finetune } from '../../train/finetune.js';
import { command, noPositionals, UsageError, type CommandSpec } from '../args.js';
import { reportStop, runLongJob } from '../long-job.js';
import { Progress } from '../progress.js';
import { configLayers, schemaFlags } from '../schema-flags.js';
import { isDetectionTask, runFinetune, finetuneSpec } from '../detection.js';

export const spec: CommandSpec = {
  name: 'finetune',
  summary: "Fine-tune the segmentation ViT (pre-trained encoder + U-Net adapter head) on a dataset's train split.",
  usage: 'vasomim finetune --task <task> --data <dataset> --init <checkpoint|scratch> [options]',
  description:
    'Tasks: vessel-seg (binary: Dice + BCE), stenosis-seg (binary), segment-seg (K classes: Dice + CE).\n' +
    'The encoder comes from --init (encoder.safetensors of `vasomim pretrain`, one of its checkpoints, an MAE\n' +
    '.pth or a timm safetensors; missing / unused tensors are reported) or is trained from scratch. AdamW with\n' +
    'layer-wise LR decay (lr · decay^(depth+1-layer)), no weight decay on biases / norms / cls token,\n' +
    'drop-path, warm-up + cosine per iteration. Augmentation: RandomResizedCrop (--scale) + horizontal flip,\n' +
    'the masks cropped and flipped with their image.\n\n' +
    "Validation: the dataset's val split, or --val-count training images (evenly spaced in name order) held\n" +
    'out; the test split is never read. After every epoch: mean per-image DSC at the threshold (argmax for\n' +
    'classes) at the image size, checkpoints/last.safetensors, and checkpoints/best.safetensors when it\n' +
    'improves. Writes <runs>/<name>/{config.json, metrics.jsonl, masks/, checkpoints/}.\n' +
    'Exit 0 done, 2 bad input.',
  options: [
    {
      name: 'resume',
      type: 'string',
      arg: '<run>',
      help: 'continue a run folder from checkpoints/last.safetensors (Ctrl-C writes it)',
    },
    {
      name: 'config',
      short: 'c',
      type: 'string',
      arg: '<file.json>',
      help: 'any config field as JSON; flags override',
    },
    { name: 'json', type: 'boolean', help: 'print the result as one JSON line on stdout' },
  ],
  flags: schemaFlags(FinetuneSchema, {
    nested: { model: ModelConfigSchema },
    omit: [
      'dataOptions.task',
      'dataOptions.splits',
      // the run's own imgSize / inChans fields set them
      ...['imgSize', 'inChans', ...ARCHITECTURE_FIELDS].map((k) => `model.${k}`),
    ],
    names: { 'model.preset': 'model' },
    help: { 'model.preset': 'encoder preset when training from scratch' },
    short: { data: 'd', init: 'i', epochs: 'e', batchSize: 'b', threshold: 't', seed: 's' },
  }),
  flagsTitle: 'run config (--config, then these flags):',
  examples: [
    'vasomim finetune --task vessel-seg --data data/samples/fercer-xca80 --init runs/demo/encoder.safetensors',
    'vasomim finetune --task vessel-seg --data data/samples/fercer-xca80 --init scratch --seed 1',
    'vasomim finetune --task segment-seg --data /data/arcade --init vit-b.pth --head-scale 1 --epochs 100',
  ],
};

const runSegmentation = command(spec, async ({ values, positionals }) => {
  noPositionals(positionals);
  const input = mergeConfig(...configLayers(spec, values));
  const resume = values.resume as string | undefined;
  if (!input.data && !resume) throw new UsageError('--data <dataset folder or manifest> is required');
  if (!resume) parseOptions(FinetuneSchema, input, 'options');
  let vbar: Progress | undefined;
  const r = await runLongJob('finetune', 'finishing the current step and writing a checkpoint', (hooks, bar) =>
    finetune(
      input as Parameters<typeof finetune>[0],
      {
        ...hooks,
        onStep: (s, t) =>
          bar(t.steps, 'step').update(
            t.stepsDone,
            t.stepsDone,
            `epoch ${s.epoch} loss ${s.loss.toFixed(4)} (dice ${s.dice.toFixed(3)} ce ${s.ce.toFixed(3)}) ` +
              `${s.imgPerSec.toFixed(1)} img/s`,
          ),
        onValidate: (done, total) => {
          vbar ??= new Progress('  validate', total, 'img');
          vbar.update(done, done);
          if (done === total) {
            vbar.end();
            vbar = undefined;
          }
        },
        onEpoch: (e) =>
          hooks.onLog(
            `epoch ${e.epoch}: loss ${e.loss.toFixed(4)}, val DSC ` +
              `${e.valDsc === null ? '-' : e.valDsc.toFixed(4)}${e.best ? ' (best)' : ''}, ${e.seconds.toFixed(0)} s`,
          ),
      },
      resume,
    ),
  );
  if (r.status !== 'completed') {
    reportStop('finetune', `at step ${r.steps}`, r.last, r.run);
    if (r.status === 'interrupted') return 130;
  }
  process.stderr.write(
    `done: ${r.steps} steps, ${r.epochs} epochs; best epoch ${r.bestEpoch} (val DSC ` +
      `${r.bestValDsc === null ? '-' : r.bestValDsc.toFixed(4)})\nrun folder: ${resolve(r.run)}\nbest: ${r.best}\n`,
  );
  if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
  return 0;
});

/** `--task stenosis-det` goes to the detector's command (../detection.ts), anything else to segmentation. */
export const run = (argv: string[]) => (isDetectionTask(argv) ? runFinetune(argv) : runSegmentation(argv));

/** The spec of a command line (the detector's for `--task stenosis-det`). */
export const specFor = (argv: string[]) => (isDetectionTask(argv) ? finetuneSpec : spec);
