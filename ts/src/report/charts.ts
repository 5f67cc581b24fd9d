// The charts of a report, as data for uPlot (drawn in the page): one x axis, one or more series
// on it, axis labels with units. With several runs (--compare) each chart carries every run's
// series on the same axes, labelled `<run>: <series>`.
//
//   Chart          a chart's title, axes and aligned data
//   chartsFor      the charts of one kind of folder, over one or more folders of that kind
//   thin           long per-step series averaged down to at most MAX_POINTS points
import { METRIC_NAMES } from '../eval/metrics.js';
import type { FolderData, FolderKind } from './read.js';

export interface Chart {
  title: string;
  x: string;
  y: string;
  /** Plain number axis on a log scale (learning rates, gradient norms are not). */
  logY?: boolean;
  /** Y values are shares in [0, 1], shown as percent. */
  percent?: boolean;
  /** Draw points (short series: per-epoch values). */
  points?: boolean;
  /** Sorted x values, then one array per series (null where a series has no value at that x). */
  data: (number | null)[][];
  labels: string[];
}

/** Points per series in the page; longer per-step series are averaged in windows. */
export const MAX_POINTS = 2000;

type Series = { label: string; xs: number[]; ys: number[] };

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : Number.NaN);

/** `xs`, `ys` averaged over consecutive windows so at most `max` points remain (NaN values skipped). */
export function thin(xs: number[], ys: number[], max = MAX_POINTS): { xs: number[]; ys: number[] } {
  if (xs.length <= max) return { xs, ys };
  const w = Math.ceil(xs.length / max);
  const ox: number[] = [];
  const oy: number[] = [];
  for (let i = 0; i < xs.length; i += w) {
    let s = 0;
    let n = 0;
    for (let j = i; j < Math.min(xs.length, i + w); j++)
      if (Number.isFinite(ys[j]!)) {
        s += ys[j]!;
        n++;
      }
    ox.push(xs[Math.min(xs.length, i + w) - 1]!);
    oy.push(n ? s / n : Number.NaN);
  }
  return { xs: ox, ys: oy };
}

