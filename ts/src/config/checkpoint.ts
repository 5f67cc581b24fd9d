// What the training loops save beside the weights and read back on resume or load: one zod
// schema each, so a checkpoint written by another version or another command fails with an
// error naming the file instead of a loop that runs on `undefined`.
//
//   PretrainLoopStateSchema    the loop position of `vasomim pretrain` (`loopState` of a checkpoint)
//   FinetuneLoopStateSchema    the loop position of `vasomim finetune` (`loop` in the `extra` JSON)
//   SegmentationMetaSchema     the metadata `vasomim finetune` stores in a checkpoint's `extra` JSON
//   parseLoopState, parseCheckpointExtra   JSON text -> a schema's value, errors naming the file
import { z } from 'zod';

import { formatZodError } from './vessels.js';

const count = z.number().int().min(0);

export const PretrainLoopStateSchema = z
  .object({
    version: z.literal(1),
    /** Epoch to continue and the first batch of it not yet trained. */
    epoch: count,
    nextBatch: count,
    step: count,
    /** Per-patch masking counts so far (mask-frequency.png). */
    maskFrequency: z.object({ counts: z.array(count), images: count, masked: count, maskedWithVessel: count }),
    /** Masked patches and those containing vessel so far in the current epoch. */
    epochMasked: count,
    epochVessel: count,
  })
  .strict();

export type PretrainLoopState = z.output<typeof PretrainLoopStateSchema>;

export const FinetuneLoopStateSchema = z
  .object({
    bestDsc: z.number().nullable(),
    bestEpoch: z.number().int().min(-1),
    /** Sum and count of the step losses so far in the current epoch (for its mean). */
    epochLoss: z.number().optional(),
    epochSteps: count.optional(),
  })
  .strict();

export type FinetuneLoopState = z.output<typeof FinetuneLoopStateSchema>;

export const SegmentationMetaSchema = z.object({
  task: z.string(),
  /** Class names by label; classes[0] is the background (binary: background, foreground). */
  classes: z.array(z.string()).min(2),
  /** Loader normalisation of training (one value per input channel). */
  mean: z.array(z.number()).min(1),
  std: z.array(z.number().positive()).min(1),
  /** Foreground threshold (binary). */
  threshold: z.number().min(0).max(1),
  epoch: z.number().int().min(0).optional(),
  valDsc: z.number().nullable().optional(),
  init: z.string().optional(),
  dataset: z.string().optional(),
  loop: FinetuneLoopStateSchema.optional(),
});

export type SegmentationMeta = z.output<typeof SegmentationMetaSchema>;

/** Parse JSON text saved in checkpoint `path` with `schema`; `what` says what it should be. */
function parseSaved<S extends z.ZodType>(
  schema: S,
  text: string | null | undefined,
  path: string,
  what: string,
): z.output<S> {
  if (!text) throw new Error(`${path}: no ${what}`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: ${what} is not JSON (${(e as Error).message})`);
  }
  const r = schema.safeParse(value);
  if (!r.success) throw new Error(`${path}: bad ${what}:\n${formatZodError(r.error)}`);
  return r.data;
}

/** The loop state of checkpoint `path` (written by `command`), or an Error naming the file. */
export function parseLoopState<S extends z.ZodType>(
  schema: S,
  text: string | null | undefined,
  path: string,
  command: string,
): z.output<S> {
  return parseSaved(schema, text, path, `loop state (not written by \`${command}\`?)`);
}

/** The `extra` metadata of a fine-tuned checkpoint `path`, or an Error naming the file. */
export function parseCheckpointExtra(text: string | null | undefined, path: string): SegmentationMeta {
  return parseSaved(SegmentationMetaSchema, text, path, 'segmentation metadata (not written by `vasomim finetune`?)');
}
