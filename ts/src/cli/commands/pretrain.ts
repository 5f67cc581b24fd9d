// `vasomim pretrain`: VasoMIM pre-training. With no dataset, the `demo` preset on the bundled
// angiograms; `--preset vasomim-vit-b --data <XA-170K>` is the paper's recipe.
import { resolve } from 'node:path';

import { PRESETS, RUN_PRESETS } from '../../config/pretrain.js';
import { pretrain, type StepRecord } from '../../train/pretrain.js';
import { defined, helpText, num, parseCommand, readConfigFile, UsageError, type CommandSpec } from '../args.js';
import { onInterrupt } from '../interrupt.js';
import { Progress } from '../progress.js';

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
    `Presets: ${RUN_PRESETS.map((p) => `${p} (${PRESETS[p].epochs} epochs, batch ${PRESETS[p].batchSize})`).join(', ')}.`,
  options: [
    { name: 'data', short: 'd', type: 'string', arg: '<path>', help: 'dataset: tree with <source>_frangi/ maps, folder, or .csv/.jsonl manifest (default: bundled samples)' },
    { name: 'preset', type: 'string', arg: '<name>', help: `run preset: ${RUN_PRESETS.join(' | ')}`, default: 'demo' },
    { name: 'config', short: 'c', type: 'string', arg: '<file.json>', help: 'JSON config (any field of the run config; flags override it)' },
    { name: 'resume', type: 'string', arg: '<run>', help: 'continue a run folder from its last checkpoint' },
    { name: 'runs', type: 'string', arg: '<dir>', help: 'folder for run folders', default: 'runs' },
    { name: 'name', type: 'string', arg: '<name>', help: 'run folder name (default: UTC timestamp)' },
    { name: 'model', type: 'string', arg: '<preset>', help: 'ViT size: micro | tiny | small | base | large | huge' },
    { name: 'img-size', type: 'string', arg: '<px>', help: 'input side (divisible by the patch size)' },
    { name: 'in-chans', type: 'string', arg: '<1|3>', help: '3 = grey replicated (paper), 1 = grey-native' },
    { name: 'epochs', type: 'string', arg: '<n>', help: 'epochs' },
    { name: 'warmup-epochs', type: 'string', arg: '<n>', help: 'linear warm-up epochs (then cosine)' },
    { name: 'batch-size', short: 'b', type: 'string', arg: '<n>', help: 'effective batch size' },
    { name: 'max-micro-batch', type: 'string', arg: '<n>', help: 'largest micro-batch per forward/backward (gradient accumulation above it)' },
    { name: 'blr', type: 'string', arg: '<x>', help: 'base lr; lr = blr * batch / 256', default: '1.5e-4' },
    { name: 'lr', type: 'string', arg: '<x>', help: 'absolute peak lr (overrides blr)' },
    { name: 'min-lr', type: 'string', arg: '<x>', help: 'lr at the end of the cosine', default: '0' },
    { name: 'weight-decay', type: 'string', arg: '<x>', help: 'AdamW weight decay (not on biases and norms)', default: '0.05' },
    { name: 'beta1', type: 'string', arg: '<x>', help: 'AdamW beta1', default: '0.9' },
    { name: 'beta2', type: 'string', arg: '<x>', help: 'AdamW beta2', default: '0.95' },
    { name: 'clip-grad', type: 'string', arg: '<x>', help: 'clip the global gradient norm (default: none)' },
    { name: 'mask-ratio', type: 'string', arg: '<x>', help: 'masked share of patches', default: '0.5' },
    { name: 'masking', type: 'string', arg: '<policy>', help: 'vessel-guided | random (MAE)', default: 'vessel-guided' },
    { name: 'alpha0', type: 'string', arg: '<x>', help: 'guided share of masked patches at the start of the schedule', default: '0' },
    { name: 'alpha-t', type: 'string', arg: '<x>', help: 'guided share of masked patches in the last epoch', default: '0.5' },
    { name: 'eta', type: 'string', arg: '<x>', help: 'G = eta*B + (1-eta)*P (1: offline maps only, v1)', default: '0.5' },
    { name: 'cons-weight', type: 'string', arg: '<x>', help: 'weight of L_cons (0 = off)', default: '1' },
    { name: 'segmentor', type: 'string', arg: '<file>', help: 'frozen UNeXt-S checkpoint (vasomim train-segmentor); "bundled": the demo one; "none"' },
    { name: 'norm-pix-loss', type: 'string', arg: '<true|false>', help: 'per-patch normalised targets', default: 'true' },
    { name: 'seed', type: 'string', arg: '<n>', help: 'seed of initialisation, batches and masks', default: '0' },
    { name: 'workers', short: 'j', type: 'string', arg: '<n>', help: 'loader threads (default: cores, at most 8)' },
    { name: 'checkpoint-every', type: 'string', arg: '<n>', help: 'checkpoint every n epochs (and at the end)' },
    { name: 'sample-every', type: 'string', arg: '<n>', help: 'sample grid every n epochs (and at the end)' },
    { name: 'sample-images', type: 'string', arg: '<n>', help: 'images per sample grid (<= 16)', default: '4' },
    { name: 'device', type: 'string', arg: '<cpu|cuda|cuda:N>', help: 'where the model runs (cuda needs a CUDA build, see docs/CUDA.md)', default: 'cpu' },
    { name: 'max-steps', type: 'string', arg: '<n>', help: 'stop (with a checkpoint) after n steps in this invocation' },
  ],
  examples: [
    'vasomim pretrain                                   # the demo on the bundled angiograms',
    'vasomim pretrain --preset vasomim-vit-b --data /data/XA-170K --segmentor unext.safetensors',
    'vasomim pretrain --resume runs/20261128-101500',
    'vasomim pretrain --data xa --masking random --eta 1 --cons-weight 0   # MAE baseline (ablation)',
  ],
};

