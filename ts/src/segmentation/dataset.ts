// Segmentation datasets with explicit train / val / test splits: paired image/mask folders
// (incl. fercer-xca80's `N.png` + `N_gt.png`), ARCADE (COCO polygons → masks for the vessel,
// segment and stenosis tasks) and CSV/JSONL manifests. Indexing reads names and JSON only;
// `checkSegmentationSplits` reads every header (sizes) before a long job; `loadSegmentationSample` decodes.
// Every problem is one DatasetError naming the file.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, extname, isAbsolute, join, relative, resolve } from 'node:path';

import {
  SegmentationDataSchema,
  SPLITS,
  type SegmentationDataConfig,
  type SegmentationDataInput,
  type SplitName,
} from '../config/segmentation.js';
import { parseOptions } from '../config/vessels.js';
import { DatasetError, splitCsv } from '../data/dataset.js';
import { native } from '../native.js';
import { isImageFile } from '../vessels/discover.js';
import { fillPolygon } from './polygon.js';

export interface CocoShape {
  /** Label written into the truth (1 for binary tasks, the class for `segment`). */
  label: number;
  /** Annotation id (for error messages). */
  id: number;
  /** COCO polygons [x0, y0, x1, y1, ...]; a pixel in any of them belongs to the annotation. */
  polygons: number[][];
}

export interface SegmentationSample {
  /** Stable name: the image path relative to the dataset root. */
  id: string;
  split: SplitName;
  image: string;
  /** A mask file (paired folders, manifests) ... */
  mask?: string;
  /** ... or COCO annotations (ARCADE), with the size the JSON declares. */
  coco?: { file: string; width: number; height: number; shapes: CocoShape[] };
}

export interface SegmentationDataset {
  root: string;
  format: 'paired' | 'arcade' | 'manifest';
  /** binary: 0/1 truth; multiclass: labels 0 (background) .. classes.length - 1. */
  kind: 'binary' | 'multiclass';
  /** Class names by label; classes[0] is the background. */
  classes: string[];
  splits: Record<SplitName, SegmentationSample[]>;
  config: SegmentationDataConfig;
}

export interface LoadedSample {
  sample: SegmentationSample;
  width: number;
  height: number;
  /** Grey in 8-bit units. */
  image: Float32Array;
  /** Labels per pixel (binary: 0/1). */
  truth: Uint8Array;
}

const natural = (a: string, b: string) => a.localeCompare(b, 'en', { numeric: true });

/** Index a segmentation dataset (folder or manifest); see docs/SEGMENTATION.md for layouts. */
export function openSegmentationDataset(path: string, options: SegmentationDataInput = {}): SegmentationDataset {
  const cfg = parseOptions(SegmentationDataSchema, options, 'dataset options');
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) throw new DatasetError(`${path}: no such file or folder`);
  let format = cfg.format;
  if (format === 'auto')
    format = st.isFile() ? 'manifest' : arcadeTaskDirs(path).size > 0 || isArcadeTaskDir(path) ? 'arcade' : 'paired';
  if (format === 'manifest') {
    if (!st.isFile()) throw new DatasetError(`${path}: a manifest must be a .csv or .jsonl file`);
    return fromManifest(path, cfg);
  }
  if (!st.isDirectory())
    throw new DatasetError(`${path}: not a folder (paired or ARCADE layout) or a .csv/.jsonl manifest`);
  return format === 'arcade' ? fromArcade(path, cfg) : fromPairedFolders(path, cfg);
}

/** The samples of one split, or a DatasetError saying it is empty. */
export function splitSamples(ds: SegmentationDataset, split: SplitName, limit?: number): SegmentationSample[] {
  const s = ds.splits[split];
  if (s.length === 0) {
    const have = SPLITS.filter((k) => ds.splits[k].length > 0).map((k) => `${k} ${ds.splits[k].length}`);
    throw new DatasetError(
      `${ds.root}: the ${split} split is empty (${have.length ? `found ${have.join(', ')}` : 'no samples at all'})`,
    );
  }
  return limit === undefined ? s : s.slice(0, limit);
}

