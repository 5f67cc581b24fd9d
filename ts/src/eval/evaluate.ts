// The evaluation job: run a Predictor over a segmentation dataset, choose the threshold of a soft
// binary output on the tuning split (train), apply it to the evaluation split (test), and write
// per-image.csv, summary.json, thresholds.csv and contact-sheet.png into the output folder
// (each atomically). The predictor is pluggable (./predictor.ts).
import { mkdirSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';

import { EvaluateSchema, type EvaluateConfig, type EvaluateInput, type SplitName } from '../config/segmentation.js';
import { ConfigError, parseOptions } from '../config/vessels.js';
import { DatasetError } from '../data/dataset.js';
import {
  checkSegmentationSamples,
  loadSegmentationSample,
  openSegmentationDataset,
  splitSamples,
  type LoadedSample,
  type SegmentationDataset,
  type SegmentationSample,
} from '../segmentation/dataset.js';
import { writeFileAtomic, writePng } from '../util/png.js';
import { binaryMetrics, METRIC_NAMES, multiClassMetrics, summarize, type MetricName, type Stat } from './metrics.js';
import type { Prediction, Predictor } from './predictor.js';
import { contactSheet, fitPanel, type SheetRow } from './sheet.js';

export interface EvalProgress {
  phase: 'tune' | 'eval';
  split: SplitName;
  done: number;
  total: number;
}

export interface ImageResult {
  id: string;
  width: number;
  height: number;
  metrics: Record<MetricName, number>;
  /** Multi-class: per-class DSC (NaN where the class is in neither prediction nor truth). */
  classDsc?: number[];
}

export interface ThresholdChoice {
  value: number;
  /** 'tuned' on `split`, or 'fixed' (given). */
  how: 'tuned' | 'fixed';
  split?: SplitName;
  /** Mean DSC on the tuning split at the chosen threshold. */
  meanDsc?: number;
  images?: number;
  seconds?: number;
  /** (threshold, mean DSC) over the grid. */
  curve?: [number, number][];
}

export interface EvalSummary {
  dataset: { root: string; format: string; task: string | null; classes: string[] };
  predictor: Record<string, unknown> & { name: string };
  threshold: ThresholdChoice | null;
  split: SplitName;
  images: number;
  metrics: Record<MetricName, Stat>;
  /** Multi-class: mean ± std of each class's DSC over the images where it occurs. */
  perClass?: { label: number; name: string; dsc: Stat }[];
  timing: { seconds: number; imagesPerSecond: number; jobs: number };
  machine: { cpus: number; model: string };
  files: { perImage: string; summary: string; thresholds: string | null; contactSheet: string | null };
  contactSheet: { worst: string[]; best: string[] } | null;
}

/**
 * Run `fn` over `items` with at most `jobs` in flight; results in input order. When items fail,
 * no new one starts, the ones in flight finish, and the error of the first failed item in input
 * order is thrown: items start in order, so that one has always run, and which error is reported
 * does not depend on timing or `jobs`.
 */
async function pool<T, R>(
  items: T[],
  jobs: number,
  fn: (item: T, i: number) => Promise<R>,
  onDone: (n: number) => void,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  const failed = new Map<number, unknown>();
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (failed.size === 0) {
      const i = next++;
      if (i >= items.length) return;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (e) {
        failed.set(i, e);
        return;
      }
      onDone(++done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, items.length) }, worker));
  if (failed.size) throw failed.get(Math.min(...failed.keys()));
  return out;
}

/** The grid of thresholds k / steps, k = 1 .. steps - 1. */
export function thresholdGrid(steps: number): number[] {
  return Array.from({ length: steps - 1 }, (_, k) => (k + 1) / steps);
}

/**
 * Per-threshold DSC of one image for every grid threshold (prediction = score >= t), in one pass:
 * each pixel falls into the bin of the largest grid threshold it reaches.
 */
export function diceCurve(scores: ArrayLike<number>, truth: ArrayLike<number>, grid: number[]): Float64Array {
  const m = grid.length;
  const pos = new Float64Array(m + 1);
  const neg = new Float64Array(m + 1);
  const steps = m + 1;
  let g = 0;
  for (let i = 0; i < scores.length; i++) {
    const p = scores[i]!;
    // b = number of grid thresholds <= p (grid[j] = (j + 1) / steps)
    let b = Math.min(m, Math.max(0, Math.floor(p * steps)));
    while (b < m && grid[b]! <= p) b++;
    while (b > 0 && grid[b - 1]! > p) b--;
    if (truth[i]) {
      pos[b]!++;
      g++;
    } else neg[b]!++;
  }
  const out = new Float64Array(m);
  let tp = 0;
  let fp = 0;
  for (let j = m - 1; j >= 0; j--) {
    tp += pos[j + 1]!;
    fp += neg[j + 1]!;
    const den = tp + fp + g;
    out[j] = den === 0 ? 1 : (2 * tp) / den;
  }
  return out;
}