function bool(values: Record<string, unknown>, name: string): boolean | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  if (v === 'true' || v === 'false') return v === 'true';
  throw new UsageError(`--${name}: ${JSON.stringify(v)} must be true or false`);
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand(spec, argv);
  if (values.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])} (the dataset goes after --data)`);
  const file = values.config ? readConfigFile(values.config as string) : {};
  const model = defined({ preset: values.model as string | undefined, imgSize: num(values, 'img-size'), inChans: num(values, 'in-chans') });
  const flags = defined({
    preset: values.preset as string | undefined,
    data: values.data as string | undefined,
    runs: values.runs as string | undefined,
    name: values.name as string | undefined,
    epochs: num(values, 'epochs'),
    warmupEpochs: num(values, 'warmup-epochs'),
    batchSize: num(values, 'batch-size'),
    maxMicroBatch: num(values, 'max-micro-batch'),
    blr: num(values, 'blr'),
    lr: num(values, 'lr'),
    minLr: num(values, 'min-lr'),
    weightDecay: num(values, 'weight-decay'),
    beta1: num(values, 'beta1'),
    beta2: num(values, 'beta2'),
    clipGrad: num(values, 'clip-grad'),
    maskRatio: num(values, 'mask-ratio'),
    masking: values.masking as string | undefined,
    alpha0: num(values, 'alpha0'),
    alphaT: num(values, 'alpha-t'),
    eta: num(values, 'eta'),
    consWeight: num(values, 'cons-weight'),
    segmentor: values.segmentor as string | undefined,
    normPixLoss: bool(values, 'norm-pix-loss'),
    seed: num(values, 'seed'),
    workers: num(values, 'workers'),
    checkpointEvery: num(values, 'checkpoint-every'),
    sampleEvery: num(values, 'sample-every'),
    sampleImages: num(values, 'sample-images'),
    maxSteps: num(values, 'max-steps'),
    device: values.device as string | undefined,
    ...(Object.keys(model).length ? { model } : {}),
  });

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
      process.stderr.write(`stopped at step ${r.step}; checkpoint ${r.checkpoint}\nresume with: vasomim pretrain --resume ${r.run}\n`);
      return 130;
    }
    if (r.status === 'stopped') {
      process.stdout.write(`stopped after --max-steps at step ${r.step}; resume with: vasomim pretrain --resume ${r.run}\nrun folder: ${where}\n`);
      return 0;
    }
    process.stdout.write(`done: ${r.step} steps, ${r.epoch} epochs\nrun folder: ${where}\nencoder (timm): ${r.encoder}\n`);
    return 0;
  } finally {
    bar?.end();
    interrupt.dispose();
  }
}
