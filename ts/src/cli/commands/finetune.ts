// `vasomim finetune --task vessel-seg|segment-seg|stenosis-seg --data <dataset> --init <ckpt>|scratch`:
// the segmentation ViT trained on a dataset's train split, best-validation checkpoint kept.
import { resolve } from 'node:path';

import { ConfigError, formatZodError } from '../../config/vessels.js';
import { FinetuneSchema } from '../../config/finetune.js';
import { finetune } from '../../train/finetune.js';
import { defined, helpText, num, numList, parseCommand, readConfigFile, UsageError, type CommandSpec } from '../args.js';
import { onInterrupt } from '../interrupt.js';
import { Progress } from '../progress.js';

export const spec: CommandSpec = {
  name: 'finetune',
  summary: 'Fine-tune the segmentation ViT (pre-trained encoder + U-Net adapter head) on a dataset\'s train split.',
  usage: 'vasomim finetune --task <task> --data <dataset> --init <checkpoint|scratch> [options]',
  description:
    'Tasks: vessel-seg (binary: Dice + BCE), stenosis-seg (binary), segment-seg (K classes: Dice + CE).\n' +
    'The encoder comes from --init (encoder.safetensors of `vasomim pretrain`, one of its checkpoints, an MAE\n' +
    '.pth or a timm safetensors; missing / unused tensors are reported) or is trained from scratch. AdamW with\n' +
    'layer-wise LR decay (lr · decay^(depth+1-layer)), no weight decay on biases / norms / cls token,\n' +
    'drop-path, warm-up + cosine per iteration. Augmentation: RandomResizedCrop (--scale) + horizontal flip,\n' +
    'the masks cropped and flipped with their image.\n\n' +
    'Validation: the dataset\'s val split, or --val-count training images (evenly spaced in name order) held\n' +
    'out; the test split is never read. After every epoch: mean per-image DSC at the threshold (argmax for\n' +
    'classes) at the image size, checkpoints/last.safetensors, and checkpoints/best.safetensors when it\n' +
    'improves. Writes <runs>/<name>/{config.json, metrics.jsonl, masks/, checkpoints/}.\n' +
    'Exit 0 done, 2 bad input.',
  options: [
    { name: 'task', type: 'string', arg: '<task>', help: 'vessel-seg | segment-seg | stenosis-seg', default: 'vessel-seg' },
    { name: 'data', short: 'd', type: 'string', arg: '<path>', help: 'dataset folder or manifest (layouts: vasomim evaluate --help)' },
    { name: 'init', short: 'i', type: 'string', arg: '<ckpt>', help: 'pre-trained checkpoint, or scratch', default: 'scratch' },
    { name: 'init-preset', type: 'string', arg: '<name>', help: 'preset of a bare --init file whose shapes match none' },
    { name: 'model', type: 'string', arg: '<preset>', help: 'encoder preset when training from scratch', default: 'tiny' },
    { name: 'img-size', type: 'string', arg: '<px>', help: 'input side (multiple of 16)', default: '224' },
    { name: 'in-chans', type: 'string', arg: '<1|3>', help: 'input channels', default: 'the encoder\'s; scratch 3' },
    { name: 'head-scale', type: 'string', arg: '<x>', help: 'U-Net head widths x (1 = the paper\'s 512..32)', default: '0.25' },
    { name: 'epochs', short: 'e', type: 'string', arg: '<n>', help: 'epochs', default: '40' },
    { name: 'warmup-epochs', type: 'string', arg: '<n>', help: 'linear warm-up epochs', default: '2' },
    { name: 'lr', type: 'string', arg: '<lr>', help: 'peak learning rate', default: '2e-3, or blr·batch/256' },
    { name: 'blr', type: 'string', arg: '<blr>', help: 'base learning rate (lr = blr · batch / 256)' },
    { name: 'min-lr', type: 'string', arg: '<lr>', help: 'final learning rate of the cosine', default: '1e-6' },
    { name: 'layer-decay', type: 'string', arg: '<d>', help: 'layer-wise LR decay', default: '0.75' },
    { name: 'drop-path', type: 'string', arg: '<p>', help: 'drop-path rate of the last block', default: '0.1' },
    { name: 'weight-decay', type: 'string', arg: '<wd>', help: 'AdamW weight decay', default: '0.05' },
    { name: 'batch-size', short: 'b', type: 'string', arg: '<n>', help: 'images per step', default: '4' },
    { name: 'scale', type: 'string', arg: '<lo,hi>', help: 'RandomResizedCrop area range', default: '0.5,1' },
    { name: 'hflip', type: 'string', arg: '<p>', help: 'horizontal flip probability', default: '0.5' },
    { name: 'val-count', type: 'string', arg: '<n>', help: 'training images held out for validation when there is no val split', default: '8' },
    { name: 'threshold', short: 't', type: 'string', arg: '<t>', help: 'foreground threshold (binary)', default: '0.5' },
    { name: 'format', type: 'string', arg: '<f>', help: 'auto | paired | arcade | manifest', default: 'auto' },
    { name: 'classes', type: 'string', arg: '<n>', help: 'expected number of foreground classes' },
    { name: 'masks', type: 'string', arg: '<m>', help: 'mask files: binary or labels (value = class)', default: 'binary' },
    { name: 'mask-threshold', type: 'string', arg: '<v>', help: 'grey level from which a binary mask pixel is foreground', default: '128' },
    { name: 'seed', short: 's', type: 'string', arg: '<n>', help: 'initialisation of the head (and scratch encoder), batches, drop-path', default: '0' },
    { name: 'runs', type: 'string', arg: '<dir>', help: 'parent folder of run folders', default: 'runs/finetune' },
    { name: 'name', type: 'string', arg: '<name>', help: 'run folder name', default: 'UTC timestamp' },
    { name: 'workers', type: 'string', arg: '<n>', help: 'loader threads', default: 'cores, at most 8' },
    { name: 'max-steps', type: 'string', arg: '<n>', help: 'stop after n optimizer steps in total (smoke tests)' },
    { name: 'resume', type: 'string', arg: '<run>', help: 'continue a run folder from checkpoints/last.safetensors (Ctrl-C writes it)' },
    { name: 'config', short: 'c', type: 'string', arg: '<file.json>', help: 'any config field as JSON; flags override' },
    { name: 'json', type: 'boolean', help: 'print the result as one JSON line on stdout' },
  ],
  examples: [
    'vasomim finetune --task vessel-seg --data data/samples/fercer-xca80 --init runs/demo/encoder.safetensors',
    'vasomim finetune --task vessel-seg --data data/samples/fercer-xca80 --init scratch --seed 1',
    'vasomim finetune --task segment-seg --data /data/arcade --init vit-b.pth --head-scale 1 --epochs 100',
  ],
};

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand(spec, argv);
  if (values.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])} (the dataset goes after --data)`);
  const file = values.config ? readConfigFile(values.config as string) : {};
  const scale = numList(values, 'scale');
  if (scale && scale.length !== 2) throw new UsageError('--scale: expected two numbers lo,hi');
  const dataOptions = defined({
    format: values.format as string | undefined,
    classes: num(values, 'classes'),
    masks: values.masks as string | undefined,
    maskThreshold: num(values, 'mask-threshold'),
  });
  const flags = defined({
    task: values.task as string | undefined,
    data: values.data as string | undefined,
    init: values.init as string | undefined,
    initPreset: values['init-preset'] as string | undefined,
    model: values.model ? { ...((file.model as object) ?? {}), preset: values.model } : undefined,
    imgSize: num(values, 'img-size'),
    inChans: num(values, 'in-chans'),
    headScale: num(values, 'head-scale'),
    epochs: num(values, 'epochs'),
    warmupEpochs: num(values, 'warmup-epochs'),
    lr: num(values, 'lr'),
    blr: num(values, 'blr'),
    minLr: num(values, 'min-lr'),
    layerDecay: num(values, 'layer-decay'),
    dropPath: num(values, 'drop-path'),
    weightDecay: num(values, 'weight-decay'),
    batchSize: num(values, 'batch-size'),
    scale,
    hflip: num(values, 'hflip'),
    valCount: num(values, 'val-count'),
    threshold: num(values, 'threshold'),
    seed: num(values, 'seed'),
    runs: values.runs as string | undefined,
    name: values.name as string | undefined,
    workers: num(values, 'workers'),
    maxSteps: num(values, 'max-steps'),
  });
  const input = { ...file, ...flags, ...(Object.keys(dataOptions).length ? { dataOptions: { ...((file.dataOptions as object) ?? {}), ...dataOptions } } : {}) };
  const resume = values.resume as string | undefined;
  if (!input.data && !resume) throw new UsageError('--data <dataset folder or manifest> is required');
  if (!resume) {
    const parsed = FinetuneSchema.safeParse(input);
    if (!parsed.success) throw new ConfigError(`invalid options:\n${formatZodError(parsed.error)}`);
  }
  const interrupt = onInterrupt('finishing the current step and writing a checkpoint');

  let bar: Progress | undefined;
  let vbar: Progress | undefined;
  const log = (line: string) => (bar ? bar.log(line) : process.stderr.write(line + '\n'));
  try {
    const r = await finetune(
      input as Parameters<typeof finetune>[0],
      {
      shouldStop: interrupt.stopRequested,
      onLog: log,
      onStep: (s, t) => {
        bar ??= new Progress('finetune', t.steps, 'step');
        bar.update(t.stepsDone, t.stepsDone, `epoch ${s.epoch} loss ${s.loss.toFixed(4)} (dice ${s.dice.toFixed(3)} ce ${s.ce.toFixed(3)}) ${s.imgPerSec.toFixed(1)} img/s`);
      },
      onValidate: (done, total) => {
        vbar ??= new Progress('  validate', total, 'img');
        vbar.update(done, done);
        if (done === total) {
          vbar.end();
          vbar = undefined;
        }
      },
      onEpoch: (e) =>
        log(`epoch ${e.epoch}: loss ${e.loss.toFixed(4)}, val DSC ${e.valDsc === null ? '-' : e.valDsc.toFixed(4)}${e.best ? ' (best)' : ''}, ${e.seconds.toFixed(0)} s`),
      },
      resume,
    );
    bar?.end();
    bar = undefined;
    if (r.status !== 'completed') {
      process.stderr.write(`stopped at step ${r.steps}; checkpoint ${r.last}\nresume with: vasomim finetune --resume ${r.run}\n`);
      if (r.status === 'interrupted') return 130;
    }
    process.stderr.write(
      `done: ${r.steps} steps, ${r.epochs} epochs; best epoch ${r.bestEpoch} (val DSC ${r.bestValDsc === null ? '-' : r.bestValDsc.toFixed(4)})\nrun folder: ${resolve(r.run)}\nbest: ${r.best}\n`,
    );
    if (values.json) process.stdout.write(JSON.stringify(r) + '\n');
    return 0;
  } finally {
    bar?.end();
    interrupt.dispose();
  }
}
