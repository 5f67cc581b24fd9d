// Loads the Rust addon (bindings/, built by `npm run build:native`). Set VASOMIM_NATIVE to the
// path of another build of it (e.g. a CUDA build) to use that one instead.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import type * as Native from '../../bindings/index.js';

/** The package root: the nearest folder above this file whose package.json is vasomim's. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'vasomim') return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('vasomim: cannot find the package root (package.json named "vasomim")');
    dir = up;
  }
}

function load(): typeof Native {
  const require = createRequire(import.meta.url);
  if (process.env.VASOMIM_NATIVE) process.env.NAPI_RS_NATIVE_LIBRARY_PATH = process.env.VASOMIM_NATIVE;
  const entry = join(packageRoot(), 'bindings', 'index.js');
  if (!existsSync(entry)) {
    throw new Error('vasomim: the native addon is not built; run `npm run build` (needs cargo) in the package folder');
  }
  try {
    // bindings/index.js (napi-rs) loads bindings/vasomim.<platform>.node, else the platform package
    // vasomim-<platform> that npm installed as an optional dependency (docs/RELEASE.md).
    return require(entry) as typeof Native;
  } catch (e) {
    throw new Error(
      `vasomim: cannot load the native addon (${(e as Error).message.split('\n')[0]}). With no prebuilt package ` +
        `for ${process.platform}-${process.arch}, build it from source: \`node scripts/install.mjs\` in ` +
        `${packageRoot()} (needs cargo)`,
    );
  }
}

export const native: typeof Native = load();
export type {
  DecodedImage,
  FilterOptions,
  MapOptions,
  MapOutcome,
  VesselnessResult,
  ProbeResult,
  FrameFile,
} from '../../bindings/index.js';
export type { Features, LoadInfo, Model, Reconstruction, StepResult } from '../../bindings/index.js';

/** The package's version (package.json). */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}
export type { SegmentorLoadInfo, SegmentorStepResult, Segmentor } from '../../bindings/index.js';
/** Options of `SegmentationModel.fromPretrained` (the core's `PretrainedInit` and the device). */
export type PretrainedOptions = Parameters<typeof Native.SegmentationModel.fromPretrained>[1];
export type { SegmentationInitInfo, SegmentationModel, SegmentationStepResult } from '../../bindings/index.js';
export type {
  DetectionFrame,
  DetectionInitInfo,
  DetectionModel,
  DetectionOutput,
  DetectionStepResult,
} from '../../bindings/index.js';