// ---- paired folders ---------------------------------------------------------------------------

const MASK_SUFFIX = /_(gt|mask|label|labels|seg)$/i;
const MASK_DIRS = ['masks', 'mask', 'labels', 'gt', 'groundtruth', 'ground_truth'];
const IMAGE_DIRS = ['images', 'image', 'imgs'];
const SPLIT_NAMES: Record<SplitName, RegExp> = {
  train: /(^|[^a-z])(train|training)([^a-z]|$)/i,
  val: /(^|[^a-z])(val|valid|validation)([^a-z]|$)/i,
  test: /(^|[^a-z])(test|testing)([^a-z]|$)/i,
};

function listDir(dir: string) {
  return readdirSync(dir, { withFileTypes: true }).filter((e) => !e.name.startsWith('.'));
}

function fromPairedFolders(root: string, cfg: SegmentationDataConfig): SegmentationDataset {
  const folders: Partial<Record<SplitName, string>> = {};
  if (cfg.splits) {
    for (const k of SPLITS) {
      const rel = cfg.splits[k];
      if (rel === undefined) continue;
      const dir = resolve(root, rel);
      if (!existsSync(dir) || !statSync(dir).isDirectory())
        throw new DatasetError(`${join(root, rel)}: no such folder (splits.${k})`);
      folders[k] = dir;
    }
  } else {
    const subdirs = listDir(root)
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
    for (const k of SPLITS) {
      const hits = subdirs.filter((n) => SPLIT_NAMES[k].test(n));
      if (hits.length > 1)
        throw new DatasetError(
          `${root}: ${hits.join(' and ')} both look like the ${k} split; ` +
            `name the folders with splits (--train-dir/--val-dir/--test-dir)`,
        );
      if (hits.length === 1) folders[k] = join(root, hits[0]!);
    }
    if (Object.keys(folders).length === 0)
      throw new DatasetError(
        `${root}: no split folders (a subfolder named like train/training, val/validation, test/testing); ` +
          `name them with splits (--train-dir/--val-dir/--test-dir)`,
      );
  }
  const splits = { train: [], val: [], test: [] } as Record<SplitName, SegmentationSample[]>;
  for (const k of SPLITS) if (folders[k]) splits[k] = pairsIn(root, folders[k], k);
  const classes = cfg.masks === 'labels' ? labelClasses(cfg, root) : ['background', 'vessel'];
  return {
    root,
    format: 'paired',
    kind: cfg.masks === 'labels' ? 'multiclass' : 'binary',
    classes,
    splits,
    config: cfg,
  };
}

function labelClasses(cfg: SegmentationDataConfig, where: string): string[] {
  if (cfg.classes === undefined)
    throw new DatasetError(`${where}: label masks need the number of classes (classes / --classes)`);
  return ['background', ...Array.from({ length: cfg.classes }, (_, i) => `class ${i + 1}`)];
}

