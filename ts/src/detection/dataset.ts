// Detection datasets with explicit train / val / test splits: the Stenosis dataset of Danilov et
// al. (frames + Pascal-VOC .xml, or the shipped train_labels.csv / test_labels.csv), ARCADE
// stenosis (COCO JSON per split folder, category "stenosis") and plain COCO detection JSON.
// Splits: the shipped files, a seeded frame-level split (paper-like; neighbouring frames of one
// video land on both sides) or a seeded patient-level split (honest). Indexing reads names, XML,
// CSV and JSON only; frames are decoded by the loader (grey, replicated to the encoder's channels).
// Every problem is one DatasetError naming the file (and line or field); frames without boxes are
// kept as negatives. Here: openDetectionDataset, datasetToCocoGt, patientOf, parseVocXml.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, extname, join, relative, resolve } from 'node:path';

import { DetectionDataSchema, type DetectionDataConfig, type DetectionDataInput } from '../config/detection.js';
import { SPLITS, type SplitName } from '../config/segmentation.js';
import { parseOptions } from '../config/vessels.js';
import { DatasetError, splitCsv } from '../data/dataset.js';
import { Rng } from '../train/rng.js';
import { isImageFile } from '../vessels/discover.js';
import type { CocoGt } from './coco-eval.js';

export interface DetectionSample {
  /** Stable name: the image path relative to the dataset root. */
  id: string;
  /** COCO image id (1-based position in the dataset's sorted frame list, or the file's own id). */
  imageId: number;
  split: SplitName;
  image: string;
  width: number;
  height: number;
  /** Boxes as [x1, y1, x2, y2] in pixels (continuous: a pixel i spans [i, i + 1)). */
  boxes: number[][];
  /** Class index of each box (into `classes`). */
  labels: number[];
  /** COCO `area` of each box (box area, or the annotation's own area for COCO files). */
  areas: number[];
  /** Patient id, where the file name tells it (Stenosis: 14_<patient>_<video>_<frame>). */
  patient?: string;
}

export interface DetectionDataset {
  root: string;
  format: 'stenosis' | 'arcade' | 'coco';
  /** The detected classes (COCO category ids are index + 1). */
  classes: string[];
  /** How the splits were made. */
  split: 'files' | 'frame' | 'patient';
  splits: Record<SplitName, DetectionSample[]>;
  config: DetectionDataConfig;
}

const natural = (a: string, b: string) => a.localeCompare(b, 'en', { numeric: true });

/** Index a detection dataset (folder or COCO .json); see docs/DETECTION.md for the layouts. */
export function openDetectionDataset(path: string, options: DetectionDataInput = {}): DetectionDataset {
  const cfg = parseOptions(DetectionDataSchema, options, 'dataset options');
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) throw new DatasetError(`${path}: no such file or folder`);
  let format = cfg.format;
  if (format === 'auto') format = st.isFile() ? 'coco' : arcadeRoot(path) ? 'arcade' : 'stenosis';
  if (format === 'coco') {
    if (!st.isFile()) throw new DatasetError(`${path}: a COCO dataset is given as its .json file`);
    return fromCoco(path, cfg);
  }
  if (!st.isDirectory()) throw new DatasetError(`${path}: not a folder (Stenosis or ARCADE layout) or a COCO .json`);
  return format === 'arcade' ? fromArcade(path, cfg) : fromStenosis(path, cfg);
}

/** The patient of a Stenosis frame `14_<patient>_<video>_<frame>.<ext>`, else undefined. */
export function patientOf(file: string): string | undefined {
  return /^\d+_(\d+)_\d+_\d+$/.exec(basename(file, extname(file)))?.[1];
}

/** A class index for `name`, or a DatasetError naming the file and the classes. */
function classIndex(classes: string[], name: string, where: string): number {
  const i = classes.findIndex((c) => c.toLowerCase() === name.trim().toLowerCase());
  if (i < 0)
    throw new DatasetError(
      `${where}: unknown category ${JSON.stringify(name)} (detected classes: ${classes.join(', ')})`,
    );
  return i;
}

