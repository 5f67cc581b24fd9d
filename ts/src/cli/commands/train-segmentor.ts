// `vasomim train-segmentor`: the frozen vessel segmentor (UNeXt-S) that pre-training uses.
import { resolve } from 'node:path';

import { SEGMENTOR_PRESET_VALUES, SEGMENTOR_PRESETS, trainSegmentor } from '../../train/segmentor.js';
import { defined, helpText, num, parseCommand, readConfigFile, UsageError, type CommandSpec } from '../args.js';
import { onInterrupt } from '../interrupt.js';
import { Progress } from '../progress.js';

export const spec: CommandSpec = {
  name: 'train-segmentor',
  summary: 'Train the UNeXt-S vessel segmentor on (angiogram, vessel map) pairs; resumable.',
  usage: 'vasomim train-segmentor [--data <dataset>] [--preset demo|paper] [--config <file.json>] [options]',
  description:
    'The recipe of VASOMIM.md §4: paired RandomResizedCrop + flip of image and vessel map, loss\n' +
    '0.5·BCE + 0.5·(1 − soft Dice), Adam, poly decay lr·(1 − epoch/E)^0.9. The dataset needs vessel\n' +
    'maps (`vasomim vessels` writes them); without --data the bundled angiograms are used with maps\n' +
    'computed into the run folder. Writes runs/<name>/{config.json, metrics.jsonl, checkpoints/,\n' +
    'samples/predictions.png, segmentor.safetensors}; pass segmentor.safetensors to\n' +
    '`vasomim pretrain --segmentor`. Ctrl-C saves a checkpoint (exit 130); --resume continues.\n' +
    `Presets: ${SEGMENTOR_PRESETS.map((p) => `${p} (${SEGMENTOR_PRESET_VALUES[p].epochs} epochs, batch ${SEGMENTOR_PRESET_VALUES[p].batchSize})`).join(', ')}.`,
  options: [
    { name: 'data', short: 'd', type: 'string', arg: '<path>', help: 'dataset with vessel maps (default: bundled samples)' },
    { name: 'preset', type: 'string', arg: '<name>', help: 'demo | paper', default: 'demo' },
    { name: 'config', short: 'c', type: 'string', arg: '<file.json>', help: 'JSON config (flags override it)' },
    { name: 'resume', type: 'string', arg: '<run>', help: 'continue a run folder from its last checkpoint' },
    { name: 'runs', type: 'string', arg: '<dir>', help: 'folder for run folders', default: 'runs' },
    { name: 'name', type: 'string', arg: '<name>', help: 'run folder name (default: UTC timestamp)' },
    { name: 'epochs', type: 'string', arg: '<n>', help: 'epochs' },
    { name: 'batch-size', short: 'b', type: 'string', arg: '<n>', help: 'batch size' },
    { name: 'lr', type: 'string', arg: '<x>', help: 'Adam learning rate at epoch 0', default: '1e-3' },
    { name: 'img-size', type: 'string', arg: '<px>', help: 'crop size (divisible by 32)', default: '224' },
    { name: 'in-chans', type: 'string', arg: '<1|3>', help: 'input channels (3 = grey replicated, as pre-training)', default: '3' },
    { name: 'seed', type: 'string', arg: '<n>', help: 'seed of initialisation and batches', default: '0' },
    { name: 'workers', short: 'j', type: 'string', arg: '<n>', help: 'loader threads' },
    { name: 'checkpoint-every', type: 'string', arg: '<n>', help: 'keep a numbered checkpoint every n epochs' },
  ],
  examples: ['vasomim train-segmentor', 'vasomim train-segmentor --preset paper --data /data/XA-170K --name unext'],
};

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand(spec, argv);
  if (values.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])} (the dataset goes after --data)`);
  const file = values.config ? readConfigFile(values.config as string) : {};
  const flags = defined({
    preset: values.preset as string | undefined,
    data: values.data as string | undefined,
    runs: values.runs as string | undefined,
    name: values.name as string | undefined,
    epochs: num(values, 'epochs'),
    batchSize: num(values, 'batch-size'),
    lr: num(values, 'lr'),
    imgSize: num(values, 'img-size'),
    inChans: num(values, 'in-chans'),
    seed: num(values, 'seed'),
    workers: num(values, 'workers'),
    checkpointEvery: num(values, 'checkpoint-every'),
  });
  const interrupt = onInterrupt('writing a checkpoint after this step');
  let bar: Progress | undefined;
  try {
    const r = await trainSegmentor([file, flags], {
      resume: values.resume as string | undefined,
      onLog: (l) => (bar ? bar.log(l) : process.stderr.write(l + '\n')),
      shouldStop: interrupt.stopRequested,
      onStep: (s, t) => {
        bar ??= new Progress('train-segmentor', t.images, 'img');
        bar.update(t.done, t.here, `epoch ${s.epoch} loss ${s.loss.toFixed(4)} dice ${s.dice.toFixed(3)}`);
      },
    });
    bar?.end();
    if (r.status === 'interrupted') {
      process.stderr.write(`stopped in epoch ${r.epoch}; checkpoint ${r.checkpoint}\nresume with: vasomim train-segmentor --resume ${r.run}\n`);
      return 130;
    }
    process.stdout.write(`done: ${r.epoch} epochs\nrun folder: ${resolve(r.run)}\nsegmentor: ${r.segmentor}\n`);
    return 0;
  } finally {
    interrupt.dispose();
  }
}
