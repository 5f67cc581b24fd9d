// Segmentation metrics, per image: DSC, clDice, IoU, precision, recall (binary masks), pixel
// ROC-AUC of a soft output, per-class versions for label maps, and mean ± std summaries.
// Definitions (method §9 and docs/SEGMENTATION.md):
//   DSC = 2|P∩G| / (|P| + |G|), IoU = |P∩G| / |P∪G|, precision = |P∩G| / |P|, recall = |P∩G| / |G|;
//   clDice = 2·Tprec·Tsens / (Tprec + Tsens), Tprec = |skel(P)∩G| / |skel(P)|, Tsens = |skel(G)∩P| / |skel(G)|;
//   AUC = area under the ROC curve of the pixel scores against G (ties: one ROC point per
//   distinct score, trapezoids between them — scikit-learn's roc_auc_score).
// Empty sets: when prediction and truth are both empty every metric is 1 (a correct empty
// answer); otherwise a ratio whose denominator is 0 is 0 (e.g. precision of an empty prediction
// of a non-empty truth). clDice: 1 when both skeletons are empty; a ratio with an empty skeleton
// below it is 0, and clDice is 0 when Tprec + Tsens = 0. AUC is NaN (not defined; left out of
// summaries) when the truth has only one class.
import { skeletonize } from './skeleton.js';

export interface BinaryMetrics {
  dsc: number;
  cldice: number;
  iou: number;
  precision: number;
  recall: number;
  /** NaN when no soft output was given or the truth is all one class. */
  auc: number;
}

export const METRIC_NAMES = ['dsc', 'cldice', 'iou', 'precision', 'recall', 'auc'] as const;
export type MetricName = (typeof METRIC_NAMES)[number];

function check(n: number, width: number, height: number, what: string) {
  if (n !== width * height)
    throw new RangeError(`${what} has ${n} pixels, expected ${width}x${height} = ${width * height}`);
}

const ratio = (num: number, den: number, bothEmpty: boolean) => (bothEmpty ? 1 : den === 0 ? 0 : num / den);

/** Counts of a binary prediction against a binary truth (non-zero = foreground). */
export function confusion(pred: ArrayLike<number>, truth: ArrayLike<number>) {
  if (pred.length !== truth.length) throw new RangeError(`prediction has ${pred.length} pixels, truth ${truth.length}`);
  let tp = 0;
  let fp = 0;
  let fn = 0;
  for (let i = 0; i < pred.length; i++) {
    const p = pred[i] !== 0;
    const g = truth[i] !== 0;
    if (p && g) tp++;
    else if (p) fp++;
    else if (g) fn++;
  }
  return { tp, fp, fn, tn: pred.length - tp - fp - fn };
}

export function dice(pred: ArrayLike<number>, truth: ArrayLike<number>): number {
  const { tp, fp, fn } = confusion(pred, truth);
  return ratio(2 * tp, 2 * tp + fp + fn, tp + fp + fn === 0);
}

/** clDice of binary masks (skeletons: scikit-image's Zhang-Suen, see ./skeleton.ts). */
export function clDice(pred: ArrayLike<number>, truth: ArrayLike<number>, width: number, height: number): number {
  check(pred.length, width, height, 'prediction');
  check(truth.length, width, height, 'truth');
  const sp = skeletonize(pred, width, height);
  const sg = skeletonize(truth, width, height);
  let nsp = 0;
  let nsg = 0;
  let spInG = 0;
  let sgInP = 0;
  for (let i = 0; i < sp.length; i++) {
    if (sp[i]) {
      nsp++;
      if (truth[i]) spInG++;
    }
    if (sg[i]) {
      nsg++;
      if (pred[i]) sgInP++;
    }
  }
  if (nsp === 0 && nsg === 0) return 1;
  const tprec = nsp === 0 ? 0 : spInG / nsp;
  const tsens = nsg === 0 ? 0 : sgInP / nsg;
  return tprec + tsens === 0 ? 0 : (2 * tprec * tsens) / (tprec + tsens);
}

/**
 * Pixel ROC-AUC of scores against a binary truth, ties handled as scikit-learn's roc_auc_score
 * (the ROC has one point per distinct score; trapezoids in between). NaN when the truth holds
 * only one class (scikit-learn raises there).
 */