/** Labels of a prediction: binary probs >= threshold, K classes: the argmax (ties: the lower class). */
export function labelsOf(pred: Prediction, threshold: number): Uint8Array {
  const n = pred.width * pred.height;
  const out = new Uint8Array(n);
  if (pred.classes === 1) {
    for (let i = 0; i < n; i++) out[i] = pred.probs[i]! >= threshold ? 1 : 0;
    return out;
  }
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < pred.classes; c++) if (pred.probs[c * n + i]! > pred.probs[best * n + i]!) best = c;
    out[i] = best;
  }
  return out;
}

async function predictSample(
  ds: SegmentationDataset,
  predictor: Predictor,
  s: SegmentationSample,
): Promise<{ x: LoadedSample; pred: Prediction }> {
  const x = await loadSegmentationSample(ds, s);
  const pred = await predictor.predict({ width: x.width, height: x.height, pixels: x.image });
  const want = ds.kind === 'binary' ? 1 : ds.classes.length;
  if (
    pred.width !== x.width ||
    pred.height !== x.height ||
    pred.classes !== want ||
    pred.probs.length !== pred.classes * x.width * x.height
  )
    throw new Error(
      `predictor ${predictor.name} returned ${pred.classes}x${pred.width}x${pred.height} for ${s.image} ` +
        `(${x.width}x${x.height}), expected ${want} class map(s) at the image size`,
    );
  return { x, pred };
}

/**
 * Evaluate `predictor` on the dataset at `dataPath`. Binary tasks: unless `threshold` is given,
 * the threshold maximising the mean per-image DSC on `tuneSplit` over the grid k/steps is chosen
 * (ties: the smallest), then metrics are computed on `evalSplit`.
 */
