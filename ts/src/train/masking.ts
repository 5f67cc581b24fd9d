// Masking policies (METHOD.md §5), as pure functions of their inputs and a seeded RNG.
//
//   random         MAE: num_mask patches chosen uniformly.
//   vessel-guided  n_g = min(n_target(epoch), #{p_i > 0}) patches drawn without replacement with
//                  probability proportional to the per-patch guidance mass (Gumbel-top-k on
//                  log p_i + Gumbel noise, the same law as sequential draws on the remaining
//                  mass), the other num_mask - n_g masked patches uniformly from the rest; an
//                  image with no mass falls back to random masking.
//
// Outputs follow MAE: ids_keep (ascending), ids_restore (position of each patch in
// [ids_keep, ids_masked]), mask (1 = masked) in the original patch order.
import type { PretrainConfig } from '../config/pretrain.js';
import { Rng } from './rng.js';

export interface Mask {
  /** Kept patch indices, ascending, length lenKeep. */
  idsKeep: Int32Array;
  /** For patch i, its position in the shuffled order [idsKeep, idsMasked]. */
  idsRestore: Int32Array;
  /** 1 = masked, per patch in original order. */
  mask: Uint8Array;
  /** How many masked patches the guidance chose (0 for random masking). */
  guided: number;
}

/** len_keep = floor(L (1 - ratio)), num_mask = L - len_keep (MAE's rounding). */
export function maskCounts(numPatches: number, maskRatio: number): { lenKeep: number; numMask: number } {
  if (!Number.isInteger(numPatches) || numPatches < 1)
    throw new Error(`numPatches = ${numPatches} must be a positive integer`);
  if (!(maskRatio >= 0 && maskRatio < 1)) throw new Error(`maskRatio = ${maskRatio} must be in [0, 1)`);
  const lenKeep = Math.floor(numPatches * (1 - maskRatio));
  return { lenKeep, numMask: numPatches - lenKeep };
}

/** alpha_e = alpha_0 + ((e + 1) / E) (alpha_T - alpha_0), constant within epoch e of E. */
export function guidedAlpha(epoch: number, epochs: number, alpha0: number, alphaT: number): number {
  return alpha0 + ((epoch + 1) / epochs) * (alphaT - alpha0);
}

/** n_target = floor(num_mask * alpha_e). */
export function guidedTarget(numMask: number, epoch: number, epochs: number, alpha0: number, alphaT: number): number {
  return Math.max(0, Math.min(numMask, Math.floor(numMask * guidedAlpha(epoch, epochs, alpha0, alphaT))));
}

function finish(L: number, masked: Uint8Array, guided: number): Mask {
  const keep: number[] = [];
  const drop: number[] = [];
  for (let i = 0; i < L; i++) (masked[i] ? drop : keep).push(i);
  const idsRestore = new Int32Array(L);
  keep.forEach((p, k) => (idsRestore[p] = k));
  drop.forEach((p, k) => (idsRestore[p] = keep.length + k));
  return { idsKeep: Int32Array.from(keep), idsRestore, mask: masked, guided };
}

/** What uniform masking draws from: `Rng` (seeded), or any source of uniform integers in [0, n). */
export type UniformInt = Pick<Rng, 'int'>;

/** Fill `count` more masked patches uniformly from the unmasked ones. */
function maskUniform(masked: Uint8Array, count: number, rng: UniformInt): void {
  const free: number[] = [];
  for (let i = 0; i < masked.length; i++) if (!masked[i]) free.push(i);
  // partial Fisher–Yates: the first `count` of a uniform permutation
  for (let k = 0; k < count; k++) {
    const j = k + rng.int(free.length - k);
    const t = free[k]!;
    free[k] = free[j]!;
    free[j] = t;
    masked[free[k]!] = 1;
  }
}

/** MAE random masking of one image: num_mask patches chosen uniformly. */
export function randomMasking(numPatches: number, maskRatio: number, rng: UniformInt): Mask {
  const { numMask } = maskCounts(numPatches, maskRatio);
  const masked = new Uint8Array(numPatches);
  maskUniform(masked, numMask, rng);
  return finish(numPatches, masked, 0);
}

/**
 * Vessel-guided masking of one image. `mass[i]` is the guidance mass of patch i (sum of G over its
 * pixels; any non-negative scale), `nTarget` the schedule's guided count for this epoch.
 */
