// Zod constructors of the numeric config fields the schemas share, each with the error messages
// the CLI and the Node API report (`<field> must be ...`): pos (finite, > 0), nonneg (finite,
// >= 0), int (integer >= min), count (integer > 0), unit (in [0, 1]), channels (1 or 3), choice (one of a list), and
// runFields, the preset / dataset / run-folder fields that open the schemas of the training runs, and
// outputFields, the TensorBoard / report switches they share.
import { z } from 'zod';

/** A finite number > 0. */
export const pos = (what: string) =>
  z
    .number({ error: `${what} must be a number` })
    .finite()
    .positive(`${what} must be > 0`);

/** A finite number >= 0. */
export const nonneg = (what: string) =>
  z
    .number({ error: `${what} must be a number` })
    .finite()
    .min(0, `${what} must be >= 0`);

/** An integer >= `min`. */
export const int = (what: string, min: number) =>
  z
    .number({ error: `${what} must be a number` })
    .int(`${what} must be an integer`)
    .min(min, `${what} must be >= ${min}`);

/** An integer > 0 (a size or a count). */
export const count = (what: string) =>
  z
    .number({ error: `${what} must be a number` })
    .int(`${what} must be an integer`)
    .positive(`${what} must be > 0`);

/** A number in [0, 1]. */
export const unit = (what: string) =>
  z
    .number({ error: `${what} must be a number` })
    .min(0, `${what} must be in [0, 1]`)
    .max(1, `${what} must be in [0, 1]`);

/** Image channels: 1 (grey-native) or 3 (grey replicated). */
export const channels = (what: string) => z.union([z.literal(1), z.literal(3)], { error: `${what} must be 1 or 3` });

/** One of `values`. */
export const choice = <const T extends readonly [string, ...string[]]>(what: string, values: T) =>
  z.enum(values, { error: `${what} must be one of ${values.join(', ')}` });

/**
 * The fields that open a training run's schema: `preset` (one of `presets`, `demo` by default),
 * `data` (optional; `dataHelp` says what it holds), and `runs` / `name`, where its run folder goes.
 */
export const runFields = <const T extends readonly ['demo', ...string[]] | readonly [string, 'demo', ...string[]]>(
  presets: T,
  dataHelp: string,
) => ({
  preset: choice('preset', presets).default('demo').describe('run preset: every other field defaults to its value'),
  data: z.string().min(1).optional().describe(dataHelp),
  runs: z.string().min(1).default('runs').describe('folder for run folders'),
  name: z
    .string()
    .regex(/^[\w.-]+$/, 'name may contain letters, digits, _ . - only')
    .optional()
    .describe('run folder name (default: UTC timestamp)'),
});

/**
 * What a training run writes besides its checkpoints: TensorBoard event files beside
 * metrics.jsonl, and how often report.html is rewritten (it is always written at the end).
 * They belong to one invocation (OUTPUT_KEYS), like the loader's threads: a resumed run takes them
 * from its own command line, and they change nothing the run computes.
 */
export const OUTPUT_KEYS = ['tensorboard', 'reportEvery'] as const;
export const outputFields = () => ({
  tensorboard: z
    .boolean({ error: 'tensorboard must be true or false' })
    .default(false)
    .describe('also write TensorBoard event files (scalars, sample pictures) into the run folder'),
  reportEvery: int('reportEvery', 0)
    .default(0)
    .describe('rewrite report.html every n epochs (0: only at the end of the run)'),
});