/** Image/mask pairs in one split folder: `images/` + `masks/` (same stem), or `x.png` + `x_gt.png`. */
function pairsIn(root: string, dir: string, split: SplitName): SegmentationSample[] {
  const entries = listDir(dir);
  const imgDir = IMAGE_DIRS.map((n) => entries.find((e) => e.isDirectory() && e.name.toLowerCase() === n)).find(
    Boolean,
  );
  const maskDir = MASK_DIRS.map((n) => entries.find((e) => e.isDirectory() && e.name.toLowerCase() === n)).find(
    Boolean,
  );
  const images: string[] = [];
  const masks = new Map<string, string>(); // stem -> mask path
  const stem = (f: string) => basename(f, extname(f));
  if (imgDir || maskDir) {
    if (!imgDir || !maskDir)
      throw new DatasetError(
        `${dir}: has ${imgDir ? `${imgDir.name}/ but no masks/ folder` : `${maskDir!.name}/ but no images/ folder`}`,
      );
    for (const e of listDir(join(dir, imgDir.name)))
      if (e.isFile() && isImageFile(e.name)) images.push(join(dir, imgDir.name, e.name));
    for (const e of listDir(join(dir, maskDir.name)))
      if (e.isFile() && isImageFile(e.name))
        addMask(masks, stem(e.name).replace(MASK_SUFFIX, ''), join(dir, maskDir.name, e.name));
  } else {
    for (const e of entries) {
      if (!e.isFile() || !isImageFile(e.name)) continue;
      const s = stem(e.name);
      if (MASK_SUFFIX.test(s)) addMask(masks, s.replace(MASK_SUFFIX, ''), join(dir, e.name));
      else images.push(join(dir, e.name));
    }
  }
  images.sort(natural);
  const seen = new Set<string>();
  const out: SegmentationSample[] = [];
  for (const image of images) {
    const s = stem(image);
    if (seen.has(s))
      throw new DatasetError(
        `${image}: another image in ${dirname(image)} has the stem "${s}" (masks are matched by stem)`,
      );
    seen.add(s);
    const mask = masks.get(s);
    if (!mask)
      throw new DatasetError(
        `${image}: no mask (looked for ` +
          `${maskDir ? join(dir, maskDir.name, s + '.*') : join(dir, s + '_gt.*')}, also _mask/_label)`,
      );
    out.push({ id: relative(root, image), split, image, mask });
    masks.delete(s);
  }
  const orphan = [...masks.values()].sort(natural)[0];
  if (orphan)
    throw new DatasetError(`${orphan}: mask without an image${masks.size > 1 ? ` (and ${masks.size - 1} more)` : ''}`);
  return out;
}

function addMask(masks: Map<string, string>, key: string, path: string) {
  const prev = masks.get(key);
  if (prev) throw new DatasetError(`${path}: ${prev} is a mask for the same image`);
  masks.set(key, path);
}

// ---- ARCADE (COCO JSON polygons) -------------------------------------------------------------

function isArcadeTaskDir(dir: string): boolean {
  return SPLITS.some((s) => existsSync(join(dir, s, 'annotations', `${s}.json`)));
}

function arcadeTaskDirs(root: string): Map<'syntax' | 'stenosis', string> {
  const out = new Map<'syntax' | 'stenosis', string>();
  for (const t of ['syntax', 'stenosis'] as const) if (isArcadeTaskDir(join(root, t))) out.set(t, join(root, t));
  return out;
}

interface CocoJson {
  images?: unknown;
  annotations?: unknown;
  categories?: unknown;
}

function fromArcade(root: string, cfg: SegmentationDataConfig): SegmentationDataset {
  const dirs = arcadeTaskDirs(root);
  const self = isArcadeTaskDir(root);
  const task = cfg.task ?? (dirs.has('syntax') || (self && basename(root) !== 'stenosis') ? 'vessel' : 'stenosis');
  const want = task === 'stenosis' ? 'stenosis' : 'syntax';
  const taskDir = dirs.get(want) ?? (self ? root : undefined);
  if (!taskDir)
    throw new DatasetError(
      `${root}: no ARCADE ${want}/ folder with <split>/annotations/<split>.json ` +
        `(task ${task}${dirs.size ? `; found ${[...dirs.keys()].join(', ')}/` : ''})`,
    );
  const splits = { train: [], val: [], test: [] } as Record<SplitName, SegmentationSample[]>;
  let classes: string[] | undefined;
  let classesFrom = '';
  for (const split of SPLITS) {
    const file = join(taskDir, split, 'annotations', `${split}.json`);
    if (!existsSync(file)) continue;
    const { samples, categories } = readCoco(root, file, join(taskDir, split, 'images'), split, task, cfg);
    const names = categories.map((c) => c.name);
    if (classes === undefined) {
      classes = names;
      classesFrom = file;
    } else if (names.join('\u0000') !== classes.join('\u0000'))
      throw new DatasetError(
        `${file}: its categories (${names.length}) differ from those of ${classesFrom} (${classes.length})`,
      );
    splits[split] = samples;
  }
  const segment = task === 'segment';
  return {
    root,
    format: 'arcade',
    kind: segment ? 'multiclass' : 'binary',
    classes: segment ? ['background', ...(classes ?? [])] : ['background', task],
    splits,
    config: { ...cfg, task },
  };
}

