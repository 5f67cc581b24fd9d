// Options of the vesselness filter and the VasoMIM vessel-map job: one zod schema each, shared
// by the CLI flags, config files and the Node API (types come from the schemas).
import { z } from 'zod';

import { pos } from './fields.js';

/** Sato with sigma 1..4 is the VasoMIM map filter; Frangi's defaults are scikit-image's. */
export const DEFAULT_SIGMAS = { sato: [1, 2, 3, 4], frangi: [1, 3, 5, 7, 9], frangi1998: [1, 3, 5, 7, 9] } as const;

export const FilterSchema = z
  .object({
    filter: z
      .enum(['sato', 'frangi', 'frangi1998'])
      .default('sato')
      .describe('sato | frangi (scikit-image) | frangi1998 (sigma^2-normalised, gamma per sigma)'),
    sigmas: z
      .array(pos('each sigma').max(256, 'each sigma must be <= 256'))
      .min(1, 'give at least one sigma')
      .optional()
      .meta({ description: 'scales in pixels, comma-separated', defaultText: 'sato 1,2,3,4; frangi 1,3,5,7,9' }),
    whiteRidges: z
      .boolean()
      .default(false)
      .describe('vessels brighter than the background (false: dark vessels, as contrast-filled arteries in X-ray)'),
    alpha: pos('alpha').default(0.5).describe('Frangi alpha (only used in 3-D; accepted for parity)'),
    beta: pos('beta').default(0.5).describe('Frangi beta (blobness sensitivity)'),
    gamma: pos('gamma')
      .optional()
      .describe('Frangi gamma (structureness); default: half the largest Hessian norm (scikit-image rule)'),
    /**
     * Raw responses default to f64 (scikit-image to ~1e-15); maps default to f32 (about twice as
     * fast; on all 92 bundled frames its maps equal the f64 ones pixel for pixel).
     */
    precision: z.enum(['f32', 'f64']).optional().meta({
      description: 'working precision: f32 (faster) or f64 (bit-exact filter)',
      defaultText: 'maps f32, raw responses f64',
    }),
  })
  .strict()
  .transform((o) => ({ ...o, sigmas: o.sigmas ?? [...DEFAULT_SIGMAS[o.filter]] }));

export type FilterInput = z.input<typeof FilterSchema>;
export type FilterConfig = z.output<typeof FilterSchema>;

export const MapSchema = z
  .object({
    border: z
      .number()
      .int('border must be an integer')
      .min(0, 'border must be >= 0')
      .default(20)
      .describe('pixels zeroed on every side before thresholding'),
    percentile: z
      .number()
      .min(0, 'percentile must be in [0, 100]')
      .max(100, 'percentile must be in [0, 100]')
      .default(92)
      .describe("keep pixels >= this percentile of the uint8 response (numpy 'linear')"),
    cast: z
      .enum(['clamp', 'wrap'])
      .default('clamp')
      .describe('uint8 cast: clamp (> 255 -> 255), or wrap (modulo 256, bit-exact with the reference code)'),
  })
  .strict();

export type MapInput = z.input<typeof MapSchema>;
export type MapConfig = z.output<typeof MapSchema>;

/** File names treated as labels, not angiograms, unless --exclude says otherwise. */
export const DEFAULT_EXCLUDE = ['*_gt.*', '*_mask.*'];

export const VesselsJobSchema = z
  .object({
    out: z
      .string()
      .min(1)
      .optional()
      .describe('write map folders here, mirroring the tree under the root (default: beside the sources)'),
    suffix: z
      .string()
      .regex(/^[\w.-]+$/, 'suffix may contain letters, digits, _ . - only')
      .default('_frangi')
      .describe("suffix of map folders (XA-170K: _frangi; the authors' loader also reads _filter_92)"),
    exclude: z
      .array(z.string())
      .default(DEFAULT_EXCLUDE)
      .describe('basename globs (* and ?) of images to skip, comma-separated'),
    jobs: z
      .number()
      .int('jobs must be an integer')
      .min(0, 'jobs must be >= 0')
      .default(0)
      .describe('worker threads, 0 = all cores'),
    overwrite: z.boolean().default(false).describe('recompute maps that already exist'),
    filter: FilterSchema.prefault({}),
    map: MapSchema.prefault({}),
  })
  .strict();

export type VesselsJobInput = z.input<typeof VesselsJobSchema>;
export type VesselsJobConfig = z.output<typeof VesselsJobSchema>;

/** One line per problem, each naming the field path: `filter.sigmas.0: each sigma must be > 0`. */
export function formatZodError(e: z.ZodError, prefix = ''): string {
  return e.issues
    .map((i) => {
      const path = [prefix, ...i.path.map(String)].filter(Boolean).join('.');
      return `${path || '(options)'}: ${i.message}`;
    })
    .join('\n');
}

/** Parse with a schema; throws an Error whose message names every bad field. */
export function parseOptions<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw new ConfigError(`invalid ${what}:\n${formatZodError(r.error)}`);
  return r.data;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}