/** Checks a box against its image: inside, non-empty; returns it. */
function checkBox(box: number[], width: number, height: number, where: string): number[] {
  const [x1, y1, x2, y2] = box as [number, number, number, number];
  if (!box.every(Number.isFinite)) throw new DatasetError(`${where}: box has a non-numeric corner`);
  if (!(x2 > x1 && y2 > y1))
    throw new DatasetError(`${where}: empty box [${box.join(', ')}] (needs xmax > xmin and ymax > ymin)`);
  if (x1 < 0 || y1 < 0 || x2 > width || y2 > height)
    throw new DatasetError(`${where}: box [${box.join(', ')}] lies outside the ${width}x${height} image`);
  return box;
}

/** VOC corners to our continuous convention: as they are, or detectron2's (xmin - 1, ymin - 1). */
const vocBox = (b: number[], cfg: DetectionDataConfig) =>
  cfg.coordinates === 'voc' ? [Math.max(0, b[0]! - 1), Math.max(0, b[1]! - 1), b[2]!, b[3]!] : b;

// ---- Stenosis (Danilov et al.) -----------------------------------------------------------------

interface VocAnnotation {
  width: number;
  height: number;
  objects: { name: string; box: number[] }[];
}

const tag = (xml: string, name: string) => new RegExp(`<${name}>\\s*([^<]*?)\\s*</${name}>`).exec(xml)?.[1];

/** The size and objects of a Pascal-VOC (LabelImg) annotation; errors name `file`. */
export function parseVocXml(xml: string, file: string): VocAnnotation {
  if (!xml.trim()) throw new DatasetError(`${file}: empty annotation file`);
  if (!/<annotation[\s>]/.test(xml)) throw new DatasetError(`${file}: not a Pascal-VOC annotation (no <annotation>)`);
  const size = /<size>([\s\S]*?)<\/size>/.exec(xml)?.[1] ?? '';
  const width = Number(tag(size, 'width'));
  const height = Number(tag(size, 'height'));
  if (!(width > 0 && height > 0)) throw new DatasetError(`${file}: <size> needs a positive <width> and <height>`);
  const objects = [...xml.matchAll(/<object>([\s\S]*?)<\/object>/g)].map((m, k) => {
    const o = m[1]!;
    const name = tag(o, 'name');
    const bb = /<bndbox>([\s\S]*?)<\/bndbox>/.exec(o)?.[1];
    if (name === undefined || bb === undefined)
      throw new DatasetError(`${file}: object ${k + 1} needs a <name> and a <bndbox>`);
    const box = ['xmin', 'ymin', 'xmax', 'ymax'].map((c) => Number(tag(bb, c) ?? NaN));
    return { name, box };
  });
  return { width, height, objects };
}

interface Frame {
  image: string;
  width: number;
  height: number;
  boxes: number[][];
  labels: number[];
  split?: SplitName;
}