export function rocAuc(scores: ArrayLike<number>, truth: ArrayLike<number>): number {
  const n = scores.length;
  if (truth.length !== n) throw new RangeError(`scores have ${n} values, truth ${truth.length}`);
  let pos = 0;
  for (let i = 0; i < n; i++) if (truth[i]) pos++;
  const neg = n - pos;
  if (pos === 0 || neg === 0) return NaN;
  const s = Float64Array.from(scores as ArrayLike<number>);
  for (let i = 0; i < n; i++) if (Number.isNaN(s[i]!)) throw new RangeError(`score ${i} is NaN`);
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => s[b]! - s[a]!); // descending score
  let tp = 0;
  let fp = 0;
  let prevTp = 0;
  let prevFp = 0;
  let area = 0;
  for (let k = 0; k < n;) {
    const v = s[order[k]!]!;
    while (k < n && s[order[k]!] === v) {
      if (truth[order[k]!]) tp++;
      else fp++;
      k++;
    }
    area += ((fp - prevFp) * (tp + prevTp)) / 2; // trapezoid, in units of counts
    prevTp = tp;
    prevFp = fp;
  }
  return area / (pos * neg);
}

/** All binary metrics of one image; `scores` (soft output, any monotone scale) adds the AUC. */
export function binaryMetrics(
  pred: ArrayLike<number>,
  truth: ArrayLike<number>,
  width: number,
  height: number,
  scores?: ArrayLike<number>,
): BinaryMetrics {
  check(pred.length, width, height, 'prediction');
  check(truth.length, width, height, 'truth');
  const { tp, fp, fn } = confusion(pred, truth);
  const empty = tp + fp + fn === 0;
  return {
    dsc: ratio(2 * tp, 2 * tp + fp + fn, empty),
    cldice: clDice(pred, truth, width, height),
    iou: ratio(tp, tp + fp + fn, empty),
    precision: ratio(tp, tp + fp, empty),
    recall: ratio(tp, tp + fn, empty),
    auc: scores ? rocAuc(scores, truth) : NaN,
  };
}

export interface ClassMetrics extends BinaryMetrics {
  /** Class label (1..K-1; 0 is the background). */
  label: number;
  /** false when the class is in neither the prediction nor the truth (metrics are then 1). */
  present: boolean;
}

/**
 * Per-class metrics of a label map (0 = background, 1..classes-1) against the truth: class c is
 * the binary mask `label == c`. `probs` (classes x H x W, class-major) adds per-class AUC.
 */
export function multiClassMetrics(
  pred: ArrayLike<number>,
  truth: ArrayLike<number>,
  width: number,
  height: number,
  classes: number,
  probs?: Float32Array,
): ClassMetrics[] {
  check(pred.length, width, height, 'prediction');
  check(truth.length, width, height, 'truth');
  const n = width * height;
  if (probs && probs.length !== classes * n)
    throw new RangeError(`probabilities have ${probs.length} values, expected ${classes}x${width}x${height}`);
  const out: ClassMetrics[] = [];
  const p = new Uint8Array(n);
  const g = new Uint8Array(n);
  for (let c = 1; c < classes; c++) {
    let any = false;
    for (let i = 0; i < n; i++) {
      p[i] = pred[i] === c ? 1 : 0;
      g[i] = truth[i] === c ? 1 : 0;
      any ||= p[i] === 1 || g[i] === 1;
    }
    const m = binaryMetrics(p, g, width, height, probs ? probs.subarray(c * n, (c + 1) * n) : undefined);
    out.push({ label: c, present: any, ...m });
  }
  return out;
}

export interface Stat {
  mean: number;
  std: number;
  /** Values that entered the summary (NaN values are left out). */
  n: number;
  min: number;
  max: number;
}

/** Mean and population standard deviation (numpy's default, ddof = 0) of the finite values. */
export function summarize(values: ArrayLike<number>): Stat {
  let n = 0;
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isFinite(v)) continue;
    n++;
    sum += v;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  if (n === 0) return { mean: NaN, std: NaN, n: 0, min: NaN, max: NaN };
  const mean = sum / n;
  let ss = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (Number.isFinite(v)) ss += (v - mean) ** 2;
  }
  return { mean, std: Math.sqrt(ss / n), n, min, max };
}

/** `0.7312 ± 0.0451` */
export function formatStat(s: Stat, digits = 4): string {
  return Number.isFinite(s.mean) ? `${s.mean.toFixed(digits)} ± ${s.std.toFixed(digits)}` : 'n/a';
}
