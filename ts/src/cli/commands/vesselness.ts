// `vasomim vesselness <image> --out <file.npy|file.png>`: the raw filter response of one image.
import { mergeConfig } from '../../config/pretrain.js';
import { FilterSchema, parseOptions } from '../../config/vessels.js';
import { vesselnessToFile } from '../../vessels/api.js';
import { command, UsageError, type CommandSpec } from '../args.js';
import { configLayers, schemaFlags } from '../schema-flags.js';
import { INPUT_NOTE } from './input-note.js';

export const spec: CommandSpec = {
  name: 'vesselness',
  summary: 'Raw Sato/Frangi vesselness of one image, as NumPy .npy (exact values) or a display PNG.',
  usage: 'vasomim vesselness <image> --out <file.npy|file.png> [options]',
  description:
    'The filters reproduce scikit-image >= 0.20 (sato, frangi): within 1e-6 of its float64 output\n' +
    "(float32: 1e-4), relative to the image's largest response. The .png is the response scaled so\n" +
    'that its maximum is 255.\n\n' +
    INPUT_NOTE,
  options: [
    { name: 'out', short: 'o', type: 'string', arg: '<file>', help: 'output .npy (raw) or .png (display)' },
    {
      name: 'dtype',
      type: 'string',
      arg: '<type>',
      help: 'float64 (scikit-image parity) or float32 (faster)',
      default: 'float64',
    },
    {
      name: 'config',
      short: 'c',
      type: 'string',
      arg: '<file.json>',
      help: 'filter options as JSON (flags override it)',
    },
  ],
  flags: schemaFlags(FilterSchema, { omit: ['precision'] }),
  flagsTitle: 'filter options (flags override --config):',
  examples: [
    'vasomim vesselness frame.png --out frame.sato.npy',
    'vasomim vesselness frame.png --filter frangi --out frame.frangi.png',
  ],
};

export const run = command(spec, async ({ values, positionals }) => {
  if (positionals.length !== 1) throw new UsageError(`expected exactly one image, got ${positionals.length}`);
  const out = values.out as string | undefined;
  if (!out) throw new UsageError('--out <file.npy|file.png> is required');
  if (!/\.(npy|png)$/i.test(out)) throw new UsageError(`--out ${out}: must end in .npy or .png`);
  const dtype = values.dtype as string | undefined;
  const precision = dtype === undefined ? undefined : { float32: 'f32', f32: 'f32', float64: 'f64', f64: 'f64' }[dtype];
  if (dtype !== undefined && !precision)
    throw new UsageError(`--dtype: ${JSON.stringify(dtype)} (expected float32 or float64)`);
  const merged = { ...mergeConfig(...configLayers(spec, values)), ...(precision ? { precision } : {}) };
  const parsed = parseOptions(FilterSchema, merged, 'options');
  const image = positionals[0]!;
  const r = await vesselnessToFile(image, out, parsed);
  const kind = out.toLowerCase().endsWith('.npy')
    ? parsed.precision === 'f32'
      ? 'float32'
      : 'float64'
    : 'display PNG';
  process.stdout.write(
    `wrote ${out} (${r.height}x${r.width} ${kind}, ${parsed.filter} sigmas ${parsed.sigmas.join(',')}, ` +
      `max ${r.max.toPrecision(6)})\n`,
  );
  return 0;
});