function fromStenosis(root: string, cfg: DetectionDataConfig): DetectionDataset {
  const classes = cfg.categories ?? ['Stenosis'];
  // Frames live in the root or its dataset/ folder (the Mendeley archive's layout).
  const dirs = [root, join(root, 'dataset')].filter((d) => existsSync(d) && statSync(d).isDirectory());
  const images = dirs.flatMap((d) =>
    readdirSync(d)
      .filter((n) => isImageFile(n) && !n.startsWith('.'))
      .map((n) => join(d, n)),
  );
  const byName = new Map(images.map((p) => [basename(p), p]));
  const csvs = readdirSync(root).filter((n) => /^(train|val|valid|test)_labels\.csv$/i.test(n));
  const frames = new Map<string, Frame>();
  if (csvs.length > 0) {
    for (const name of csvs.sort()) {
      const split: SplitName = /^train/i.test(name) ? 'train' : /^test/i.test(name) ? 'test' : 'val';
      readLabelsCsv(join(root, name), split, classes, byName, cfg, frames);
    }
  } else {
    for (const img of images.sort(natural)) {
      const xml = join(dirname(img), basename(img, extname(img)) + '.xml');
      const f: Frame = { image: img, width: 0, height: 0, boxes: [], labels: [] };
      if (existsSync(xml)) {
        const voc = parseVocXml(readFileSync(xml, 'utf8'), xml);
        Object.assign(f, { width: voc.width, height: voc.height });
        voc.objects.forEach((o, k) => {
          f.labels.push(classIndex(classes, o.name, `${xml}: object ${k + 1}`));
          f.boxes.push(checkBox(vocBox(o.box, cfg), voc.width, voc.height, `${xml}: object ${k + 1}`));
        });
      }
      frames.set(img, f);
    }
    const orphans = dirs.flatMap((d) =>
      readdirSync(d).filter(
        (n) => n.endsWith('.xml') && !images.some((p) => basename(p, extname(p)) === n.slice(0, -4)),
      ),
    );
    if (orphans.length) throw new DatasetError(`${join(root, orphans[0]!)}: annotation without an image`);
  }
  if (frames.size === 0) throw new DatasetError(`${root}: no frames (images with .xml or *_labels.csv)`);
  const list = [...frames.values()].sort((a, b) => natural(a.image, b.image));
  // A frame without XML has no declared size: the loader reads it from the image (negative frame).
  const samples = list.map((f, i) => ({
    id: relative(root, f.image),
    imageId: i + 1,
    split: f.split ?? ('train' as SplitName),
    image: f.image,
    width: f.width,
    height: f.height,
    boxes: f.boxes,
    labels: f.labels,
    areas: f.boxes.map((b) => (b[2]! - b[0]!) * (b[3]! - b[1]!)),
    ...(patientOf(f.image) !== undefined ? { patient: patientOf(f.image)! } : {}),
  }));
  const policy = cfg.split === 'auto' ? (csvs.length ? 'files' : 'patient') : cfg.split;
  if (policy === 'files' && csvs.length === 0)
    throw new DatasetError(`${root}: split "files" needs train_labels.csv / test_labels.csv`);
  return finish(root, 'stenosis', classes, policy, samples, cfg);
}

/** Rows `filename,width,height,class,xmin,ymin,xmax,ymax` of one *_labels.csv into `frames`. */
function readLabelsCsv(
  path: string,
  split: SplitName,
  classes: string[],
  byName: Map<string, string>,
  cfg: DetectionDataConfig,
  frames: Map<string, Frame>,
) {
  const lines = readFileSync(path, 'utf8').split(/\r?\n/);
  if (!lines[0]?.trim()) throw new DatasetError(`${path}: empty annotation file`);
  const header = splitCsv(lines[0]).map((h) => h.trim().toLowerCase());
  const cols = ['filename', 'width', 'height', 'class', 'xmin', 'ymin', 'xmax', 'ymax'].map((c) => header.indexOf(c));
  if (cols.some((c) => c < 0))
    throw new DatasetError(`${path}:1: header must name filename,width,height,class,xmin,ymin,xmax,ymax`);
  if (!lines.slice(1).some((l) => l.trim())) throw new DatasetError(`${path}: no rows below the header`);
  lines.slice(1).forEach((l, i) => {
    if (!l.trim()) return;
    const at = `${path}:${i + 2}`;
    const f = splitCsv(l);
    const [file, w, h, cls, ...box] = cols.map((c) => f[c] ?? '');
    const image = byName.get(basename(file!));
    if (!image) throw new DatasetError(`${at}: no image ${JSON.stringify(file)} in the dataset folder`);
    const frame = frames.get(image) ?? { image, width: Number(w), height: Number(h), boxes: [], labels: [], split };
    if (frame.split !== split) throw new DatasetError(`${at}: ${file} is listed in more than one split`);
    if (!(frame.width > 0 && frame.height > 0)) throw new DatasetError(`${at}: width and height must be positive`);
    frame.labels.push(classIndex(classes, cls!, at));
    frame.boxes.push(checkBox(vocBox(box.map(Number), cfg), frame.width, frame.height, at));
    frames.set(image, frame);
  });
}

// ---- ARCADE stenosis and plain COCO ----------------------------------------------------------

/** The stenosis/ folder of an ARCADE tree at `path` (or `path` itself), if it looks like one. */
function arcadeRoot(path: string): string | undefined {
  for (const r of [join(path, 'stenosis'), path])
    if (SPLITS.some((s) => existsSync(join(r, s, 'annotations')))) return r;
  return undefined;
}