function readCoco(
  root: string,
  file: string,
  imageDir: string,
  split: SplitName,
  task: 'vessel' | 'segment' | 'stenosis',
  cfg: SegmentationDataConfig,
) {
  let json: CocoJson;
  try {
    json = JSON.parse(readFileSync(file, 'utf8')) as CocoJson;
  } catch (e) {
    throw new DatasetError(`${file}: not valid COCO JSON (${(e as Error).message})`);
  }
  function bad(why: string): never {
    throw new DatasetError(`${file}: ${why}`);
  }
  if (
    typeof json !== 'object' ||
    json === null ||
    !Array.isArray(json.images) ||
    !Array.isArray(json.annotations) ||
    !Array.isArray(json.categories)
  )
    bad('expected a COCO object with "images", "annotations" and "categories" arrays');
  const categories = (json.categories as { id?: unknown; name?: unknown }[]).map((c, i) => {
    if (typeof c?.id !== 'number' || typeof c.name !== 'string')
      bad(`categories[${i}]: expected {"id": number, "name": string}`);
    return { id: c.id as number, name: String(c.name) };
  });
  categories.sort((a, b) => a.id - b.id);
  if (new Set(categories.map((c) => c.id)).size !== categories.length) bad('two categories share an id');
  if (cfg.classes !== undefined && task === 'segment' && categories.length !== cfg.classes)
    bad(`${categories.length} categories, expected ${cfg.classes} classes (--classes)`);
  const labelOf = new Map<number, number>();
  const stenosis = categories.find((c) => c.name.toLowerCase() === 'stenosis');
  if (task === 'stenosis' && !stenosis) bad('no category named "stenosis" (is this the syntax task?)');
  categories.forEach((c, i) => {
    if (task === 'segment') labelOf.set(c.id, i + 1);
    else if (task === 'stenosis') labelOf.set(c.id, c === stenosis ? 1 : 0);
    else labelOf.set(c.id, c === stenosis ? 0 : 1); // vessel: every segment, not stenosis regions
  });
  const byId = new Map<number, SegmentationSample & { coco: NonNullable<SegmentationSample['coco']> }>();
  const listed = new Set<string>();
  for (const [i, im] of (
    json.images as { id?: unknown; file_name?: unknown; width?: unknown; height?: unknown }[]
  ).entries()) {
    if (
      typeof im?.id !== 'number' ||
      typeof im.file_name !== 'string' ||
      !Number.isInteger(im.width) ||
      !Number.isInteger(im.height)
    )
      bad(`images[${i}]: expected {"id", "file_name", "width", "height"}`);
    if (byId.has(im.id as number)) bad(`images[${i}]: duplicate image id ${im.id}`);
    const image = join(imageDir, im.file_name as string);
    if (!existsSync(image)) throw new DatasetError(`${image}: listed in ${file} (image id ${im.id}) but missing`);
    listed.add(basename(image));
    byId.set(im.id as number, {
      id: relative(root, image),
      split,
      image,
      coco: { file, width: im.width as number, height: im.height as number, shapes: [] },
    });
  }
  for (const [i, a] of (
    json.annotations as { id?: unknown; image_id?: unknown; category_id?: unknown; segmentation?: unknown }[]
  ).entries()) {
    const aid = typeof a?.id === 'number' ? a.id : i;
    const s = byId.get(a?.image_id as number);
    if (!s) bad(`annotation ${aid}: unknown image_id ${JSON.stringify(a?.image_id)}`);
    const label = labelOf.get(a.category_id as number);
    if (label === undefined)
      bad(
        `annotation ${aid}: unknown category_id ${JSON.stringify(a.category_id)} ` +
          `(categories: ${categories.map((c) => c.id).join(', ')})`,
      );
    if (!Array.isArray(a.segmentation))
      bad(`annotation ${aid}: segmentation is not a list of polygons (RLE is not supported)`);
    const polygons = (a.segmentation as unknown[]).map((p, k) => {
      if (!Array.isArray(p) || p.length % 2 !== 0 || p.some((v) => typeof v !== 'number' || !Number.isFinite(v)))
        bad(`annotation ${aid}: polygon ${k} is not a list of x, y numbers`);
      return p as number[];
    });
    if (label > 0) s.coco.shapes.push({ label, id: aid as number, polygons });
  }
  if (existsSync(imageDir))
    for (const e of listDir(imageDir).sort((x, y) => natural(x.name, y.name)))
      if (e.isFile() && isImageFile(e.name) && !listed.has(e.name))
        throw new DatasetError(`${join(imageDir, e.name)}: no entry in ${file}`);
  const samples = [...byId.values()].sort((x, y) => natural(x.image, y.image));
  return { samples, categories };
}

