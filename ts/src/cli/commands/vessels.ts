// `vasomim vessels [root]`: VasoMIM vessel maps for a dataset tree (or the bundled samples).
import { join } from 'node:path';

import { formatZodError, VesselsJobSchema, type VesselsJobInput } from '../../config/vessels.js';
import { packageRoot } from '../../native.js';
import { prepareVesselMaps } from '../../vessels/api.js';
import { defined, helpText, num, parseCommand, readConfigFile, UsageError, type CommandSpec } from '../args.js';
import { onInterrupt } from '../interrupt.js';
import { formatDuration, Progress } from '../progress.js';
import { FILTER_FLAGS, filterFromFlags, INPUT_NOTE } from './filter-flags.js';

export const spec: CommandSpec = {
  name: 'vessels',
  summary: 'VasoMIM binary vessel maps ({0,255} PNG) for every image under a dataset root.',
  usage: 'vasomim vessels [root] [options]',
  description:
    'Every folder under <root> that holds images is a source; the map of <source>/x.png is written to\n' +
    '<source>_frangi/x.png (XA-170K layout; --suffix _filter_92 for the authors\' loader). A single folder\n' +
    'of images works too. Map = Sato sigma 1..4 (dark vessels) -> uint8 -> zero a --border frame ->\n' +
    'keep >= the --percentile -> the 4-connected component of the strongest pixel.\n' +
    'Existing maps are skipped (an interrupted run resumes; --overwrite recomputes); writes are atomic;\n' +
    'a bad file is reported and the rest go on. Exit code 0: all done; 1: some files failed;\n' +
    '2: bad command line or nothing to do; 130: interrupted (Ctrl-C finishes the files in flight).\n' +
    'Without <root>, maps the angiograms bundled with vasomim into runs/vessel-maps/.\n\n' +
    INPUT_NOTE,
  options: [
    { name: 'out', short: 'o', type: 'string', arg: '<dir>', help: 'write map folders here, mirroring the tree (default: beside the sources)' },
    ...FILTER_FLAGS,
    { name: 'border', type: 'string', arg: '<px>', help: 'frame zeroed before thresholding', default: '20' },
    { name: 'percentile', type: 'string', arg: '<p>', help: 'keep pixels >= this percentile of the uint8 response', default: '92' },
    { name: 'cast', type: 'string', arg: '<mode>', help: 'uint8 cast: clamp, or wrap (modulo 256, bit-exact with the reference code)', default: 'clamp' },
    { name: 'precision', type: 'string', arg: '<p>', help: 'f32 (faster) or f64 (bit-exact filter; on the 92 bundled frames both give identical maps)', default: 'f32' },
    { name: 'jobs', short: 'j', type: 'string', arg: '<n>', help: 'worker threads, 0 = all cores', default: '0' },
    { name: 'overwrite', type: 'boolean', help: 'recompute maps that already exist' },
    { name: 'suffix', type: 'string', arg: '<s>', help: 'map folder suffix', default: '_frangi' },
    { name: 'exclude', type: 'string', arg: '<globs>', help: 'comma-separated basename globs to skip', default: '*_gt.*,*_mask.*' },
    { name: 'config', short: 'c', type: 'string', arg: '<file.json>', help: 'job options as JSON (same fields as the Node API; flags override it)' },
    { name: 'json', type: 'boolean', help: 'print the summary as one JSON line on stdout' },
  ],
  examples: [
    'vasomim vessels                                 # the bundled sample angiograms',
    'vasomim vessels /data/XA-170K --jobs 16',
    'vasomim vessels frames/ --out maps/ --cast wrap  # bit-exact with the reference pipeline',
  ],
};

function jobFromFlags(values: Record<string, unknown>): VesselsJobInput {
  const fromFile = values.config ? readConfigFile(values.config as string) : {};
  const precision = values.precision as string | undefined;
  const cast = values.cast as string | undefined;
  const filterFile = (fromFile.filter ?? {}) as Record<string, unknown>;
  const mapFile = (fromFile.map ?? {}) as Record<string, unknown>;
  return {
    ...fromFile,
    ...defined({
      out: values.out as string | undefined,
      suffix: values.suffix as string | undefined,
      exclude: values.exclude === undefined ? undefined : String(values.exclude).split(',').map((s) => s.trim()).filter(Boolean),
      jobs: num(values, 'jobs'),
      overwrite: values.overwrite === true ? true : undefined,
    }),
    filter: { ...filterFile, ...filterFromFlags(values), ...defined({ precision }) } as VesselsJobInput['filter'],
    map: { ...mapFile, ...defined({ border: num(values, 'border'), percentile: num(values, 'percentile'), cast }) } as VesselsJobInput['map'],
  };
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand(spec, argv);
  if (values.help) {
    process.stdout.write(helpText(spec));
    return 0;
  }
  if (positionals.length > 1) throw new UsageError(`expected at most one root folder, got ${positionals.length}`);
  const job = jobFromFlags(values);
  let root = positionals[0];
  if (root === undefined) {
    root = join(packageRoot(), 'data', 'samples');
    job.out ??= join('runs', 'vessel-maps');
  }
  const parsed = VesselsJobSchema.safeParse(job);
  if (!parsed.success) throw new UsageError(`invalid options:\n${formatZodError(parsed.error)}`);

  const interrupt = onInterrupt('finishing the files in flight');
  let progress: Progress | undefined;
  try {
    const summary = await prepareVesselMaps(
      root,
      parsed.data,
      (p) => {
        progress ??= new Progress('vessels', p.total);
        for (const r of p.recent) if (r.status === 'failed') progress.log(`error: ${r.input}: ${r.error}`);
        progress.update(p.done, p.processed + p.failed, `ok ${p.processed} skip ${p.skipped} fail ${p.failed}`);
      },
      { shouldStop: interrupt.stopRequested },
    );
    progress?.end();
    const rate = summary.processed / Math.max(summary.seconds, 1e-9);
    const where = parsed.data.out ?? 'beside the sources';
    process.stderr.write(
      `${summary.interrupted ? 'interrupted' : 'done'}: ${summary.processed} processed, ${summary.skipped} skipped, ${summary.failed} failed` +
        (summary.excluded ? `, ${summary.excluded} excluded` : '') +
        ` in ${formatDuration(summary.seconds)} (${rate.toFixed(1)} img/s) from ${summary.sources.length} source folder(s); maps in ${where}\n`,
    );
    if (values.json) process.stdout.write(JSON.stringify({ ...summary, out: parsed.data.out ?? null }) + '\n');
    return summary.interrupted ? 130 : summary.failed > 0 ? 1 : 0;
  } finally {
    interrupt.dispose();
  }
}
