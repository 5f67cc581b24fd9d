// Zod constructors of the numeric config fields the schemas share, each with the error messages
// the CLI and the Node API report (`<field> must be ...`): pos (finite, > 0), nonneg (finite,
// >= 0), int (integer >= min), count (integer > 0) and unit (in [0, 1]).
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
