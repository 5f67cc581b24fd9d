// `vasomim report <folder> [--compare <folder>…] [--out report.html]`: one self-contained HTML
// page (charts, pictures, config) of a pre-training, segmentor or fine-tuning run, or of an
// evaluation folder; with --compare, several folders of one kind on the same axes.
import { resolve } from 'node:path';

import { writeReport } from '../../report/index.js';
import { command, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'report',
  summary: 'One self-contained HTML page of a run or evaluation folder (charts, pictures, config).',
  usage: 'vasomim report <folder> [--compare <folder> [<folder>...]] [--out <report.html>]',
  description:
    'Reads a run folder of pretrain, train-segmentor or finetune (config.json, metrics.jsonl,\n' +
    'samples/) or an evaluation folder (summary.json, per-image.csv, contact-sheet.png) and writes\n' +
    'one HTML file with everything inlined (charts drawn with uPlot, pictures as data URIs; no\n' +
    'network access). Pre-training: loss terms, lr, gradient norm and img/s per step and per epoch,\n' +
    'the vessel share of masked patches against the schedule, every sample grid, the masking-\n' +
    'frequency heat map, the config and versions. With --compare, the folders (all of one kind)\n' +
    'share every chart. `pretrain` and `finetune` also write <run>/report.html themselves.',
  options: [
    {
      name: 'out',
      short: 'o',
      type: 'string',
      arg: '<file.html>',
      help: 'output file (default: <folder>/report.html)',
    },
    {
      name: 'compare',
      type: 'string',
      arg: '<folder>',
      help: 'another folder of the same kind on the same axes (more may follow as arguments)',
    },
  ],
  examples: [
    'vasomim report runs/20261128-101500',
    'vasomim report runs/mae --compare runs/vasomim --out mae-vs-vasomim.html',
    'vasomim report runs/finetune/vasomim-init --compare runs/finetune/scratch',
  ],
};

export const run = command(spec, async ({ values, positionals }) => {
  const compare = values.compare as string | undefined;
  if (positionals.length === 0) throw new UsageError('expected a run or evaluation folder');
  if (positionals.length > 1 && compare === undefined)
    throw new UsageError(`expected one folder, got ${positionals.length} (several: --compare <folder>...)`);
  const folders = compare === undefined ? positionals : [positionals[0]!, compare, ...positionals.slice(1)];
  const out = values.out as string | undefined;
  if (out !== undefined && !/\.html?$/i.test(out)) throw new UsageError(`--out ${out}: must end in .html`);
  const path = writeReport(folders, out);
  process.stdout.write(`wrote ${resolve(path)}\n`);
  return 0;
});
