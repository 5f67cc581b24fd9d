// `vasomim bench loader [root]`: loader throughput (512² PNG + map -> 224² augmented batches).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { benchLoader, prepareBenchData } from '../../data/bench.js';
import { helpText, num, parseCommand, UsageError, type CommandSpec } from '../args.js';

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
    { name: 'batch-size', short: 'b', type: 'string', arg: '<n>', help: 'batch size', default: '64' },
    { name: 'batches', short: 'n', type: 'string', arg: '<n>', help: 'batches timed', default: '20' },
    { name: 'size', type: 'string', arg: '<px>', help: 'output side', default: '224' },
    { name: 'channels', type: 'string', arg: '<1|3>', help: 'output channels', default: '3' },
    { name: 'prepare', type: 'string', arg: '<dir>', help: 'only write the bundled benchmark dataset to <dir> and exit' },
  ],
  examples: ['vasomim bench loader --workers 2', 'vasomim bench loader /data/XA-170K -w 16 -b 256'],
};

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand(spec, argv);
  if (values.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  const [sub, root, ...rest] = positionals;
  if (sub !== 'loader') throw new UsageError(sub === undefined ? 'give a benchmark: loader' : `unknown benchmark ${JSON.stringify(sub)} (known: loader)`);
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
    const channels = num(values, 'channels') ?? 3;
    if (channels !== 1 && channels !== 3) throw new UsageError('--channels must be 1 or 3');
    const r = await benchLoader(dir, {
      workers,
      batchSize: num(values, 'batch-size') ?? 64,
      batches: num(values, 'batches') ?? 20,
      augment: { size: num(values, 'size') ?? 224, channels },
    });
    process.stderr.write(
      `loader: ${r.imagesPerSecond.toFixed(1)} img/s (${r.images} images in ${r.seconds.toFixed(2)} s, ${r.workers} worker(s), batch ${r.batchSize}, ${r.size}², ${r.distinctImages} distinct files)\n`,
    );
    process.stdout.write(JSON.stringify({ ours: r.imagesPerSecond, ...r }) + '\n');
    return 0;
  } finally {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
}
