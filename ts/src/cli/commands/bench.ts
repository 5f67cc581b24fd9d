// `vasomim bench loader [root]`: loader throughput (512² PNG + map -> 224² augmented batches).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { benchLoader, prepareBenchData } from '../../data/bench.js';
import { LoaderSchema, type AugmentInput } from '../../config/data.js';
import { command, num, subcommand, UsageError, type CommandSpec } from '../args.js';
import { flagInput, schemaFlags } from '../schema-flags.js';

export const spec: CommandSpec = {
  name: 'bench',
  summary: 'Benchmarks. `bench loader [root]`: images/s of the data loader.',
  usage: 'vasomim bench loader [root] [options]',
  description:
    'Times --batches batches (after one warm-up batch) of RandomResizedCrop + flip + normalise with\n' +
    'vessel maps. Without <root>, uses the bundled 512² angiograms with their vessel maps (made in a\n' +
    'temporary folder). The last stdout line is JSON: {"ours": images/s, ...}; scripts/bench/loader\n' +
    'runs the torchvision/PIL peer on the same files and adds "peer" and "ratio".',
  options: [
    { name: 'workers', short: 'w', type: 'string', arg: '<n>', help: 'worker threads', default: '2' },
    { name: 'batches', short: 'n', type: 'string', arg: '<n>', help: 'batches timed', default: '20' },
    {
      name: 'prepare',
      type: 'string',
      arg: '<dir>',
      help: 'only write the bundled benchmark dataset to <dir> and exit',
    },
  ],
  // The loader fields a benchmark varies; the rest keep the loader's defaults.
  flags: schemaFlags(LoaderSchema, {
    omit: [
      'seed',
      'shuffle',
      'dropLast',
      'rank',
      'world',
      'workers',
      'prefetch',
      'maps',
      'verify',
      'minSide',
      'dataset',
      'augment.randomCrop',
      'augment.scale',
      'augment.ratio',
      'augment.hflip',
      'augment.mean',
      'augment.std',
    ],
    short: { batchSize: 'b' },
  }),
  flagsTitle: 'loader options:',
  examples: ['vasomim bench loader --workers 2', 'vasomim bench loader /data/XA-170K -w 16 -b 256'],
};

export const run = command(spec, async ({ values, positionals }) => {
  subcommand(positionals, 'benchmark', 'loader');
  const [, root, ...rest] = positionals;
  if (rest.length) throw new UsageError('expected at most one dataset root');
  if (typeof values.prepare === 'string') {
    await prepareBenchData(values.prepare);
    process.stderr.write(`benchmark dataset in ${values.prepare}\n`);
    return 0;
  }
  const tmp = root === undefined ? mkdtempSync(join(tmpdir(), 'vasomim-bench-')) : undefined;
  try {
    const dir = root ?? join(await prepareBenchData(tmp!), 'angio');
    const workers = num(values, 'workers') ?? 2;
    const loader = flagInput(spec.flags!, values) as { batchSize?: number; augment?: AugmentInput };
    const r = await benchLoader(dir, {
      workers,
      batchSize: loader.batchSize ?? 64,
      batches: num(values, 'batches') ?? 20,
      augment: loader.augment ?? {},
    });
    process.stderr.write(
      `loader: ${r.imagesPerSecond.toFixed(1)} img/s (${r.images} images in ${r.seconds.toFixed(2)} s, ${r.workers} ` +
        `worker(s), batch ${r.batchSize}, ${r.size}², ${r.distinctImages} distinct files)\n`,
    );
    process.stdout.write(JSON.stringify({ ours: r.imagesPerSecond, ...r }) + '\n');
    return 0;
  } finally {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
});