interface CocoFile {
  images: { id: number; file_name: string; width: number; height: number }[];
  annotations: {
    id?: number;
    image_id: number;
    category_id: number;
    bbox: number[];
    area?: number;
    iscrowd?: number;
  }[];
  categories: { id: number; name: string }[];
}

function readCocoFile(path: string): CocoFile {
  let v: unknown;
  const text = readFileSync(path, 'utf8');
  if (!text.trim()) throw new DatasetError(`${path}: empty annotation file`);
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new DatasetError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  const o = v as Partial<CocoFile>;
  for (const f of ['images', 'annotations', 'categories'] as const)
    if (!Array.isArray(o?.[f])) throw new DatasetError(`${path}: ${f}: missing or not a list`);
  o.images!.forEach((im, i) => {
    if (typeof im.file_name !== 'string' || !(im.width > 0 && im.height > 0) || typeof im.id !== 'number')
      throw new DatasetError(`${path}: images[${i}]: needs id, file_name, width and height`);
  });
  return o as CocoFile;
}

/** Samples of one COCO file; `keep` maps a category id to a class index (others: `onOther`). */
function cocoSamples(
  path: string,
  imageDir: string,
  split: SplitName,
  keep: (catId: number, where: string) => number | undefined,
): DetectionSample[] {
  const coco = readCocoFile(path);
  const byImage = new Map(coco.images.map((im) => [im.id, [] as CocoFile['annotations']]));
  coco.annotations.forEach((a, i) => {
    const list = byImage.get(a.image_id);
    if (!list) throw new DatasetError(`${path}: annotations[${i}].image_id: ${a.image_id} is no image id`);
    list.push(a);
  });
  return coco.images.map((im) => {
    const s: DetectionSample = {
      id: relative(dirname(imageDir), join(imageDir, im.file_name)),
      imageId: im.id,
      split,
      image: join(imageDir, im.file_name),
      width: im.width,
      height: im.height,
      boxes: [],
      labels: [],
      areas: [],
    };
    if (!existsSync(s.image)) throw new DatasetError(`${path}: image ${im.file_name}: no such file ${s.image}`);
    for (const a of byImage.get(im.id)!) {
      const where = `${path}: annotation ${a.id ?? '?'} (image ${im.file_name})`;
      const label = keep(a.category_id, where);
      if (label === undefined || a.iscrowd) continue;
      if (!Array.isArray(a.bbox) || a.bbox.length !== 4)
        throw new DatasetError(`${where}: bbox must be [x, y, width, height]`);
      const [x, y, w, h] = a.bbox as [number, number, number, number];
      s.boxes.push(checkBox([x, y, x + w, y + h], im.width, im.height, where));
      s.labels.push(label);
      s.areas.push(typeof a.area === 'number' && a.area > 0 ? a.area : w * h);
    }
    return s;
  });
}

/** Class indices by category id of a COCO file for the wanted names (error when one is missing). */
function categoryMap(path: string, wanted: string[] | undefined): { classes: string[]; ids: Map<number, number> } {
  const cats = readCocoFile(path).categories;
  const names = wanted ?? cats.map((c) => c.name);
  const ids = new Map<number, number>();
  names.forEach((n, i) => {
    const c = cats.filter((x) => x.name.toLowerCase() === n.toLowerCase());
    if (c.length === 0)
      throw new DatasetError(
        `${path}: no category named ${JSON.stringify(n)} (categories: ${cats.map((x) => x.name).join(', ')})`,
      );
    for (const x of c) ids.set(x.id, i);
  });
  return { classes: names, ids };
}