// ---- manifests --------------------------------------------------------------------------------

function fromManifest(path: string, cfg: SegmentationDataConfig): SegmentationDataset {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new DatasetError(`${path}: ${(e as Error).message}`);
  }
  const dir = dirname(resolve(path));
  const abs = (p: string) => (isAbsolute(p) ? p : join(dir, p));
  const rows: { image: string; mask: string; split: string; line: number }[] = [];
  const lines = text.split(/\r?\n/);
  const jsonl = extname(path).toLowerCase() === '.jsonl';
  if (jsonl) {
    lines.forEach((l, i) => {
      if (!l.trim()) return;
      let o: { image?: unknown; mask?: unknown; split?: unknown };
      try {
        o = JSON.parse(l) as typeof o;
      } catch (e) {
        throw new DatasetError(`${path}:${i + 1}: not JSON (${(e as Error).message})`);
      }
      if (typeof o?.image !== 'string' || typeof o.mask !== 'string' || typeof o.split !== 'string')
        throw new DatasetError(`${path}:${i + 1}: expected {"image": "...", "mask": "...", "split": "train|val|test"}`);
      rows.push({ image: o.image, mask: o.mask, split: o.split, line: i + 1 });
    });
  } else {
    const header = splitCsv(lines[0] ?? '');
    const col = Object.fromEntries(['image', 'mask', 'split'].map((n) => [n, header.indexOf(n)]));
    if (col.image! < 0 || col.mask! < 0 || col.split! < 0)
      throw new DatasetError(
        `${path}:1: the CSV header must name "image", "mask" and "split" columns ` +
          `(got ${JSON.stringify(lines[0] ?? '')})`,
      );
    lines.slice(1).forEach((l, i) => {
      if (!l.trim()) return;
      const f = splitCsv(l);
      rows.push({ image: f[col.image!] ?? '', mask: f[col.mask!] ?? '', split: f[col.split!] ?? '', line: i + 2 });
    });
  }
  const splits = { train: [], val: [], test: [] } as Record<SplitName, SegmentationSample[]>;
  const seen = new Map<string, number>();
  for (const r of rows) {
    if (!r.image) throw new DatasetError(`${path}:${r.line}: empty image path`);
    if (!r.mask) throw new DatasetError(`${path}:${r.line}: ${r.image} has no mask`);
    if (!(SPLITS as readonly string[]).includes(r.split))
      throw new DatasetError(`${path}:${r.line}: split ${JSON.stringify(r.split)} is not train, val or test`);
    const image = abs(r.image);
    if (seen.has(image))
      throw new DatasetError(`${path}:${r.line}: ${r.image} is listed again (first on line ${seen.get(image)})`);
    seen.set(image, r.line);
    splits[r.split as SplitName].push({ id: r.image, split: r.split as SplitName, image, mask: abs(r.mask) });
  }
  const labels = cfg.masks === 'labels';
  return {
    root: path,
    format: 'manifest',
    kind: labels ? 'multiclass' : 'binary',
    classes: labels ? labelClasses(cfg, path) : ['background', 'vessel'],
    splits,
    config: cfg,
  };
}

