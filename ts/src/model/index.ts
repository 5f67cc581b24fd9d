// The model API: create / load a VasoMIM MAE, train it one step at a time, export it for timm,
// and compute features. Thin wrappers over the native `Model` handle; options go through zod.
import { ModelConfigSchema, StepOptionsSchema, type ModelConfigInput, type StepOptionsInput } from '../config/model.js';
import { parseOptions } from '../config/vessels.js';
import { InputFileError } from '../errors.js';
import { native } from '../native.js';
import { maskCounts, randomMasking } from '../train/masking.js';
import type { Features, LoadInfo, Model, Reconstruction, StepResult } from '../native.js';

export type { Features, LoadInfo, Model, Reconstruction, StepResult };

/**
 * A freshly initialised model (MAE init; deterministic in `seed`). `frozen` lists state-dict
 * names or prefixes (e.g. `patch_embed`, `blocks.0`) that training leaves unchanged.
 */
export function createModel(config: ModelConfigInput = {}, seed = 0, frozen: string[] = [], device = 'cpu'): Model {
  return native.Model.create(parseOptions(ModelConfigSchema, config, 'model config'), seed, frozen, device);
}

export interface LoadModelOptions {
  /** Preset for a file without a config (e.g. a bare timm checkpoint) when shapes are ambiguous. */
  preset?: string;
  /** Input size / channels wanted (position embeddings and patch embedding are adapted). */
  imgSize?: number;
  inChans?: 1 | 3;
  /** State-dict names or prefixes that training leaves unchanged. */
  frozen?: string[];
  /** Where the model runs: cpu (default) | cuda | cuda:N. */
  device?: string;
}

/**
 * Load our safetensors, a timm safetensors file or an MAE `.pth`; see `model.loadInfo`. A file that cannot be read
 * or is not a checkpoint is an InputFileError naming it; bad options keep their `InvalidArg` error.
 */
export async function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model> {
  try {
    return await native.Model.load(path, options);
  } catch (e) {
    if ((e as { code?: string }).code === 'InvalidArg') throw e;
    const message = (e as Error).message;
    throw new InputFileError(message.includes(path) ? message : `${path}: ${message}`);
  }
}

/** The caller's masking for a batch: kept patch ids, restore order, mask (1 = masked). */
export interface MaskBatch {
  idsKeep: Uint32Array;
  idsRestore: Uint32Array;
  mask: Float32Array;
}

/** Masks as the native side takes them; accepts `batchMasks` output (Int32Array / Uint8Array) too. */
export function toMaskBatch(m: {
  idsKeep: Uint32Array | Int32Array;
  idsRestore: Uint32Array | Int32Array;
  mask: Float32Array | Uint8Array;
}): MaskBatch {
  // Int32 ids are non-negative, so a Uint32 view of the same bytes is the same values (no copy).
  const u32 = (a: Uint32Array | Int32Array) =>
    a instanceof Uint32Array ? a : new Uint32Array(a.buffer, a.byteOffset, a.length);
  return {
    idsKeep: u32(m.idsKeep),
    idsRestore: u32(m.idsRestore),
    mask: m.mask instanceof Float32Array ? m.mask : Float32Array.from(m.mask),
  };
}

/**
 * One pre-training step (the same step as a run's, L_cons included when `consWeight` > 0);
 * `images` is (B, C, S, S) normalised; masks from `batchMasks` or `randomMaskBatch`.
 */
export function trainStep(
  model: Model,
  images: Float32Array,
  masks: Parameters<typeof toMaskBatch>[0],
  options: StepOptionsInput,
): Promise<StepResult> {
  const o = parseOptions(StepOptionsSchema, options, 'step options');
  const m = toMaskBatch(masks);
  return model.trainStep(images, m.idsKeep, m.idsRestore, m.mask, o);
}

/**
 * MAE random masking for `batch` images of `numPatches` patches (`randomMasking` per image): kept
 * ids ascending (the order VasoMIM feeds them), restore order, mask. `random` defaults to
 * Math.random; pre-training draws seeded masks with `batchMasks`.
 */
export function randomMaskBatch(
  batch: number,
  numPatches: number,
  maskRatio: number,
  random: () => number = Math.random,
): MaskBatch {
  const { lenKeep } = maskCounts(numPatches, maskRatio);
  const source = { int: (n: number) => Math.min(n - 1, Math.floor(random() * n)) };
  const out = {
    idsKeep: new Int32Array(batch * lenKeep),
    idsRestore: new Int32Array(batch * numPatches),
    mask: new Uint8Array(batch * numPatches),
  };
  for (let b = 0; b < batch; b++) {
    const m = randomMasking(numPatches, maskRatio, source);
    out.idsKeep.set(m.idsKeep, b * lenKeep);
    out.idsRestore.set(m.idsRestore, b * numPatches);
    out.mask.set(m.mask, b * numPatches);
  }
  return toMaskBatch(out);
}
