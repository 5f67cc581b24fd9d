// Learning-rate schedule (METHOD.md §8) as a pure function of the (fractional) epoch, and the
// effective-batch arithmetic. Per-iteration, as MAE: t = epoch + iteration / itersPerEpoch.

export interface LrSchedule {
  /** Peak learning rate (lr = blr * effectiveBatch / 256 when derived from blr). */
  lr: number;
  minLr: number;
  warmupEpochs: number;
  epochs: number;
}

/** Linear warm-up to lr, then half-cosine to minLr at the last epoch. */
export function lrAt(t: number, s: LrSchedule): number {
  if (t < s.warmupEpochs) return (s.lr * t) / s.warmupEpochs;
  const span = s.epochs - s.warmupEpochs;
  const progress = span > 0 ? (t - s.warmupEpochs) / span : 1;
  return s.minLr + (s.lr - s.minLr) * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress)));
}

/** Fractional epoch of iteration `it` (0-based) of `epoch` with `itersPerEpoch` iterations. */
export function fractionalEpoch(epoch: number, it: number, itersPerEpoch: number): number {
  return epoch + it / itersPerEpoch;
}

/** lr = blr * effective batch / 256 (MAE's linear scaling rule). */
export function absoluteLr(blr: number, effectiveBatch: number): number {
  return (blr * effectiveBatch) / 256;
}

/**
 * Split an effective batch over devices and accumulation steps: micro-batch per device is the
 * largest divisor of effectiveBatch / world that fits `maxMicroBatch`.
 */
export function accumulation(
  effectiveBatch: number,
  world: number,
  maxMicroBatch: number,
): { microBatch: number; accumSteps: number } {
  if (effectiveBatch % world !== 0) throw new Error(`batch ${effectiveBatch} is not divisible by ${world} devices`);
  const perDevice = effectiveBatch / world;
  for (let m = Math.min(perDevice, maxMicroBatch); m >= 1; m--) {
    if (perDevice % m === 0) return { microBatch: m, accumSteps: perDevice / m };
  }
  return { microBatch: 1, accumSteps: perDevice };
}
