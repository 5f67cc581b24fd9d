// `vasomim frames <file…> --out <dir>`: DICOM cine runs to PNG frames plus a manifest.
import { extractFrames } from '../../data/frames.js';
import { FramesSchema } from '../../config/data.js';
import { parseOptions } from '../../config/vessels.js';
import { command, UsageError, type CommandSpec } from '../args.js';
import { flagInput, schemaFlags } from '../schema-flags.js';

export const spec: CommandSpec = {
  name: 'frames',
  summary: 'Every frame of DICOM cine runs (or any images) as 8-bit grey PNG, with a manifest.csv.',
  usage: 'vasomim frames <file…> --out <dir> [options]',
  description:
    'Frame k of run.dcm becomes <dir>/run_0000.png … (run.png for single-frame files). DICOM grey:\n' +
    'Rescale Slope/Intercept, then the first Window Centre/Width when present, else the full range of\n' +
    'Bits Stored; MONOCHROME1 inverted; colour to BT.601 luma. Transfer syntaxes: native, deflate, RLE,\n' +
    'JPEG baseline/extended/lossless (JPEG-LS and JPEG 2000 are reported as unsupported).\n' +
    '<dir>/manifest.csv (image,source,frame,width,height) is a dataset manifest for `data check` and\n' +
    'training. Existing PNGs are kept unless --overwrite. Exit 1 if any input failed.',
  options: [{ name: 'json', type: 'boolean', help: 'print the summary as one JSON line on stdout' }],
  flags: schemaFlags(FramesSchema, { short: { out: 'o' } }),
  flagsTitle: 'extraction options:',
  examples: [
    'vasomim frames run1.dcm run2.dcm --out frames/',
    'vasomim frames /data/cine/*.dcm -o frames && vasomim vessels frames',
  ],
};

export const run = command(spec, async ({ values, positionals }) => {
  if (positionals.length === 0) throw new UsageError('give at least one input file');
  const options = flagInput(spec.flags!, values);
  if (!options.out) throw new UsageError('--out <dir> is required');
  const parsed = parseOptions(FramesSchema, options, 'options');
  const s = await extractFrames(positionals, parsed, (input, n, error) => {
    process.stderr.write(error ? `error: ${error}\n` : `${input}: ${n} frame(s)\n`);
  });
  process.stderr.write(
    `done: ${s.frames.length} frame(s) from ${positionals.length - s.failed.length} file(s), ${s.failed.length} ` +
      `failed; manifest ${s.manifest}\n`,
  );
  if (values.json)
    process.stdout.write(JSON.stringify({ frames: s.frames.length, failed: s.failed, manifest: s.manifest }) + '\n');
  return s.failed.length > 0 ? 1 : 0;
});