export async function evaluateSegmentation(
  dataPath: string,
  predictor: Predictor,
  options: EvaluateInput,
  onProgress?: (p: EvalProgress) => void,
): Promise<EvalSummary> {
  const cfg: EvaluateConfig = parseOptions(EvaluateSchema, options, 'evaluate options');
  const ds = openSegmentationDataset(dataPath, cfg.data);
  const jobs = cfg.jobs || availableParallelism();
  const binary = ds.kind === 'binary';
  const tuneNeeded = binary && cfg.threshold === undefined;
  // A threshold tuned on the split whose metrics are reported makes those metrics optimistic.
  if (tuneNeeded && cfg.tuneSplit === cfg.evalSplit)
    throw new ConfigError(
      `invalid evaluate options:\ntuneSplit: tuneSplit and evalSplit are both '${cfg.evalSplit}': the threshold ` +
        'would be tuned on the split the metrics are reported on; tune on another split or give a fixed threshold',
    );
  const evalSamples = splitSamples(ds, cfg.evalSplit, cfg.limit);
  const tuneSamples = tuneNeeded ? splitSamples(ds, cfg.tuneSplit, cfg.limit) : [];
  const want = binary ? 1 : ds.classes.length;
  if (predictor.classes !== undefined && predictor.classes !== want)
    throw new DatasetError(
      `${ds.root}: predictor ${predictor.name} outputs ` +
        `${predictor.classes === 1 ? '1 map (binary)' : `${predictor.classes} classes`} but the dataset is ` +
        `${binary ? 'binary' : `${want} classes (${ds.classes.length - 1} foreground)`}`,
    );
  await checkSegmentationSamples([...tuneSamples, ...evalSamples]);
  mkdirSync(cfg.out, { recursive: true });

  let threshold: ThresholdChoice | null = null;
  if (tuneNeeded) {
    const t0 = performance.now();
    const grid = thresholdGrid(cfg.steps);
    const sum = new Float64Array(grid.length);
    onProgress?.({ phase: 'tune', split: cfg.tuneSplit, done: 0, total: tuneSamples.length });
    const curves = await pool(
      tuneSamples,
      jobs,
      async (s) => {
        const { x, pred } = await predictSample(ds, predictor, s);
        return diceCurve(pred.probs, x.truth, grid);
      },
      (done) => onProgress?.({ phase: 'tune', split: cfg.tuneSplit, done, total: tuneSamples.length }),
    );
    // Summed in input order, not completion order, so the sums do not depend on `jobs`.
    for (const c of curves) for (let j = 0; j < grid.length; j++) sum[j]! += c[j]!;
    let best = 0;
    for (let j = 1; j < grid.length; j++) if (sum[j]! > sum[best]!) best = j;
    const curve = grid.map((t, j) => [t, sum[j]! / tuneSamples.length] as [number, number]);
    threshold = {
      value: grid[best]!,
      how: 'tuned',
      split: cfg.tuneSplit,
      meanDsc: curve[best]![1],
      images: tuneSamples.length,
      seconds: (performance.now() - t0) / 1000,
      curve,
    };
  } else if (binary) threshold = { value: cfg.threshold!, how: 'fixed' };

  const t0 = performance.now();
  const panels = new Map<string, SheetRow>();
  onProgress?.({ phase: 'eval', split: cfg.evalSplit, done: 0, total: evalSamples.length });
  const results = await pool(
    evalSamples,
    jobs,
    async (s): Promise<ImageResult> => {
      const { x, pred } = await predictSample(ds, predictor, s);
      const labels = labelsOf(pred, threshold?.value ?? 0.5);
      const { width, height } = x;
      let metrics: Record<MetricName, number>;
      let classDsc: number[] | undefined;
      if (binary) metrics = { ...binaryMetrics(labels, x.truth, width, height, pred.probs) };
      else {
        const per = multiClassMetrics(labels, x.truth, width, height, pred.classes, pred.probs);
        const present = per.filter((c) => c.present);
        metrics = Object.fromEntries(
          METRIC_NAMES.map((k) => [k, present.length ? summarize(present.map((c) => c[k])).mean : 1]),
        ) as Record<MetricName, number>;
        classDsc = per.map((c) => (c.present ? c.dsc : NaN));
      }
      if (cfg.examples > 0)
        panels.set(s.id, {
          image: fitPanel(x.image, width, height, cfg.panel),
          truth: fitPanel(x.truth, width, height, cfg.panel),
          pred: fitPanel(labels, width, height, cfg.panel),
        });
      return { id: s.id, width, height, metrics, classDsc };
    },
    (done) => onProgress?.({ phase: 'eval', split: cfg.evalSplit, done, total: evalSamples.length }),
  );
  const seconds = (performance.now() - t0) / 1000;

  // outputs
  const files = {
    perImage: join(cfg.out, 'per-image.csv'),
    summary: join(cfg.out, 'summary.json'),
    thresholds: threshold?.curve ? join(cfg.out, 'thresholds.csv') : null,
    contactSheet: cfg.examples > 0 ? join(cfg.out, 'contact-sheet.png') : null,
  };
  const classNames = ds.classes.slice(1);
  const header = [
    'id',
    'width',
    'height',
    ...METRIC_NAMES,
    ...(binary ? [] : classNames.map((n) => `dsc_${n.replace(/[^\w.-]+/g, '_')}`)),
  ];
  const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(6) : '');
  const csvField = (s: string) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  const rows = results.map((r) =>
    [
      csvField(r.id),
      r.width,
      r.height,
      ...METRIC_NAMES.map((k) => fmt(r.metrics[k])),
      ...(r.classDsc ?? []).map(fmt),
    ].join(','),
  );
  writeFileAtomic(files.perImage, [header.join(','), ...rows].join('\n') + '\n');
  if (files.thresholds && threshold?.curve)
    writeFileAtomic(
      files.thresholds,
      ['threshold,mean_dsc', ...threshold.curve.map(([t, d]) => `${t},${d.toFixed(6)}`)].join('\n') + '\n',
    );

  let sheet: EvalSummary['contactSheet'] = null;
  if (files.contactSheet) {
    const byDsc = [...results].sort(
      (a, b) => a.metrics.dsc - b.metrics.dsc || a.id.localeCompare(b.id, 'en', { numeric: true }),
    );
    const k = Math.min(cfg.examples, Math.floor(byDsc.length / 2) || 1);
    const worst = byDsc.slice(0, k);
    const best = byDsc
      .slice(-k)
      .reverse()
      .filter((r) => !worst.includes(r));
    sheet = { worst: worst.map((r) => r.id), best: best.map((r) => r.id) };
    writePng(
      files.contactSheet,
      contactSheet(
        [...worst, ...best].map((r) => panels.get(r.id)!),
        cfg.panel,
        binary,
      ),
    );
  }

  const metrics = Object.fromEntries(
    METRIC_NAMES.map((k) => [k, summarize(results.map((r) => r.metrics[k]))]),
  ) as Record<MetricName, Stat>;
  const summary: EvalSummary = {
    dataset: { root: ds.root, format: ds.format, task: ds.config.task ?? null, classes: ds.classes },
    predictor: { name: predictor.name, ...predictor.describe() },
    threshold: threshold && { ...threshold, curve: undefined },
    split: cfg.evalSplit,
    images: results.length,
    metrics,
    timing: { seconds, imagesPerSecond: results.length / Math.max(seconds, 1e-9), jobs },
    machine: { cpus: availableParallelism(), model: cpus()[0]?.model ?? 'unknown' },
    files,
    contactSheet: sheet,
  };
  if (!binary)
    summary.perClass = classNames.map((name, c) => ({
      label: c + 1,
      name,
      dsc: summarize(results.map((r) => r.classDsc![c]!)),
    }));
  writeFileAtomic(files.summary, JSON.stringify(summary, null, 2) + '\n');
  return summary;
}
