// COCO bbox evaluation with pycocotools 2.0.11 semantics (cocoeval.py, its C box IoU), in float64:
// the 12 summary figures (AP, AP50, AP75, APs/m/l, AR@1/10/100, ARs/m/l), the lines pycocotools
// prints, and per-category AP. Here: readCocoGt / readCocoResults (validated, errors name file
// and field), cocoEvaluate, formatSummary.
// Semantics kept on purpose (docs/DETECTION.md): image ids sorted; per image and category the
// detections sorted by score (stable, file order on ties) and cut to the largest maxDets; greedy
// matching in score order, a crowd GT matches many and its IoU is intersection / detection area;
// a GT is "ignored" when crowd or outside the area range (the annotation's `area`, not the box's);
// detections outside the range that match nothing are ignored; IoU equal to the threshold matches;
// precision made monotone, read at 101 recall points; -1 where a category has no GT.
// Two differences, both where pycocotools raises: an empty results list evaluates (every AP 0),
// and a GT annotation without `iscrowd` counts as not crowd.
import { readFileSync } from 'node:fs';
import { InputFileError } from '../errors.js';

/** A COCO ground-truth file, the fields bbox evaluation reads. */
export interface CocoGt {
  images: { id: number; file_name?: string; width?: number; height?: number }[];
  annotations: { id: number; image_id: number; category_id: number; bbox: number[]; area: number; iscrowd?: number }[];
  categories: { id: number; name: string }[];
}

/** One detection in COCO's results format (`bbox` = x, y, width, height). */
export interface CocoDetection {
  image_id: number;
  category_id: number;
  bbox: number[];
  score: number;
}

/** The names of the 12 summary figures, in pycocotools' `stats` order. */
export const COCO_STAT_NAMES = [
  'AP',
  'AP50',
  'AP75',
  'APs',
  'APm',
  'APl',
  'AR1',
  'AR10',
  'AR100',
  'ARs',
  'ARm',
  'ARl',
] as const;

export interface CocoEvalResult {
  /** pycocotools' `stats` (fractions, -1 where undefined). */
  stats: number[];
  /** The same by name. */
  summary: Record<(typeof COCO_STAT_NAMES)[number], number>;
  /** AP, AP50 and AP75 of each category (area all, 100 detections; -1 without GT). */
  perCategory: { id: number; name: string; ap: number; ap50: number; ap75: number }[];
  /** The 12 lines pycocotools' summarize() prints. */
  lines: string[];
}

/** A bad GT or results file; the CLI reports it in one line (exit 2). */
export class CocoFileError extends InputFileError {
  override name = 'CocoFileError';
}

/** numpy.linspace(start, stop, num): i·step + start, the last one exactly `stop`. */
function linspace(start: number, stop: number, num: number): number[] {
  const step = (stop - start) / (num - 1);
  return Array.from({ length: num }, (_, i) => (i === num - 1 ? stop : i * step + start));
}

const IOU_THRS = linspace(0.5, 0.95, 10);
const REC_THRS = linspace(0, 1, 101);
const MAX_DETS = [1, 10, 100];
const AREA_RNG: [number, number][] = [
  [0, 1e10],
  [0, 32 ** 2],
  [32 ** 2, 96 ** 2],
  [96 ** 2, 1e10],
];
const AREA_LBL = ['all', 'small', 'medium', 'large'];

/** pycocotools' bbIou for one pair (x, y, w, h); crowd: intersection over the detection's area. */
function boxIou(d: number[], g: number[], crowd: boolean): number {
  const w = Math.min(d[2]! + d[0]!, g[2]! + g[0]!) - Math.max(d[0]!, g[0]!);
  if (w <= 0) return 0;
  const h = Math.min(d[3]! + d[1]!, g[3]! + g[1]!) - Math.max(d[1]!, g[1]!);
  if (h <= 0) return 0;
  const i = w * h;
  const da = d[2]! * d[3]!;
  return i / (crowd ? da : da + g[2]! * g[3]! - i);
}

/** Indices of `keys` in ascending order, stable (numpy's mergesort). */
const stableOrder = (keys: number[]) => keys.map((_, i) => i).sort((a, b) => keys[a]! - keys[b]! || a - b);

interface Gt {
  id: number;
  bbox: number[];
  area: number;
  crowd: boolean;
}
interface Dt {
  id: number;
  bbox: number[];
  area: number;
  score: number;
}

/** evaluateImg's result for one image, category and area range. */
interface ImgEval {
  scores: number[];
  /** [threshold][detection]: the matched GT's id, 0 for none (pycocotools' dtMatches). */
  matches: number[][];
  ignored: boolean[][];
  gtIgnored: boolean[];
}

