#!/usr/bin/env node
// The `vasomim` command: one binary, one subcommand per job. Exit codes: 0 success, 1 the job
// ran but failed (partly), 2 bad command line or input, 130 interrupted.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { ConfigError } from '../config/vessels.js';
import { InputFileError } from '../errors.js';
import { parseCommand, UsageError, type CommandSpec } from './args.js';
import { withFlagNames } from './schema-flags.js';

/** What a command module exports: its `run` (argv to exit code) and the spec of its command line
 * (`specFor`: the spec a given command line runs under, for commands with a second face such as
 * `--task stenosis-det`). */
interface CommandModule {
  run: (argv: string[]) => Promise<number>;
  spec: CommandSpec;
  specFor?: (argv: string[]) => CommandSpec;
}

/** The commands, in `--help` order, with their summaries; command `x` is ./commands/x.ts. */
const COMMANDS: Record<string, string> = {
  vessels: 'vessel maps for a dataset tree (XA-170K <source>_frangi/ layout)',
  vesselness: 'raw Sato/Frangi response of one image (.npy or .png)',
  'train-segmentor': 'train the UNeXt-S vessel segmentor (guidance and L_cons of pre-training)',
  pretrain: 'VasoMIM pre-training (no dataset: a demo on the bundled angiograms); resumable',
  export: "export a checkpoint's encoder for timm (safetensors)",
  embed: 'encoder features (cls, mean patch token) of images as .npy',
  finetune: 'fine-tune the segmentation ViT (pre-trained encoder + U-Net head) on a dataset',
  evaluate: 'segmentation metrics of a fine-tuned model or the vesselness baseline on a test split',
  predict: 'masks and overlays of images from a fine-tuned model',
  report: 'one HTML page (charts, pictures, config) of a run or evaluation folder; --compare',
  'coco-eval': 'COCO bbox metrics of a detection results file (pycocotools semantics)',
  frames: 'DICOM cine runs (or any images) to PNG frames with a manifest',
  data: 'dataset tools: `data check` counts, missing maps, unreadable files, sizes',
  bench: 'benchmarks: `bench loader` images/s of the data loader',
  doctor: 'what this installation can run on: build features, CUDA driver and devices',
};

function usage(): string {
  const names = Object.keys(COMMANDS);
  const w = Math.max(...names.map((n) => n.length)) + 2;
  return [
    'usage: vasomim <command> [options]',
    '',
    'VasoMIM for X-ray coronary angiograms: vessel maps, pre-training, fine-tuning, evaluation.',
    '',
    'commands:',
    ...names.map((n) => `  ${n.padEnd(w)}${COMMANDS[n]!}`),
    '',
    'Run `vasomim <command> --help` for its options. `vasomim --version` prints the version.',
    '',
  ].join('\n');
}

/** The flags of a command line, or none when it does not parse (that error is the one reported). */
function givenFlags(spec: CommandSpec, argv: string[]): Record<string, unknown> {
  try {
    return parseCommand(spec, argv).values;
  } catch {
    return {};
  }
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-V') {
    const { packageRoot } = await import('../native.js');
    process.stdout.write(JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')).version + '\n');
    return 0;
  }
  if (!Object.hasOwn(COMMANDS, name)) {
    process.stderr.write(`vasomim: unknown command ${JSON.stringify(name)}\n\n${usage()}`);
    return 2;
  }
  const mod = (await import(`./commands/${name}.js`)) as CommandModule;
  try {
    return await mod.run(rest);
  } catch (e) {
    if (
      e instanceof UsageError ||
      e instanceof ConfigError ||
      e instanceof InputFileError ||
      (e as { name?: string }).name === 'DatasetError'
    ) {
      const spec = mod.specFor?.(rest) ?? mod.spec;
      const message = withFlagNames((e as Error).message, spec.flags ?? [], givenFlags(spec, rest));
      process.stderr.write(`vasomim ${name}: ${message}\nusage: ${spec.usage} (see --help)\n`);
      return 2;
    }
    process.stderr.write(`vasomim ${name}: ${(e as Error).message}\n`);
    return (e as { code?: string }).code === 'InvalidArg' ? 2 : 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`vasomim: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