/** Series on one x axis: the union of their x values, null where a series has none. */
function align(series: Series[]): { data: (number | null)[][]; labels: string[] } {
  const kept = series.filter((s) => s.ys.some((v) => Number.isFinite(v)));
  const xs = [...new Set(kept.flatMap((s) => s.xs))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const data: (number | null)[][] = [xs];
  for (const s of kept) {
    const col: (number | null)[] = new Array<number | null>(xs.length).fill(null);
    s.xs.forEach((x, i) => (col[at.get(x)!] = Number.isFinite(s.ys[i]!) ? s.ys[i]! : null));
    data.push(col);
  }
  return { data, labels: kept.map((s) => s.label) };
}

/** A per-step series of `key`, thinned. */
function perStep(f: FolderData, key: string, label: string): Series {
  const t = thin(
    f.steps.map((s) => num(s.step)),
    f.steps.map((s) => num(s[key])),
  );
  return { label, ...t };
}

/** Mean of `key` over each epoch's steps. */
function epochMean(f: FolderData, key: string, label: string): Series {
  const sums = new Map<number, { s: number; n: number }>();
  for (const r of f.steps) {
    const v = num(r[key]);
    const e = num(r.epoch);
    if (!Number.isFinite(v) || !Number.isFinite(e)) continue;
    const a = sums.get(e) ?? { s: 0, n: 0 };
    a.s += v;
    a.n++;
    sums.set(e, a);
  }
  const es = [...sums.keys()].sort((a, b) => a - b);
  return { label, xs: es, ys: es.map((e) => sums.get(e)!.s / sums.get(e)!.n) };
}

/** `key` of the epoch records. */
function perEpoch(f: FolderData, key: string, label: string): Series {
  return { label, xs: f.epochs.map((r) => num(r.epoch)), ys: f.epochs.map((r) => num(r[key])) };
}

/** One chart over several folders: `make` gives one folder's series. */
function chart(folders: FolderData[], spec: Omit<Chart, 'data' | 'labels'>, make: (f: FolderData) => Series[]): Chart {
  const many = folders.length > 1;
  const series = folders.flatMap((f) =>
    make(f).map((s) => ({ ...s, label: many ? `${f.name}: ${s.label}` : s.label })),
  );
  return { ...spec, ...align(series) };
}

const LOSS_TERMS: [string, string][] = [
  ['loss', 'L (total)'],
  ['lossRec', 'L_rec'],
  ['lossCons', 'L_cons'],
];

function pretrainCharts(fs: FolderData[]): Chart[] {
  return [
    chart(fs, { title: 'Loss per step', x: 'step', y: 'loss' }, (f) => LOSS_TERMS.map(([k, l]) => perStep(f, k, l))),
    chart(fs, { title: 'Loss per epoch (mean over its steps)', x: 'epoch', y: 'loss', points: true }, (f) =>
      LOSS_TERMS.map(([k, l]) => epochMean(f, k, l)),
    ),
    chart(fs, { title: 'Learning rate', x: 'step', y: 'learning rate' }, (f) => [perStep(f, 'lr', 'lr')]),
    chart(fs, { title: 'Gradient norm per step', x: 'step', y: 'global L2 norm' }, (f) => [
      perStep(f, 'gradNorm', 'grad norm'),
    ]),
    chart(fs, { title: 'Gradient norm per epoch (mean)', x: 'epoch', y: 'global L2 norm', points: true }, (f) => [
      epochMean(f, 'gradNorm', 'grad norm'),
    ]),
    chart(fs, { title: 'Throughput per step (since the invocation started)', x: 'step', y: 'images / s' }, (f) => [
      perStep(f, 'imgPerSec', 'img/s'),
    ]),
    chart(fs, { title: 'Throughput per epoch (mean)', x: 'epoch', y: 'images / s', points: true }, (f) => [
      epochMean(f, 'imgPerSec', 'img/s'),
    ]),
    chart(
      fs,
      {
        title: 'Masked patches that contain vessel, against the schedule α',
        x: 'epoch',
        y: 'share of masked patches',
        percent: true,
        points: true,
      },
      (f) => [perEpoch(f, 'vesselShare', 'vessel share'), perEpoch(f, 'alpha', 'α (guided share)')],
    ),
  ];
}

function segmentorCharts(fs: FolderData[]): Chart[] {
  const terms: [string, string][] = [
    ['loss', 'loss (0.5 BCE + 0.5 Dice loss)'],
    ['bce', 'BCE'],
    ['dice', 'Dice loss'],
  ];
  return [
    chart(fs, { title: 'Loss per step', x: 'step', y: 'loss' }, (f) => terms.map(([k, l]) => perStep(f, k, l))),
    chart(fs, { title: 'Loss per epoch', x: 'epoch', y: 'loss', points: true }, (f) => [perEpoch(f, 'loss', 'loss')]),
    chart(fs, { title: 'Learning rate', x: 'epoch', y: 'learning rate', points: true }, (f) => [
      epochMean(f, 'lr', 'lr'),
    ]),
  ];
}

function finetuneCharts(fs: FolderData[]): Chart[] {
  return [
    chart(fs, { title: 'Training loss per step', x: 'step', y: 'loss (Dice + CE)' }, (f) => [
      perStep(f, 'loss', 'loss'),
      perStep(f, 'dice', 'Dice loss'),
      perStep(f, 'ce', 'CE'),
    ]),
    chart(fs, { title: 'Training loss per epoch', x: 'epoch', y: 'loss (Dice + CE)', points: true }, (f) => [
      perEpoch(f, 'loss', 'train loss'),
    ]),
    chart(fs, { title: 'Validation DSC per epoch', x: 'epoch', y: 'mean DSC', points: true }, (f) => [
      perEpoch(f, 'valDsc', 'val DSC'),
    ]),
    chart(fs, { title: 'Learning rate', x: 'step', y: 'learning rate' }, (f) => [perStep(f, 'lr', 'lr')]),
  ];
}

function evaluationCharts(fs: FolderData[]): Chart[] {
  // The per-image distribution as sorted values (an empirical quantile curve): every image shows.
  const sorted = (f: FolderData, key: string, label: string): Series => {
    const v = (f.perImage?.[key] ?? []).filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
    return { label, xs: v.map((_, i) => (v.length > 1 ? (100 * i) / (v.length - 1) : 50)), ys: v };
  };
  return [
    chart(
      fs,
      { title: 'Per-image DSC and clDice, sorted', x: 'percentile of images', y: 'score', points: true },
      (f) => [sorted(f, 'dsc', 'DSC'), sorted(f, 'cldice', 'clDice')],
    ),
    chart(
      fs,
      { title: 'Per-image IoU, precision, recall, sorted', x: 'percentile of images', y: 'score', points: true },
      (f) => METRIC_NAMES.filter((m) => ['iou', 'precision', 'recall'].includes(m)).map((m) => sorted(f, m, m)),
    ),
  ];
}

/** The charts of `folders` (all of kind `kind`). */
export function chartsFor(kind: FolderKind, folders: FolderData[]): Chart[] {
  const make = {
    pretrain: pretrainCharts,
    segmentor: segmentorCharts,
    finetune: finetuneCharts,
    evaluation: evaluationCharts,
  }[kind];
  // A chart with no series (e.g. L_cons of a run without consistency loss) is left out.
  return make(folders).filter((c) => c.labels.length > 0);
}