function evaluateImg(gt: Gt[], dt: Dt[], ious: number[][], rng: [number, number]): ImgEval | null {
  if (gt.length === 0 && dt.length === 0) return null;
  const ig = gt.map((g) => g.crowd || g.area < rng[0] || g.area > rng[1]);
  const gOrder = stableOrder(ig.map(Number));
  const G = gOrder.map((i) => gt[i]!);
  const gIg = gOrder.map((i) => ig[i]!);
  // `dt` arrives sorted and cut (computeIoU's order); sorting again is stable, so it stays.
  const matches = IOU_THRS.map(() => new Array<number>(dt.length).fill(0));
  const ignored = IOU_THRS.map(() => new Array<boolean>(dt.length).fill(false));
  if (gt.length > 0 && dt.length > 0) {
    IOU_THRS.forEach((t, ti) => {
      const gtMatched = new Array<boolean>(G.length).fill(false);
      dt.forEach((_, di) => {
        let iou = Math.min(t, 1 - 1e-10);
        let m = -1;
        for (let gi = 0; gi < G.length; gi++) {
          if (gtMatched[gi] && !G[gi]!.crowd) continue;
          // Sorted by ignore: once a real GT is matched, ignored ones cannot replace it.
          if (m > -1 && !gIg[m] && gIg[gi]) break;
          const v = ious[di]![gOrder[gi]!]!;
          if (v < iou) continue;
          iou = v;
          m = gi;
        }
        if (m === -1) return;
        ignored[ti]![di] = gIg[m]!;
        matches[ti]![di] = G[m]!.id;
        gtMatched[m] = true;
      });
    });
  }
  dt.forEach((d, di) => {
    const out = d.area < rng[0] || d.area > rng[1];
    for (let ti = 0; ti < IOU_THRS.length; ti++) if (matches[ti]![di] === 0 && out) ignored[ti]![di] = true;
  });
  return { scores: dt.map((d) => d.score), matches, ignored, gtIgnored: gIg };
}

/** accumulate() for one category, area range and maxDet: precision [T][R] and recall [T], or null. */
function accumulateOne(E: ImgEval[], maxDet: number): { precision: number[][]; recall: number[] } | null {
  if (E.length === 0) return null;
  const scores = E.flatMap((e) => e.scores.slice(0, maxDet));
  const order = stableOrder(scores.map((s) => -s));
  const npig = E.reduce((n, e) => n + e.gtIgnored.filter((g) => !g).length, 0);
  if (npig === 0) return null;
  const precision: number[][] = [];
  const recall: number[] = [];
  IOU_THRS.forEach((_, t) => {
    const m = E.flatMap((e) => e.matches[t]!.slice(0, maxDet));
    const ig = E.flatMap((e) => e.ignored[t]!.slice(0, maxDet));
    const rc: number[] = [];
    const pr: number[] = [];
    let tp = 0;
    let fp = 0;
    for (const i of order) {
      if (!ig[i]) {
        if (m[i] !== 0) tp++;
        else fp++;
      }
      rc.push(tp / npig);
      pr.push(tp / (fp + tp + Number.EPSILON));
    }
    const nd = rc.length;
    recall.push(nd ? rc[nd - 1]! : 0);
    for (let i = nd - 1; i > 0; i--) if (pr[i]! > pr[i - 1]!) pr[i - 1] = pr[i]!;
    const q = new Array<number>(REC_THRS.length).fill(0);
    // searchsorted(rc, recThrs, 'left'); the first threshold past the end stops the filling.
    let pi = 0;
    for (let ri = 0; ri < REC_THRS.length; ri++) {
      while (pi < nd && rc[pi]! < REC_THRS[ri]!) pi++;
      if (pi >= nd) break;
      q[ri] = pr[pi]!;
    }
    precision.push(q);
  });
  return { precision, recall };
}

const mean = (xs: number[]) => (xs.length === 0 ? -1 : xs.reduce((a, b) => a + b, 0) / xs.length);

/** Python's '{:0.3f}': like toFixed(3) but ties (x = odd/16) round half to even. */
function fixed3(x: number): string {
  if (Number.isInteger(x * 16) && Math.abs(x * 16) % 2 === 1) {
    const lo = Math.floor(x * 1000);
    return ((lo % 2 === 0 ? lo : lo + 1) / 1000).toFixed(3);
  }
  return x.toFixed(3);
}

