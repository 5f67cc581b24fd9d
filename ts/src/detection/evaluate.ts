// `evaluate` and `predict` of a detector: detections of a dataset split scored with COCO bbox
// metrics (pycocotools semantics, ./coco-eval.ts), written as summary.json, per-image.csv,
// results.json (COCO results) + gt.json (so `vasomim coco-eval` reproduces the figures) and a
// contact sheet of the worst and best frames with true (green) and predicted (red) boxes; and
// predictions of loose images as COCO results JSON + overlay PNGs.
import { mkdirSync, writeFileSync } from 'node:fs';
import { basename, extname, join } from 'node:path';

import type { SplitName } from '../config/segmentation.js';
import { DatasetError } from '../data/dataset.js';
import { encodePng, writeFileAtomic } from '../util/png.js';
import { cocoEvaluate, type CocoDetection, type CocoEvalResult } from './coco-eval.js';
import { datasetToCocoGt, type DetectionDataset, type DetectionSample } from './dataset.js';
import { boxSheet, drawBoxes } from './draw.js';
import { detectFrames, detectorMeta, readFrame, type DetectionModel, type FrameDetections } from './model.js';
import { iou } from './geometry.js';

/** Detections of samples and their COCO evaluation (category ids = class index + 1). */
export async function scoreSamples(
  model: DetectionModel,
  samples: DetectionSample[],
  classes: string[],
  norm: { mean: number[]; std: number[] },
  onProgress?: (done: number, total: number) => void,
): Promise<{ dets: FrameDetections[]; results: CocoDetection[]; coco: CocoEvalResult }> {
  const dets = await detectFrames(
    model,
    samples.map((s) => () => readFrame(s.image)),
    norm,
    2,
    onProgress,
  );
  const results = dets.flatMap((d, i) =>
    d.boxes.map((b, k) => ({
      image_id: samples[i]!.imageId,
      category_id: d.classes[k]! + 1,
      bbox: [b[0]!, b[1]!, b[2]! - b[0]!, b[3]! - b[1]!],
      score: d.scores[k]!,
    })),
  );
  return { dets, results, coco: cocoEvaluate(datasetToCocoGt(samples, classes), results) };
}

/** Greedy matches at IoU ≥ 0.5 of the detections scored ≥ `score` (best first) to a frame's boxes. */
export function frameCounts(truth: number[][], d: FrameDetections, score: number) {
  const kept = d.boxes.filter((_, k) => d.scores[k]! >= score);
  const used = new Set<number>();
  let tp = 0;
  for (const b of kept) {
    let best = -1;
    let bestIou = 0.5;
    truth.forEach((t, g) => {
      const v = iou(b, t);
      if (!used.has(g) && v >= bestIou) [best, bestIou] = [g, v];
    });
    if (best >= 0) {
      used.add(best);
      tp++;
    }
  }
  const bestIou = truth.length ? Math.max(...truth.map((t) => Math.max(0, ...d.boxes.map((b) => iou(b, t))))) : NaN;
  return { tp, fp: kept.length - tp, fn: truth.length - tp, bestIou };
}

