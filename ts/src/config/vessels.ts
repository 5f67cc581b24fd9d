// Options of the vesselness filter and the VasoMIM vessel-map job: one zod schema each, shared
// by the CLI flags, config files and the Node API (types come from the schemas).
import { z } from 'zod';

/** Sato with sigma 1..4 is the VasoMIM map filter; Frangi's defaults are scikit-image's. */
export const DEFAULT_SIGMAS = { sato: [1, 2, 3, 4], frangi: [1, 3, 5, 7, 9], frangi1998: [1, 3, 5, 7, 9] } as const;

const positive = (what: string) => z.number({ error: `${what} must be a number` }).finite().positive(`${what} must be > 0`);

export const FilterSchema = z
  .object({
    /** sato | frangi (scikit-image) | frangi1998 (sigma^2-normalised, gamma per sigma). */
    filter: z.enum(['sato', 'frangi', 'frangi1998']).default('sato'),
    /** Scales in pixels; default depends on the filter. */
    sigmas: z.array(positive('each sigma').max(256, 'each sigma must be <= 256')).min(1, 'give at least one sigma').optional(),
    /** Bright vessels on a dark background (default: dark vessels, as contrast-filled arteries in X-ray). */
    whiteRidges: z.boolean().default(false),
    alpha: positive('alpha').default(0.5),
    beta: positive('beta').default(0.5),
    /** Frangi structure sensitivity; default: half the largest Hessian norm (scikit-image rule). */
    gamma: positive('gamma').optional(),
    /**
     * Working precision. Raw responses default to f64 (scikit-image to ~1e-15); maps default to
     * f32 (about twice as fast; on all 92 bundled frames its maps equal the f64 ones pixel for pixel).
     */
    precision: z.enum(['f32', 'f64']).optional(),
  })
  .strict()
  .transform((o) => ({ ...o, sigmas: o.sigmas ?? [...DEFAULT_SIGMAS[o.filter]] }));

export type FilterInput = z.input<typeof FilterSchema>;
export type FilterConfig = z.output<typeof FilterSchema>;

export const MapSchema = z
  .object({
    /** Pixels zeroed on every side before thresholding. */
    border: z.number().int('border must be an integer').min(0, 'border must be >= 0').default(20),
    /** Keep pixels at or above this percentile of the uint8 response (numpy 'linear'). */
    percentile: z.number().min(0, 'percentile must be in [0, 100]').max(100, 'percentile must be in [0, 100]').default(92),
    /** clamp: values > 255 become 255; wrap: modulo 256, bit-exact with the reference code. */
    cast: z.enum(['clamp', 'wrap']).default('clamp'),
  })
  .strict();

export type MapInput = z.input<typeof MapSchema>;
export type MapConfig = z.output<typeof MapSchema>;

/** File names treated as labels, not angiograms, unless --exclude says otherwise. */
export const DEFAULT_EXCLUDE = ['*_gt.*', '*_mask.*'];

export const VesselsJobSchema = z
  .object({
    /** Where `<source>_frangi/` folders go (mirroring the tree under root); default: beside the sources. */
    out: z.string().min(1).optional(),
    /** Suffix of map folders (XA-170K uses _frangi; the authors' loader also reads _filter_92). */
    suffix: z.string().regex(/^[\w.-]+$/, 'suffix may contain letters, digits, _ . - only').default('_frangi'),
    /** Basename globs (* and ?) of images to leave out. */
    exclude: z.array(z.string()).default(DEFAULT_EXCLUDE),
    /** Worker threads (0 = all cores). */
    jobs: z.number().int('jobs must be an integer').min(0, 'jobs must be >= 0').default(0),
    /** Recompute maps that already exist. */
    overwrite: z.boolean().default(false),
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