function fromArcade(path: string, cfg: DetectionDataConfig): DetectionDataset {
  const root = arcadeRoot(path) ?? path;
  const samples: DetectionSample[] = [];
  let classes: string[] | undefined;
  for (const split of SPLITS) {
    const json = join(root, split, 'annotations', `${split}.json`);
    if (!existsSync(join(root, split, 'annotations'))) continue;
    if (!existsSync(json)) throw new DatasetError(`${json}: no such file (ARCADE: <split>/annotations/<split>.json)`);
    const cm = categoryMap(json, cfg.categories ?? ['stenosis']);
    classes ??= cm.classes;
    const keep = (id: number, where: string) => {
      const k = cm.ids.get(id);
      if (k === undefined)
        throw new DatasetError(`${where}: category ${id} is not a detected class (${cm.classes.join(', ')})`);
      return k;
    };
    samples.push(...cocoSamples(json, join(root, split, 'images'), split, keep));
  }
  if (!classes) throw new DatasetError(`${root}: no ARCADE split (<split>/annotations/<split>.json)`);
  // Image ids repeat across ARCADE's split files: renumber in split order.
  samples.forEach((s, i) => (s.imageId = i + 1));
  const policy = cfg.split === 'auto' ? 'files' : cfg.split;
  return finish(root, 'arcade', classes, policy, samples, cfg);
}

function fromCoco(path: string, cfg: DetectionDataConfig): DetectionDataset {
  const dir = dirname(path);
  const imageDir = cfg.images
    ? resolve(dir, cfg.images)
    : existsSync(join(dir, 'images')) && statSync(join(dir, 'images')).isDirectory()
      ? join(dir, 'images')
      : dir;
  const cm = categoryMap(path, cfg.categories);
  const samples = cocoSamples(path, imageDir, 'test', (id) => cm.ids.get(id));
  const policy = cfg.split === 'auto' ? 'frame' : cfg.split;
  return finish(path, 'coco', cm.classes, policy, samples, cfg);
}

// ---- splits ------------------------------------------------------------------------------------

/** Assigns splits by the policy (files: as read), checks it, applies `limit`. */
function finish(
  root: string,
  format: DetectionDataset['format'],
  classes: string[],
  policy: DetectionDataset['split'],
  samples: DetectionSample[],
  cfg: DetectionDataConfig,
): DetectionDataset {
  if (cfg.testFraction + cfg.valFraction >= 1)
    throw new DatasetError(`${root}: testFraction + valFraction must be < 1 (train would be empty)`);
  if (policy === 'frame' || policy === 'patient') {
    const groups = new Map<string, DetectionSample[]>();
    for (const s of samples) {
      const key = policy === 'frame' ? s.id : s.patient;
      if (key === undefined)
        throw new DatasetError(
          `${s.image}: no patient id in the name (14_<patient>_<video>_<frame>); use split "frame"`,
        );
      groups.set(key, [...(groups.get(key) ?? []), s]);
    }
    const keys = [...groups.keys()].sort(natural);
    Rng.forKeys(cfg.seed, policy === 'frame' ? 0 : 1).shuffle(keys);
    const n = samples.length;
    const nTest = Math.round(cfg.testFraction * n);
    const nVal = Math.round(cfg.valFraction * n);
    let test = 0;
    let val = 0;
    // Whole groups, in shuffled order: test until it holds nTest frames, then val, then train.
    for (const k of keys) {
      const g = groups.get(k)!;
      const split: SplitName = test < nTest ? 'test' : val < nVal ? 'val' : 'train';
      if (split === 'test') test += g.length;
      else if (split === 'val') val += g.length;
      for (const s of g) s.split = split;
    }
  }
  const splits = { train: [], val: [], test: [] } as Record<SplitName, DetectionSample[]>;
  for (const s of samples) splits[s.split].push(s);
  if (cfg.limit !== undefined) for (const k of SPLITS) splits[k] = splits[k].slice(0, cfg.limit);
  return { root, format, classes, split: policy, splits, config: cfg };
}

/** A COCO ground truth of samples (category ids = class index + 1), for `cocoEvaluate`. */
export function datasetToCocoGt(samples: DetectionSample[], classes: string[]): CocoGt {
  let id = 0;
  return {
    images: samples.map((s) => ({ id: s.imageId, file_name: s.id, width: s.width, height: s.height })),
    annotations: samples.flatMap((s) =>
      s.boxes.map((b, k) => ({
        id: ++id,
        image_id: s.imageId,
        category_id: s.labels[k]! + 1,
        bbox: [b[0]!, b[1]!, b[2]! - b[0]!, b[3]! - b[1]!],
        area: s.areas[k]!,
        iscrowd: 0,
      })),
    ),
    categories: classes.map((name, i) => ({ id: i + 1, name })),
  };
}
