// `vasomim data check <root|manifest>`: counts, missing/extra maps, unreadable files, sizes.
import { checkDataset, type DataReport } from '../../data/check.js';
import { DatasetSchema } from '../../config/data.js';
import { command, num, subcommand, UsageError, type CommandSpec } from '../args.js';
import { Progress } from '../progress.js';
import { flagInput, schemaFlags } from '../schema-flags.js';

export const spec: CommandSpec = {
  name: 'data',
  summary: 'Dataset tools. `data check <root|manifest>`: what a dataset holds and what is wrong with it.',
  usage: 'vasomim data check <root|manifest.csv|manifest.jsonl> [options]',
  description:
    'Indexes the dataset (XA-170K layout: <source>/ with <source>_frangi/ or <source>_filter_92/ maps of the\n' +
    'same file name; a plain folder; or a CSV/JSONL manifest of image[,map[,frame]]), reads every header\n' +
    'in parallel (--decode: every first frame too) and reports per-source counts, images without maps,\n' +
    'maps without images, unreadable files, maps of another size and the image-size histogram.\n' +
    'Exit code 0: no problem; 1: problems found; 2: bad command line or no such dataset.',
  options: [
    { name: 'decode', type: 'boolean', help: 'decode pixels too (finds truncated files; slower)' },
    { name: 'jobs', short: 'j', type: 'string', arg: '<n>', help: 'threads, 0 = all cores', default: '0' },
    { name: 'json', type: 'boolean', help: 'print the report as one JSON line on stdout' },
  ],
  flags: schemaFlags(DatasetSchema, { names: { mapSuffixes: 'suffix' } }),
  flagsTitle: 'dataset options:',
  examples: ['vasomim data check /data/XA-170K', 'vasomim data check frames/manifest.csv --decode'],
};

export function formatReport(r: DataReport): string {
  const out = [
    `${r.kind === 'manifest' ? 'manifest' : 'dataset'} ${r.root}: ${r.images} image(s), ${r.withMaps} with a map, ` +
      `${r.frames} frame(s)` +
      (r.excluded ? `, ${r.excluded} excluded` : ''),
  ];
  const w = Math.max(6, ...r.sources.map((s) => s.source.length));
  if (r.sources.length) out.push(`  ${'source'.padEnd(w)}  images  maps  missing  extra`);
  for (const s of r.sources)
    out.push(
      `  ${s.source.padEnd(w)}  ${String(s.images).padStart(6)}  ${String(s.withMap).padStart(4)}  ` +
        `${String(s.missingMaps).padStart(7)}  ${String(s.extraMaps).padStart(5)}`,
    );
  const sizes = Object.entries(r.sizes).sort((a, b) => b[1] - a[1]);
  if (sizes.length) out.push('  sizes: ' + sizes.map(([k, v]) => `${k} x${v}`).join(', '));
  for (const u of r.unreadable.slice(0, 20)) out.push(`  unreadable: ${u.path}: ${u.error}`);
  out.push(r.problems.length ? `problems:\n  ${r.problems.join('\n  ')}` : 'no problems found');
  return out.join('\n') + '\n';
}

export const run = command(spec, async ({ values, positionals }) => {
  subcommand(positionals, 'subcommand', 'check');
  const [, root, ...rest] = positionals;
  if (root === undefined) throw new UsageError('give the dataset root or a manifest');
  if (rest.length) throw new UsageError(`expected one dataset, got ${rest.length + 1}`);
  let progress: Progress | undefined;
  const report = await checkDataset(root, {
    dataset: flagInput(spec.flags!, values),
    decode: values.decode === true,
    jobs: num(values, 'jobs') ?? 0,
    onProgress: (d, t) => {
      progress ??= new Progress('check', t, 'file');
      progress.update(d, d);
    },
  });
  progress?.end();
  process.stderr.write(formatReport(report));
  if (values.json) process.stdout.write(JSON.stringify(report) + '\n');
  return report.problems.length ? 1 : 0;
});
