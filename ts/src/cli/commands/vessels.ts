// `vasomim vessels [root]`: VasoMIM vessel maps for a dataset tree (or the bundled samples).
import { join } from 'node:path';

import { parseOptions, VesselsJobSchema, type VesselsJobInput } from '../../config/vessels.js';
import { mergeConfig } from '../../config/pretrain.js';
import { packageRoot } from '../../native.js';
import { prepareVesselMaps } from '../../vessels/api.js';
import { command, UsageError, type CommandSpec } from '../args.js';
import { onInterrupt } from '../interrupt.js';
import { formatDuration, Progress } from '../progress.js';
import { configLayers, schemaFlags } from '../schema-flags.js';
import { INPUT_NOTE } from './input-note.js';

export const spec: CommandSpec = {
  name: 'vessels',
  summary: 'VasoMIM binary vessel maps ({0,255} PNG) for every image under a dataset root.',
  usage: 'vasomim vessels [root] [options]',
  description:
    'Every folder under <root> that holds images is a source; the map of <source>/x.png is written to\n' +
    "<source>_frangi/x.png (XA-170K layout; --suffix _filter_92 for the authors' loader). A single folder\n" +
    'of images works too. Map = Sato sigma 1..4 (dark vessels) -> uint8 -> zero a --border frame ->\n' +
    'keep >= the --percentile -> the 4-connected component of the strongest pixel.\n' +
    'Existing maps are skipped (an interrupted run resumes; --overwrite recomputes); writes are atomic;\n' +
    'a bad file is reported and the rest go on. Exit code 0: all done; 1: some files failed;\n' +
    '2: bad command line or nothing to do; 130: interrupted (Ctrl-C finishes the files in flight).\n' +
    'Without <root>, maps the angiograms bundled with vasomim into runs/vessel-maps/.\n\n' +
    INPUT_NOTE,
  options: [
    {
      name: 'config',
      short: 'c',
      type: 'string',
      arg: '<file.json>',
      help: 'job options as JSON (same fields as the Node API; flags override it)',
    },
    { name: 'json', type: 'boolean', help: 'print the summary as one JSON line on stdout' },
  ],
  flags: schemaFlags(VesselsJobSchema, { short: { out: 'o', jobs: 'j' } }),
  flagsTitle: 'job options (flags override --config):',
  examples: [
    'vasomim vessels                                 # the bundled sample angiograms',
    'vasomim vessels /data/XA-170K --jobs 16',
    'vasomim vessels frames/ --out maps/ --cast wrap  # bit-exact with the reference pipeline',
  ],
};

export const run = command(spec, async ({ values, positionals }) => {
  if (positionals.length > 1) throw new UsageError(`expected at most one root folder, got ${positionals.length}`);
  const job = mergeConfig(...configLayers(spec, values)) as VesselsJobInput;
  let root = positionals[0];
  if (root === undefined) {
    root = join(packageRoot(), 'data', 'samples');
    job.out ??= join('runs', 'vessel-maps');
  }
  const parsed = parseOptions(VesselsJobSchema, job, 'options');

  const interrupt = onInterrupt('finishing the files in flight');
  let progress: Progress | undefined;
  try {
    const summary = await prepareVesselMaps(
      root,
      parsed,
      (p) => {
        progress ??= new Progress('vessels', p.total);
        for (const r of p.recent) if (r.status === 'failed') progress.log(`error: ${r.input}: ${r.error}`);
        progress.update(p.done, p.processed + p.failed, `ok ${p.processed} skip ${p.skipped} fail ${p.failed}`);
      },
      { shouldStop: interrupt.stopRequested },
    );
    progress?.end();
    const rate = summary.processed / Math.max(summary.seconds, 1e-9);
    const where = parsed.out ?? 'beside the sources';
    process.stderr.write(
      `${summary.interrupted ? 'interrupted' : 'done'}: ${summary.processed} processed, ${summary.skipped} skipped, ` +
        `${summary.failed} failed` +
        (summary.excluded ? `, ${summary.excluded} excluded` : '') +
        ` in ${formatDuration(summary.seconds)} (${rate.toFixed(1)} img/s) from ${summary.sources.length} source ` +
        `folder(s); maps in ${where}\n`,
    );
    if (values.json) process.stdout.write(JSON.stringify({ ...summary, out: parsed.out ?? null }) + '\n');
    return summary.interrupted ? 130 : summary.failed > 0 ? 1 : 0;
  } finally {
    interrupt.dispose();
  }
});
