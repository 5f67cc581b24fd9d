// The UNeXt-S vessel segmentor: create / load, train one step at a time (the caller owns the poly
// learning-rate schedule), predict vessel probabilities. Thin wrappers over the native handle.
import { native } from '../native.js';
import type { Segmentor, SegmentorLoadInfo, SegmentorStepResult } from '../native.js';

export type { Segmentor, SegmentorLoadInfo, SegmentorStepResult };

/** The segmentor's config (camelCase, as the native side takes and returns it). */
export interface SegmentorConfig {
  /** Input channels: 3 as in the paper (grey replicated), 1 for grey-native mode. */
  inChans: 1 | 3;
}

/** A freshly initialised UNeXt-S (PyTorch's default init; deterministic in `seed`) on `device` (cpu, cuda[:N]). */
export function createSegmentor(config: { inChans?: 1 | 3 } = {}, seed = 0, device = 'cpu'): Segmentor {
  return native.Segmentor.create({ inChans: config.inChans ?? 3 }, seed, device);
}

/**
 * Load our safetensors, the authors' `unext.pth` or a pre-training checkpoint holding the
 * segmentor under `seg_model.`. With `strict` (default) missing or unexpected keys are an error.
 */
export function loadSegmentor(path: string, options: { strict?: boolean; device?: string } = {}): Promise<Segmentor> {
  return native.Segmentor.load(path, options);
}

/** The paper's schedule: lr · (1 − epoch/epochs)^0.9 (per epoch). */
export function polyLr(baseLr: number, epoch: number, epochs: number, power = 0.9): number {
  return baseLr * Math.pow(Math.max(0, 1 - epoch / epochs), power);
}
