// `vasomim export <checkpoint> --format timm --out <file.safetensors>`: the encoder in timm's layout.
import { loadModel } from '../../model/index.js';
import { command, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'export',
  summary: "Export a checkpoint's encoder for timm (safetensors, timm key names).",
  usage: 'vasomim export <checkpoint> --format timm --out <file.safetensors> [options]',
  description:
    'Reads our checkpoints, timm safetensors files and MAE-style PyTorch .pth state dicts. The\n' +
    'output loads with timm.create_model("vit_<size>_patch16_224", num_classes=0) and\n' +
    'load_state_dict(..., strict=True); the decoder and optimizer state are left out.',
  options: [
    {
      name: 'format',
      short: 'f',
      type: 'string',
      arg: '<fmt>',
      help: 'output format; only timm for now',
      default: 'timm',
    },
    { name: 'out', short: 'o', type: 'string', arg: '<file>', help: 'output .safetensors file' },
    {
      name: 'preset',
      type: 'string',
      arg: '<name>',
      help: 'preset of a checkpoint without a config (micro|tiny|small|base|large|huge)',
    },
  ],
  examples: [
    'vasomim export runs/pretrain/checkpoint-799.safetensors --format timm --out vit_base_vasomim.safetensors',
  ],
};

export const run = command(spec, async ({ values, positionals }) => {
  if (positionals.length !== 1) throw new UsageError(`expected exactly one checkpoint, got ${positionals.length}`);
  const format = (values.format as string | undefined) ?? 'timm';
  if (format !== 'timm') throw new UsageError(`--format ${JSON.stringify(format)}: only "timm" is supported`);
  const out = values.out as string | undefined;
  if (!out) throw new UsageError('--out <file.safetensors> is required');
  if (!/\.safetensors$/i.test(out)) throw new UsageError(`--out ${out}: must end in .safetensors`);
  const preset = values.preset as string | undefined;
  const model = await loadModel(positionals[0]!, preset ? { preset } : {});
  await model.exportTimm(out);
  const c = model.config;
  process.stdout.write(
    `wrote ${out} (timm encoder: embed ${c.embedDim}, depth ${c.depth}, heads ${c.numHeads}, patch ${c.patchSize}, ` +
      `${c.imgSize}px, ${c.inChans} channel${c.inChans > 1 ? 's' : ''})\n`,
  );
  return 0;
});
