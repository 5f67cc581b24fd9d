// Node API of the vesselness engine: filter one image, map one image, map a whole dataset tree.
import { existsSync, mkdirSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';

import {
  FilterSchema,
  MapSchema,
  parseOptions,
  VesselsJobSchema,
  type FilterConfig,
  type FilterInput,
  type MapInput,
  type VesselsJobConfig,
  type VesselsJobInput,
} from '../config/vessels.js';
import { native } from '../native.js';
import { discover, type MapTask } from './discover.js';

/** A grey image in memory: row-major, values in 8-bit units (0..255). */
export interface GreyImage {
  width: number;
  height: number;
  pixels: Float32Array | Uint8Array | ArrayLike<number>;
}

export interface VesselnessResponse {
  width: number;
  height: number;
  dtype: 'float32' | 'float64';
  data: Float32Array | Float64Array;
  max: number;
}

export interface VesselMap {
  width: number;
  height: number;
  /** 0 or 255 per pixel. */
  data: Uint8Array;
}

/** Raw responses default to f64 (parity), maps to f32 (speed; identical maps on the samples). */
function nativeFilter(f: FilterConfig, defaultPrecision: 'f32' | 'f64') {
  return {
    filter: f.filter,
    sigmas: f.sigmas,
    blackRidges: !f.whiteRidges,
    alpha: f.alpha,
    beta: f.beta,
    gamma: f.gamma,
    precision: f.precision ?? defaultPrecision,
  };
}

async function pixelsOf(image: string | GreyImage): Promise<{ width: number; height: number; pixels: Float32Array }> {
  if (typeof image === 'string') return native.readImage(image);
  const { width, height } = image;
  const pixels = image.pixels instanceof Float32Array ? image.pixels : Float32Array.from(image.pixels);
  return { width, height, pixels };
}

/** Decode an image file (PNG/JPEG/BMP/TIFF, 8/16-bit, grey or RGB) to grey in 8-bit units. */
export async function readImage(
  path: string,
): Promise<GreyImage & { pixels: Float32Array; bitDepth: number; channels: number }> {
  return native.readImage(path);
}

/** Raw Sato/Frangi response of an image (file path or pixels). */
export async function vesselness(image: string | GreyImage, options: FilterInput = {}): Promise<VesselnessResponse> {
  const f = parseOptions(FilterSchema, options, 'vesselness options');
  const { width, height, pixels } = await pixelsOf(image);
  const r = await native.vesselness(pixels, width, height, nativeFilter(f, 'f64'));
  return { width: r.width, height: r.height, dtype: r.dtype as 'float32' | 'float64', data: r.data, max: r.max };
}

/** Raw response of an image file written to `.npy` (raw) or `.png` (display, scaled to max). */
export async function vesselnessToFile(input: string, output: string, options: FilterInput = {}) {
  const f = parseOptions(FilterSchema, options, 'vesselness options');
  return native.vesselnessFile(input, output, nativeFilter(f, 'f64'));
}

/** The VasoMIM binary vessel map ({0, 255}) of an image. */
export async function vesselMap(
  image: string | GreyImage,
  options: { filter?: FilterInput; map?: MapInput } = {},
): Promise<VesselMap> {
  const f = parseOptions(FilterSchema, options.filter ?? {}, 'filter options');
  const m = parseOptions(MapSchema, options.map ?? {}, 'map options');
  const { width, height, pixels } = await pixelsOf(image);
  const data = await native.vesselMap(pixels, width, height, nativeFilter(f, 'f32'), m);
  return { width, height, data };
}

/**
 * Vessel maps for an explicit list of (input image, output PNG) pairs, in Rust threads; one
 * outcome per file (a bad file fails alone). `prepareVesselMaps` is the dataset-tree job.
 */
export async function writeVesselMaps(
  pairs: { input: string; output: string }[],
  options: { filter?: FilterInput; map?: MapInput; jobs?: number } = {},
): Promise<FileOutcome[]> {
  const f = parseOptions(FilterSchema, options.filter ?? {}, 'filter options');
  const m = parseOptions(MapSchema, options.map ?? {}, 'map options');
  const out = await native.vesselMapFiles(pairs, nativeFilter(f, 'f32'), m, options.jobs ?? 0);
  return out.map((o) => ({
    input: o.input,
    output: o.output,
    status: o.ok ? 'written' : 'failed',
    error: o.error ?? undefined,
    millis: o.millis,
  }));
}

export interface PrepareProgress {
  total: number;
  done: number;
  processed: number;
  skipped: number;
  failed: number;
  /** Outcome of the files finished since the last call. */
  recent: FileOutcome[];
}

export interface FileOutcome {
  input: string;
  output: string;
  status: 'written' | 'skipped' | 'failed';
  error?: string;
  millis?: number;
}

export interface PrepareSummary {
  root: string;
  sources: string[];
  total: number;
  processed: number;
  skipped: number;
  failed: number;
  excluded: number;
  interrupted: boolean;
  seconds: number;
  /** Files that failed, in name order. */
  failures: { input: string; error: string }[];
}

export interface PrepareControl {
  /** Checked between chunks of work: when it returns true the job stops cleanly. */
  shouldStop?: () => boolean;
}

/**
 * Vessel maps for every image under `root` (XA-170K layout: `<source>/` -> `<source>_frangi/`;
 * a single folder of images works too). Existing maps are skipped unless `overwrite`, so an
 * interrupted run resumes; writes are atomic; a bad file fails alone.
 */
export async function prepareVesselMaps(
  root: string,
  options: VesselsJobInput = {},
  onProgress?: (p: PrepareProgress) => void,
  control: PrepareControl = {},
): Promise<PrepareSummary> {
  const cfg: VesselsJobConfig = parseOptions(VesselsJobSchema, options, 'vessels options');
  const t0 = performance.now();
  const found = discover(root, { out: cfg.out, suffix: cfg.suffix, exclude: cfg.exclude });
  const total = found.tasks.length + found.collisions.length;
  if (total === 0) {
    throw new Error(
      `${root}: no images found (looked for .png .jpg .jpeg .bmp .tif .tiff in it and its subfolders` +
        (found.excluded ? `; ${found.excluded} excluded by ${cfg.exclude.join(' ')}` : '') +
        ')',
    );
  }
  const summary: PrepareSummary = {
    root,
    sources: found.sources,
    total,
    processed: 0,
    skipped: 0,
    failed: 0,
    excluded: found.excluded,
    interrupted: false,
    seconds: 0,
    failures: [],
  };
  let done = 0;
  const report = (recent: FileOutcome[]) => {
    for (const r of recent) {
      if (r.status === 'written') summary.processed++;
      else if (r.status === 'skipped') summary.skipped++;
      else {
        summary.failed++;
        summary.failures.push({ input: r.input, error: r.error ?? 'failed' });
      }
    }
    done += recent.length;
    onProgress?.({
      total,
      done,
      processed: summary.processed,
      skipped: summary.skipped,
      failed: summary.failed,
      recent,
    });
  };

  report(
    found.collisions.map((c) => ({
      input: c.input,
      output: c.output,
      status: 'failed',
      error: `output ${c.output} is also the map of ${c.other}`,
    })),
  );

  // Output folders: create, and clear temporary files a killed run may have left.
  const dirErrors = new Map<string, string>();
  for (const dir of new Set(found.tasks.map((t) => dirname(t.output)))) {
    try {
      mkdirSync(dir, { recursive: true });
      for (const name of readdirSync(dir)) if (name.includes(native.tempMarker())) unlinkSync(join(dir, name));
    } catch (e) {
      dirErrors.set(dir, `cannot create output folder ${dir}: ${(e as Error).message}`);
    }
  }

  const todo: MapTask[] = [];
  const upfront: FileOutcome[] = [];
  for (const t of found.tasks) {
    const dirError = dirErrors.get(dirname(t.output));
    if (dirError) upfront.push({ input: t.input, output: t.output, status: 'failed', error: dirError });
    else if (!cfg.overwrite && existsSync(t.output) && statSync(t.output).size > 0)
      upfront.push({ input: t.input, output: t.output, status: 'skipped' });
    else todo.push(t);
  }
  if (upfront.length) report(upfront);

  const threads = cfg.jobs;
  const chunk = Math.max(8, 4 * (threads || (await import('node:os')).availableParallelism()));
  const filter = nativeFilter(cfg.filter, 'f32');
  for (let i = 0; i < todo.length; i += chunk) {
    if (control.shouldStop?.()) {
      summary.interrupted = true;
      break;
    }
    const part = todo.slice(i, i + chunk);
    const outcomes = await native.vesselMapFiles(
      part.map((t) => ({ input: t.input, output: t.output })),
      filter,
      cfg.map,
      threads,
    );
    report(
      outcomes.map((o) => ({
        input: o.input,
        output: o.output,
        status: o.ok ? 'written' : 'failed',
        error: o.error ?? undefined,
        millis: o.millis,
      })),
    );
  }
  // Failures arrive by kind (name clashes, folders, chunks of threads); list them in name order.
  summary.failures.sort((a, b) => (a.input < b.input ? -1 : a.input > b.input ? 1 : 0));
  summary.seconds = (performance.now() - t0) / 1000;
  return summary;
}