/** pycocotools' COCOeval(gt, dt, 'bbox').evaluate(), accumulate(), summarize(). */
export function cocoEvaluate(gt: CocoGt, detections: CocoDetection[]): CocoEvalResult {
  const imgIds = [...new Set(gt.images.map((i) => i.id))].sort((a, b) => a - b);
  const cats = [...new Map(gt.categories.map((c) => [c.id, c])).values()].sort((a, b) => a.id - b.id);
  const catSet = new Set(cats.map((c) => c.id));
  const imgSet = new Set(imgIds);
  const key = (img: number, cat: number) => `${img}:${cat}`;
  // Per image in id order, each image's annotations in file order (getAnnIds / loadAnns).
  const gts = new Map<string, Gt[]>();
  for (const a of gt.annotations) {
    if (!imgSet.has(a.image_id) || !catSet.has(a.category_id)) continue;
    const k = key(a.image_id, a.category_id);
    gts.set(k, [...(gts.get(k) ?? []), { id: a.id, bbox: a.bbox, area: a.area, crowd: Boolean(a.iscrowd) }]);
  }
  const dts = new Map<string, Dt[]>();
  detections.forEach((d, i) => {
    if (!catSet.has(d.category_id)) return;
    const k = key(d.image_id, d.category_id);
    const dt = { id: i + 1, bbox: d.bbox, area: d.bbox[2]! * d.bbox[3]!, score: d.score };
    dts.set(k, [...(dts.get(k) ?? []), dt]);
  });
  const maxDet = MAX_DETS[MAX_DETS.length - 1]!;

  // evalImgs[k][a][i]
  const evalImgs = cats.map((c) => {
    const perImg = imgIds.map((img) => {
      const g = gts.get(key(img, c.id)) ?? [];
      const all = dts.get(key(img, c.id)) ?? [];
      const d = stableOrder(all.map((x) => -x.score))
        .slice(0, maxDet)
        .map((i) => all[i]!);
      const ious = d.map((x) => g.map((y) => boxIou(x.bbox, y.bbox, y.crowd)));
      return { g, d, ious };
    });
    return AREA_RNG.map((rng) => perImg.map(({ g, d, ious }) => evaluateImg(g, d, ious, rng)));
  });

  // precision[t][r][k][a][m], recall[t][k][a][m]; -1 where undefined.
  const P = IOU_THRS.map(() => REC_THRS.map(() => cats.map(() => AREA_RNG.map(() => MAX_DETS.map(() => -1)))));
  const R = IOU_THRS.map(() => cats.map(() => AREA_RNG.map(() => MAX_DETS.map(() => -1))));
  cats.forEach((_, k) =>
    AREA_RNG.forEach((__, a) =>
      MAX_DETS.forEach((md, m) => {
        const E = evalImgs[k]![a]!.filter((e): e is ImgEval => e !== null);
        const acc = accumulateOne(E, md);
        if (!acc) return;
        IOU_THRS.forEach((___, t) => {
          R[t]![k]![a]![m] = acc.recall[t]!;
          REC_THRS.forEach((____, r) => (P[t]![r]![k]![a]![m] = acc.precision[t]![r]!));
        });
      }),
    ),
  );

  const lines: string[] = [];
  const summarize = (ap: boolean, iouThr: number | null, area: string, maxDets: number, ks?: number[]) => {
    const a = AREA_LBL.indexOf(area);
    const m = MAX_DETS.indexOf(maxDets);
    // np.where(iouThr == iouThrs): an exact float comparison, as pycocotools does.
    const ts = IOU_THRS.map((_, i) => i).filter((i) => iouThr === null || IOU_THRS[i] === iouThr);
    const kk = ks ?? cats.map((_, i) => i);
    const vals: number[] = [];
    for (const t of ts)
      for (const k of kk) {
        if (ap) for (let r = 0; r < REC_THRS.length; r++) vals.push(P[t]![r]![k]![a]![m]!);
        else vals.push(R[t]![k]![a]![m]!);
      }
    return mean(vals.filter((v) => v > -1));
  };
  const line = (ap: boolean, iouThr: number | null, area: string, maxDets: number) => {
    const v = summarize(ap, iouThr, area, maxDets);
    const title = (ap ? 'Average Precision' : 'Average Recall').padEnd(18);
    const iouStr = (iouThr === null ? '0.50:0.95' : iouThr.toFixed(2)).padEnd(9);
    lines.push(
      ` ${title} ${ap ? '(AP)' : '(AR)'} @[ IoU=${iouStr} | area=${area.padStart(6)} | ` +
        `maxDets=${String(maxDets).padStart(3)} ] = ${fixed3(v)}`,
    );
    return v;
  };
  const stats = [
    line(true, null, 'all', 100),
    line(true, 0.5, 'all', 100),
    line(true, 0.75, 'all', 100),
    line(true, null, 'small', 100),
    line(true, null, 'medium', 100),
    line(true, null, 'large', 100),
    line(false, null, 'all', 1),
    line(false, null, 'all', 10),
    line(false, null, 'all', 100),
    line(false, null, 'small', 100),
    line(false, null, 'medium', 100),
    line(false, null, 'large', 100),
  ];
  const summary = Object.fromEntries(COCO_STAT_NAMES.map((n, i) => [n, stats[i]!])) as CocoEvalResult['summary'];
  const perCategory = cats.map((c, k) => ({
    id: c.id,
    name: c.name,
    ap: summarize(true, null, 'all', 100, [k]),
    ap50: summarize(true, 0.5, 'all', 100, [k]),
    ap75: summarize(true, 0.75, 'all', 100, [k]),
  }));
  return { stats, summary, perCategory, lines };
}