// ---- checks and loading -----------------------------------------------------------------------

/**
 * Read the headers of every image and mask of these samples (Rust threads): a DatasetError for
 * the first unreadable file, mask of another size than its image, or image of another size than
 * its COCO entry declares.
 */
export async function checkSegmentationSamples(samples: SegmentationSample[], jobs = 0): Promise<void> {
  const paths: string[] = [];
  for (const s of samples) {
    paths.push(s.image);
    if (s.mask) paths.push(s.mask);
  }
  const probes = await native.probeImages(paths, false, jobs);
  const info = new Map(probes.map((p) => [p.path, p]));
  for (const s of samples) {
    const im = info.get(s.image)!;
    if (!im.ok) throw new DatasetError(`${s.image}: cannot read (${im.error})`);
    if (s.mask) {
      const m = info.get(s.mask)!;
      if (!m.ok) throw new DatasetError(`${s.mask}: cannot read (${m.error})`);
      if (m.width !== im.width || m.height !== im.height)
        throw new DatasetError(
          `${s.mask}: mask is ${m.width}x${m.height} but its image ${s.image} is ${im.width}x${im.height}`,
        );
    }
    if (s.coco && (s.coco.width !== im.width || s.coco.height !== im.height))
      throw new DatasetError(
        `${s.image}: image is ${im.width}x${im.height} but ${s.coco.file} says ${s.coco.width}x${s.coco.height}`,
      );
  }
}

/** Decode a sample: the grey image and its truth (labels; binary 0/1). */
export async function loadSegmentationSample(ds: SegmentationDataset, s: SegmentationSample): Promise<LoadedSample> {
  const img = await native.readImage(s.image).catch((e: Error) => {
    throw new DatasetError(`${s.image}: ${e.message}`);
  });
  const { width, height } = img;
  const truth = new Uint8Array(width * height);
  if (s.mask) {
    const m = await native.readImage(s.mask).catch((e: Error) => {
      throw new DatasetError(`${s.mask}: ${e.message}`);
    });
    if (m.width !== width || m.height !== height)
      throw new DatasetError(
        `${s.mask}: mask is ${m.width}x${m.height} but its image ${s.image} is ${width}x${height}`,
      );
    if (ds.kind === 'binary') {
      const t = ds.config.maskThreshold;
      for (let i = 0; i < truth.length; i++) truth[i] = m.pixels[i]! >= t ? 1 : 0;
    } else {
      const k = ds.classes.length;
      for (let i = 0; i < truth.length; i++) {
        const v = Math.round(m.pixels[i]!);
        if (v >= k)
          throw new DatasetError(
            `${s.mask}: label ${v} at pixel (${i % width}, ${Math.floor(i / width)}) but there are ${k - 1} classes`,
          );
        truth[i] = v;
      }
    }
  } else if (s.coco) {
    if (s.coco.width !== width || s.coco.height !== height)
      throw new DatasetError(
        `${s.image}: image is ${width}x${height} but ${s.coco.file} says ${s.coco.width}x${s.coco.height}`,
      );
    // in file order: where annotations overlap, the later one's label wins
    for (const shape of s.coco.shapes)
      for (const p of shape.polygons) fillPolygon(truth, width, height, p, shape.label);
  }
  return { sample: s, width, height, image: img.pixels, truth };
}