export function guidedMasking(mass: ArrayLike<number>, maskRatio: number, nTarget: number, rng: Rng): Mask {
  const L = mass.length;
  const { numMask } = maskCounts(L, maskRatio);
  let total = 0;
  for (let i = 0; i < L; i++) {
    const m = mass[i]!;
    if (!(m >= 0) || !Number.isFinite(m))
      throw new Error(`guidance mass of patch ${i} is ${m}: must be finite and >= 0`);
    total += m;
  }
  const masked = new Uint8Array(L);
  if (total === 0 || nTarget <= 0) {
    maskUniform(masked, numMask, rng);
    return finish(L, masked, 0);
  }
  // Gumbel-top-k over the patches with p_i > 0 (p_i = s_i / (sum s + 1e-6), as the reference).
  const keys: { i: number; k: number }[] = [];
  for (let i = 0; i < L; i++) {
    const p = mass[i]! / (total + 1e-6);
    if (p > 0) keys.push({ i, k: Math.log(p) + rng.gumbel() });
  }
  const nG = Math.min(nTarget, keys.length, numMask);
  keys.sort((a, b) => b.k - a.k || a.i - b.i);
  for (let k = 0; k < nG; k++) masked[keys[k]!.i] = 1;
  maskUniform(masked, numMask - nG, rng);
  return finish(L, masked, nG);
}

export type MaskingPolicy = 'random' | 'vessel-guided';

export interface BatchMaskOptions {
  policy: MaskingPolicy;
  maskRatio: number;
  epoch: number;
  epochs: number;
  alpha0: number;
  alphaT: number;
  seed: number;
}

/** The batch-mask options of a pre-training run in `epoch`; `policy` is the run's unless given. */
export function runMaskOptions(
  cfg: PretrainConfig,
  epoch: number,
  policy: MaskingPolicy = cfg.masking,
): BatchMaskOptions {
  const { maskRatio, epochs, alpha0, alphaT, seed } = cfg;
  return { policy, maskRatio, epoch, epochs, alpha0, alphaT, seed };
}

export interface BatchMasks {
  /** (B, lenKeep) row-major. */
  idsKeep: Int32Array;
  /** (B, L) row-major. */
  idsRestore: Int32Array;
  /** (B, L) row-major, 1 = masked. */
  mask: Uint8Array;
  /** Masked patches chosen by the guidance, per image. */
  guided: Int32Array;
  lenKeep: number;
}

/**
 * Masks for a batch. `sampleIds` are the samples' indices in the epoch's dataset order: each
 * image's draw comes from Rng.forKeys(seed, epoch, sampleId), so masks do not depend on batch
 * composition, worker count or where a run was resumed. `mass` is (B, L) for the guided policy.
 */
export function batchMasks(
  o: BatchMaskOptions,
  numPatches: number,
  sampleIds: ArrayLike<number>,
  mass?: ArrayLike<number>,
): BatchMasks {
  const B = sampleIds.length;
  const L = numPatches;
  const { lenKeep, numMask } = maskCounts(L, o.maskRatio);
  if (o.policy === 'vessel-guided' && (!mass || mass.length !== B * L))
    throw new Error(
      `vessel-guided masking needs the (B, L) = (${B}, ${L}) guidance mass; got ${mass ? mass.length : 'none'} values`,
    );
  const nTarget = o.policy === 'vessel-guided' ? guidedTarget(numMask, o.epoch, o.epochs, o.alpha0, o.alphaT) : 0;
  const out: BatchMasks = {
    idsKeep: new Int32Array(B * lenKeep),
    idsRestore: new Int32Array(B * L),
    mask: new Uint8Array(B * L),
    guided: new Int32Array(B),
    lenKeep,
  };
  for (let b = 0; b < B; b++) {
    const rng = Rng.forKeys(o.seed, o.epoch, sampleIds[b]!);
    const m =
      o.policy === 'random'
        ? randomMasking(L, o.maskRatio, rng)
        : guidedMasking(Array.prototype.slice.call(mass!, b * L, (b + 1) * L) as number[], o.maskRatio, nTarget, rng);
    out.idsKeep.set(m.idsKeep, b * lenKeep);
    out.idsRestore.set(m.idsRestore, b * L);
    out.mask.set(m.mask, b * L);
    out.guided[b] = m.guided;
  }
  return out;
}