/** The summary as pycocotools prints it, one figure per line. */
export const formatSummary = (r: CocoEvalResult) => r.lines.join('\n') + '\n';

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CocoFileError(`${path}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message} (${what})`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new CocoFileError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isBox = (v: unknown): v is number[] => Array.isArray(v) && v.length === 4 && v.every(isNum);

/** Checks a parsed COCO ground truth; `file` names it in errors. */
export function checkCocoGt(v: unknown, file: string): CocoGt {
  const bad = (field: string, msg: string) => new CocoFileError(`${file}: ${field}: ${msg}`);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('top level', 'expected a COCO object');
  const o = v as Record<string, unknown>;
  for (const f of ['images', 'annotations', 'categories'])
    if (!Array.isArray(o[f])) throw bad(f, 'missing or not a list');
  const images = o.images as Record<string, unknown>[];
  images.forEach((im, i) => {
    if (!isNum(im?.id)) throw bad(`images[${i}].id`, 'expected a number');
  });
  const ids = new Set(images.map((im) => im.id as number));
  const categories = o.categories as Record<string, unknown>[];
  categories.forEach((c, i) => {
    if (!isNum(c?.id)) throw bad(`categories[${i}].id`, 'expected a number');
    if (typeof c.name !== 'string') throw bad(`categories[${i}].name`, 'expected a string');
  });
  (o.annotations as Record<string, unknown>[]).forEach((a, i) => {
    const at = `annotations[${i}]`;
    if (!isNum(a?.id)) throw bad(`${at}.id`, 'expected a number');
    if (!isNum(a.image_id) || !ids.has(a.image_id)) throw bad(`${at}.image_id`, `${String(a.image_id)} is no image id`);
    if (!isNum(a.category_id)) throw bad(`${at}.category_id`, 'expected a number');
    if (!isBox(a.bbox)) throw bad(`${at}.bbox`, 'expected [x, y, width, height] numbers');
    if (!isNum(a.area)) throw bad(`${at}.area`, 'expected a number (bbox evaluation ranks sizes by it)');
  });
  return o as unknown as CocoGt;
}

/** Checks parsed detections against their ground truth; `file` names them in errors. */
export function checkCocoResults(v: unknown, gt: CocoGt, file: string): CocoDetection[] {
  const bad = (field: string, msg: string) => new CocoFileError(`${file}: ${field}: ${msg}`);
  if (!Array.isArray(v)) throw bad('top level', 'expected a list of detections (COCO results format)');
  const ids = new Set(gt.images.map((im) => im.id));
  v.forEach((d: Record<string, unknown>, i) => {
    const at = `[${i}]`;
    if (!isNum(d?.image_id) || !ids.has(d.image_id))
      throw bad(`${at}.image_id`, `${String(d?.image_id)} is not an image of the ground truth`);
    if (!isNum(d.category_id)) throw bad(`${at}.category_id`, 'expected a number');
    if (!isBox(d.bbox)) throw bad(`${at}.bbox`, 'expected [x, y, width, height] numbers');
    if (!isNum(d.score)) throw bad(`${at}.score`, 'expected a number');
  });
  return v as CocoDetection[];
}

/** Reads and checks a COCO ground-truth file. */
export const readCocoGt = (path: string) => checkCocoGt(readJson(path, 'ground truth'), path);

/** Reads and checks a COCO results file against its ground truth. */
export const readCocoResults = (path: string, gt: CocoGt) => checkCocoResults(readJson(path, 'results'), gt, path);
