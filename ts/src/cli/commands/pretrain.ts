// `vasomim pretrain`: VasoMIM pre-training. With no dataset, the `demo` preset on the bundled
// angiograms; `--preset vasomim-vit-b --data <XA-170K>` is the paper's recipe.
import { resolve } from 'node:path';

import { ModelConfigSchema } from '../../config/model.js';
import { PRESETS, PretrainSchema, RUN_PRESETS } from '../../config/pretrain.js';
import { pretrain, type StepRecord } from '../../train/pretrain.js';
import { helpText, parseCommand, readConfigFile, UsageError, type CommandSpec } from '../args.js';
import { onInterrupt } from '../interrupt.js';
import { Progress } from '../progress.js';
import { flagInput, schemaFlags } from '../schema-flags.js';

/** Model fields a config file may set but that get no flag (the presets size the ViT). */
const MODEL_FIELDS_NOT_FLAGS = [
  'patchSize',
  'embedDim',
  'depth',
  'numHeads',
  'decoderEmbedDim',
  'decoderDepth',
  'decoderNumHeads',
  'mlpRatio',
  'normPixLoss',
];

const presetSummary = (p: { epochs?: number; batchSize?: number }) => `${p.epochs} epochs, batch ${p.batchSize}`;

export const spec: CommandSpec = {
  name: 'pretrain',
  summary: 'VasoMIM pre-training of a ViT (vessel-guided masking, consistency loss); resumable.',
  usage: 'vasomim pretrain [--data <dataset>] [--preset demo|vasomim-vit-b] [--config <file.json>] [options]',
  description:
    'Without --data the `demo` preset runs on the angiograms bundled with the package (ViT-Ti, CPU,\n' +
    'a few minutes; vessel maps are computed into the run folder). A run folder holds config.json,\n' +
    'metrics.jsonl (one JSON object per step), checkpoints/ (last.safetensors + every N epochs:\n' +
    'weights with timm names, AdamW moments, loop position), samples/ (input | masked |\n' +
    'reconstruction | + visible | vessel map | guidance grids, mask-frequency.png) and encoder.safetensors\n' +
    '(timm layout) at the end. Values come from the preset, then --config, then flags.\n' +
    'Ctrl-C writes a checkpoint and exits (code 130); --resume continues exactly where it stopped.\n' +
    `Presets: ${RUN_PRESETS.map((p) => `${p} (${presetSummary(PRESETS[p])})`).join(', ')}.`,
  options: [
    {
      name: 'config',
      short: 'c',
      type: 'string',
      arg: '<file.json>',
      help: 'JSON config (any field of the run config; flags override it)',
    },
    { name: 'resume', type: 'string', arg: '<run>', help: 'continue a run folder from its last checkpoint' },
  ],
  flags: schemaFlags(PretrainSchema, {
    nested: { model: ModelConfigSchema },
    omit: ['augment', ...MODEL_FIELDS_NOT_FLAGS.map((k) => `model.${k}`)],
    names: { 'model.preset': 'model' },
    short: { data: 'd', batchSize: 'b', workers: 'j' },
    presets: PRESETS,
  }),
  flagsTitle: 'run config (the preset, then --config, then these flags):',
  examples: [
    'vasomim pretrain                                   # the demo on the bundled angiograms',
    'vasomim pretrain --preset vasomim-vit-b --data /data/XA-170K --segmentor unext.safetensors',
    'vasomim pretrain --resume runs/20261128-101500',
    'vasomim pretrain --data xa --masking random --eta 1 --cons-weight 0   # MAE baseline (ablation)',
  ],
};

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand(spec, argv);
  if (values.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  if (positionals.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])} (the dataset goes after --data)`);
  const file = values.config ? readConfigFile(values.config as string) : {};
  const flags = flagInput(spec.flags!, values);

  const interrupt = onInterrupt('finishing the current step and writing a checkpoint');
  let bar: Progress | undefined;
  const log = (line: string) => (bar ? bar.log(line) : process.stderr.write(line + '\n'));
  try {
    const r = await pretrain([file, flags], {
      resume: values.resume as string | undefined,
      onLog: log,
      shouldStop: interrupt.stopRequested,
      onStep: (s: StepRecord, t) => {
        bar ??= new Progress('pretrain', t.images, 'img');
        const cons = s.lossCons === null ? '' : ` cons ${s.lossCons.toFixed(4)}`;
        const share = s.vesselShare === null ? '' : ` vessel ${(100 * s.vesselShare).toFixed(0)}%`;
        bar.update(t.imagesDone, t.imagesHere, `epoch ${s.epoch} loss ${s.loss.toFixed(4)}${cons}${share}`);
      },
    });
    bar?.end();
    const where = resolve(r.run);
    if (r.status === 'interrupted') {
      process.stderr.write(
        `stopped at step ${r.step}; checkpoint ${r.checkpoint}\nresume with: vasomim pretrain --resume ${r.run}\n`,
      );
      return 130;
    }
    if (r.status === 'stopped') {
      process.stdout.write(
        `stopped after --max-steps at step ${r.step}; resume with: vasomim pretrain --resume ${r.run}\nrun folder: ` +
          `${where}\n`,
      );
      return 0;
    }
    process.stdout.write(
      `done: ${r.step} steps, ${r.epoch} epochs\nrun folder: ${where}\nencoder (timm): ${r.encoder}\n`,
    );
    return 0;
  } finally {
    bar?.end();
    interrupt.dispose();
  }
}
