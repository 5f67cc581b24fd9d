// `vasomim pretrain`: VasoMIM pre-training. With no dataset, the `demo` preset on the bundled
// angiograms; `--preset vasomim-vit-b --data <XA-170K>` is the paper's recipe.
import { resolve } from 'node:path';

import { ARCHITECTURE_FIELDS, ModelConfigSchema } from '../../config/model.js';
import { PRESETS, PretrainSchema, RUN_PRESETS } from '../../config/pretrain.js';
import { pretrain, type StepRecord } from '../../train/pretrain.js';
import { command, noPositionals, type CommandSpec } from '../args.js';
import { presetSummary, reportStop, runLongJob } from '../long-job.js';
import { configLayers, schemaFlags } from '../schema-flags.js';

export const spec: CommandSpec = {
  name: 'pretrain',
  summary: 'VasoMIM pre-training of a ViT (vessel-guided masking, consistency loss); resumable.',
  usage: 'vasomim pretrain [--data <dataset>] [--preset demo|vasomim-vit-b] [--config <file.json>] [options]',
  description:
    'Without --data the `demo` preset runs on the angiograms bundled with the package (ViT-Ti, CPU,\n' +
    'a few minutes; vessel maps are computed into the run folder). A run folder holds config.json,\n' +
    'metrics.jsonl (one JSON object per step), checkpoints/ (last.safetensors + every N epochs:\n' +
    'weights with timm names, AdamW moments, loop position), samples/ (input | masked |\n' +
    'reconstruction | + visible | vessel map | guidance grids; mask-frequency.png heat map + .npy\n' +
    'counts), and at the end encoder.safetensors (timm layout) and report.html (see vasomim report);\n' +
    '--tensorboard adds TensorBoard event files. Values come from the preset, then --config, then flags.\n' +
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
    omit: ['augment', ...ARCHITECTURE_FIELDS.map((k) => `model.${k}`)],
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

export const run = command(spec, async ({ values, positionals }) => {
  noPositionals(positionals);
  const r = await runLongJob('pretrain', 'finishing the current step and writing a checkpoint', (hooks, bar) =>
    pretrain(configLayers(spec, values), {
      ...hooks,
      resume: values.resume as string | undefined,
      onStep: (s: StepRecord, t) => {
        const cons = s.lossCons === null ? '' : ` cons ${s.lossCons.toFixed(4)}`;
        const share = s.vesselShare === null ? '' : ` vessel ${(100 * s.vesselShare).toFixed(0)}%`;
        bar(t.images, 'img').update(
          t.imagesDone,
          t.imagesHere,
          `epoch ${s.epoch} loss ${s.loss.toFixed(4)}${cons}${share}`,
        );
      },
    }),
  );
  const where = resolve(r.run);
  if (r.status === 'interrupted') {
    reportStop('pretrain', `at step ${r.step}`, r.checkpoint, r.run);
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
});
