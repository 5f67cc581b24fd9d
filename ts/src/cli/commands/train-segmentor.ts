// `vasomim train-segmentor`: the frozen vessel segmentor (UNeXt-S) that pre-training uses.
import { resolve } from 'node:path';

import {
  SEGMENTOR_PRESET_VALUES,
  SEGMENTOR_PRESETS,
  SegmentorRunSchema,
  trainSegmentor,
} from '../../train/segmentor.js';
import { command, noPositionals, type CommandSpec } from '../args.js';
import { presetSummary, reportStop, runLongJob } from '../long-job.js';
import { configLayers, schemaFlags } from '../schema-flags.js';

export const spec: CommandSpec = {
  name: 'train-segmentor',
  summary: 'Train the UNeXt-S vessel segmentor on (angiogram, vessel map) pairs; resumable.',
  usage: 'vasomim train-segmentor [--data <dataset>] [--preset demo|paper] [--config <file.json>] [options]',
  description:
    'The recipe of METHOD.md §4: paired RandomResizedCrop + flip of image and vessel map, loss\n' +
    '0.5·BCE + 0.5·(1 − soft Dice), Adam, poly decay lr·(1 − epoch/E)^0.9. The dataset needs vessel\n' +
    'maps (`vasomim vessels` writes them); without --data the bundled angiograms are used with maps\n' +
    'computed into the run folder. Writes runs/<name>/{config.json, metrics.jsonl, checkpoints/,\n' +
    'samples/predictions.png, segmentor.safetensors}; pass segmentor.safetensors to\n' +
    '`vasomim pretrain --segmentor`. Ctrl-C saves a checkpoint (exit 130); --resume continues.\n' +
    `Presets: ${SEGMENTOR_PRESETS.map((p) => `${p} (${presetSummary(SEGMENTOR_PRESET_VALUES[p])})`).join(', ')}.`,
  options: [
    { name: 'config', short: 'c', type: 'string', arg: '<file.json>', help: 'JSON config (flags override it)' },
    { name: 'resume', type: 'string', arg: '<run>', help: 'continue a run folder from its last checkpoint' },
  ],
  flags: schemaFlags(SegmentorRunSchema, {
    short: { data: 'd', batchSize: 'b', workers: 'j' },
    presets: SEGMENTOR_PRESET_VALUES,
  }),
  flagsTitle: 'run config (the preset, then --config, then these flags):',
  examples: ['vasomim train-segmentor', 'vasomim train-segmentor --preset paper --data /data/XA-170K --name unext'],
};

export const run = command(spec, async ({ values, positionals }) => {
  noPositionals(positionals);
  const r = await runLongJob('train-segmentor', 'writing a checkpoint after this step', (hooks, bar) =>
    trainSegmentor(configLayers(spec, values), {
      ...hooks,
      resume: values.resume as string | undefined,
      onStep: (s, t) =>
        bar(t.images, 'img').update(
          t.done,
          t.here,
          `epoch ${s.epoch} loss ${s.loss.toFixed(4)} dice ${s.dice.toFixed(3)}`,
        ),
    }),
  );
  if (r.status === 'interrupted') {
    reportStop('train-segmentor', `in epoch ${r.epoch}`, r.checkpoint, r.run);
    return 130;
  }
  process.stdout.write(`done: ${r.epoch} epochs\nrun folder: ${resolve(r.run)}\nsegmentor: ${r.segmentor}\n`);
  return 0;
});