export interface DetectionEvalOptions {
  split: SplitName;
  out: string;
  /** Score from which a detection counts in per-image.csv and the sheet (COCO AP uses all). */
  score?: number;
  /** Frames of each end (worst, best) in the contact sheet. */
  sheet?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface DetectionEvalSummary {
  split: SplitName;
  frames: number;
  boxes: number;
  summary: CocoEvalResult['summary'];
  stats: number[];
  perCategory: CocoEvalResult['perCategory'];
  lines: string[];
  score: number;
  seconds: number;
  framesPerSecond: number;
  out: string;
}

/** Evaluate a detector on a split of a dataset; writes the files listed at the top of this module. */
export async function evaluateDetector(
  model: DetectionModel,
  ds: DetectionDataset,
  o: DetectionEvalOptions,
): Promise<DetectionEvalSummary> {
  const samples = ds.splits[o.split];
  if (samples.length === 0) throw new DatasetError(`${ds.root}: the ${o.split} split is empty`);
  const meta = detectorMeta(model);
  const score = o.score ?? 0.5;
  const t0 = performance.now();
  const { dets, results, coco } = await scoreSamples(model, samples, ds.classes, meta, o.onProgress);
  const seconds = (performance.now() - t0) / 1000;
  mkdirSync(o.out, { recursive: true });
  writeFileSync(join(o.out, 'results.json'), JSON.stringify(results) + '\n');
  writeFileSync(join(o.out, 'gt.json'), JSON.stringify(datasetToCocoGt(samples, ds.classes)) + '\n');
  const rows = samples.map((s, i) => ({ s, d: dets[i]!, ...frameCounts(s.boxes, dets[i]!, score) }));
  const csv = ['id,boxes,detections,tp,fp,fn,best_iou,top_score'];
  for (const r of rows)
    csv.push(
      [
        JSON.stringify(r.s.id),
        r.s.boxes.length,
        r.d.boxes.filter((_, k) => r.d.scores[k]! >= score).length,
        r.tp,
        r.fp,
        r.fn,
        Number.isNaN(r.bestIou) ? '' : r.bestIou.toFixed(4),
        r.d.scores.length ? r.d.scores[0]!.toFixed(4) : '',
      ].join(','),
    );
  writeFileSync(join(o.out, 'per-image.csv'), csv.join('\n') + '\n');
  // Worst frames first (most misses and false alarms), then the best.
  const f1 = (r: (typeof rows)[number]) => (2 * r.tp) / Math.max(1, 2 * r.tp + r.fp + r.fn);
  const order = rows.map((_, i) => i).sort((a, b) => f1(rows[a]!) - f1(rows[b]!) || a - b);
  const n = Math.min(o.sheet ?? 4, Math.ceil(order.length / 2));
  const pick = [...new Set([...order.slice(0, n), ...order.slice(-n).reverse()])];
  const panels = [];
  for (const i of pick) {
    const r = rows[i]!;
    const kept = r.d.boxes.map((b, k) => [b, r.d.scores[k]!] as const).filter(([, sc]) => sc >= score);
    panels.push(
      drawBoxes(await readFrame(r.s.image), r.s.boxes, { boxes: kept.map((k) => k[0]), scores: kept.map((k) => k[1]) }),
    );
  }
  writeFileAtomic(join(o.out, 'contact-sheet.png'), encodePng(boxSheet(panels, 256, Math.min(4, Math.max(1, n)))));
  const summary: DetectionEvalSummary = {
    split: o.split,
    frames: samples.length,
    boxes: samples.reduce((k, s) => k + s.boxes.length, 0),
    summary: coco.summary,
    stats: coco.stats,
    perCategory: coco.perCategory,
    lines: coco.lines,
    score,
    seconds,
    framesPerSecond: samples.length / Math.max(seconds, 1e-9),
    out: o.out,
  };
  writeFileSync(join(o.out, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
  return summary;
}

/** Detections of loose images: results.json (COCO results, image ids 1.. in the given order, with
 * the image list) and `<name>.png` overlays of the detections scored ≥ `score`. */
export async function predictDetector(
  model: DetectionModel,
  images: string[],
  out: string,
  score = 0.5,
  onProgress?: (done: number, total: number) => void,
): Promise<{ images: number; detections: number; out: string }> {
  const meta = detectorMeta(model);
  mkdirSync(out, { recursive: true });
  const dets = await detectFrames(
    model,
    images.map((p) => () => readFrame(p)),
    meta,
    2,
    onProgress,
  );
  const results: CocoDetection[] = [];
  const list = [];
  for (const [i, path] of images.entries()) {
    const d = dets[i]!;
    const frame = await readFrame(path);
    list.push({ id: i + 1, file_name: path, width: frame.width, height: frame.height });
    d.boxes.forEach((b, k) =>
      results.push({
        image_id: i + 1,
        category_id: d.classes[k]! + 1,
        bbox: [b[0]!, b[1]!, b[2]! - b[0]!, b[3]! - b[1]!],
        score: d.scores[k]!,
      }),
    );
    const kept = d.boxes.map((b, k) => [b, d.scores[k]!] as const).filter(([, sc]) => sc >= score);
    const png = drawBoxes(frame, [], { boxes: kept.map((k) => k[0]), scores: kept.map((k) => k[1]) });
    writeFileAtomic(join(out, `${basename(path, extname(path))}.png`), encodePng(png));
  }
  writeFileSync(join(out, 'results.json'), JSON.stringify(results) + '\n');
  writeFileSync(
    join(out, 'images.json'),
    JSON.stringify({ images: list, categories: meta.classes.map((name, i) => ({ id: i + 1, name })) }, null, 2) + '\n',
  );
  return { images: images.length, detections: results.length, out };
}
