// The dataset index: which (image, vessel map) pairs a run trains on. Three inputs:
// - a tree in the XA-170K layout (every folder holding images is a source; its maps are in the
//   sibling `<source>_frangi/` or `<source>_filter_92/`, same file name), found with the same
//   walker as `vasomim vessels`;
// - a plain folder of images (no map folders: images only);
// - a manifest, CSV (header with `image`, optional `map`, `frame`) or JSONL ({image, map?,
//   frame?} per line), paths relative to the manifest's folder.
// Only names are read here; pixels and headers are left to the loader and `data check`.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, extname, isAbsolute, join, relative, resolve } from 'node:path';

import { DatasetSchema, type DatasetInput } from '../config/data.js';
import { parseOptions } from '../config/vessels.js';
import { discover, IMAGE_EXTENSIONS } from '../vessels/discover.js';

/** Images the index accepts: the raster formats plus DICOM. */
export const DATA_EXTENSIONS = [...IMAGE_EXTENSIONS, '.dcm', '.dicom'];

export interface DataSample {
  image: string;
  map?: string;
  /** Frame of a multi-frame DICOM (0 otherwise). */
  frame?: number;
  /** Source folder (relative to the root) or manifest folder. */
  source: string;
}

export interface SourceReport {
  source: string;
  images: number;
  withMap: number;
  /** The map folder used, if any. */
  mapFolder?: string;
  /** Images without a map (paths). */
  missingMaps: string[];
  /** Files in the map folder matching no image (paths). */
  extraMaps: string[];
}

export interface DatasetIndex {
  kind: 'tree' | 'manifest';
  root: string;
  samples: DataSample[];
  sources: SourceReport[];
  excluded: number;
}

/** Thrown for datasets that cannot be trained on; the message says why and names files. */
export class DatasetError extends Error {
  override name = 'DatasetError';
}

export function isManifest(path: string): boolean {
  return ['.csv', '.jsonl'].includes(extname(path).toLowerCase());
}

export function indexDataset(path: string, options: DatasetInput = {}): DatasetIndex {
  const o = parseOptions(DatasetSchema, options, 'dataset options');
  if (isManifest(path)) return readManifest(path);
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) throw new DatasetError(`${path}: no such file or folder`);
  if (!st.isDirectory()) throw new DatasetError(`${path}: not a folder or a .csv/.jsonl manifest`);
  // discover() computes `<source><suffix>/<stem>.png` for the first suffix; other suffixes and
  // the same-name rule are resolved per source below.
  const first = o.mapSuffixes[0]!;
  const d = discover(path, { suffix: first, exclude: o.exclude });
  const bySource = new Map<string, { input: string; output: string }[]>();
  for (const t of d.tasks) {
    const list = bySource.get(t.source) ?? [];
    list.push(t);
    bySource.set(t.source, list);
  }
  const samples: DataSample[] = [];
  const sources: SourceReport[] = [];
  for (const source of d.sources) {
    const tasks = bySource.get(source) ?? [];
    const defaultDir = dirname(tasks[0]!.output);
    const base = defaultDir.slice(0, defaultDir.length - first.length);
    const mapFolder = o.mapSuffixes.map((s) => base + s).find((dir) => existsSync(dir) && statSync(dir).isDirectory());
    const mapFiles = new Set(mapFolder ? readdirSync(mapFolder) : []);
    const used = new Set<string>();
    const report: SourceReport = { source, images: tasks.length, withMap: 0, missingMaps: [], extraMaps: [] };
    if (mapFolder) report.mapFolder = mapFolder;
    for (const t of tasks) {
      const name = basename(t.input);
      const alt = basename(t.input, extname(t.input)) + '.png';
      const hit = mapFiles.has(name) ? name : mapFiles.has(alt) ? alt : undefined;
      const s: DataSample = { image: t.input, source };
      if (hit && mapFolder) {
        s.map = join(mapFolder, hit);
        used.add(hit);
        report.withMap++;
      } else if (mapFolder) report.missingMaps.push(t.input);
      samples.push(s);
    }
    if (mapFolder)
      for (const f of [...mapFiles].sort())
        if (!used.has(f) && !f.startsWith('.')) report.extraMaps.push(join(mapFolder, f));
    sources.push(report);
  }
  // DICOM files are indexed too, without a frame: `expandFrames` turns a cine run into one
  // sample per frame (it needs the headers; indexing reads names only).
  return {
    kind: 'tree',
    root: path,
    samples: [...samples, ...dicomFiles(path, samples)],
    sources,
    excluded: d.excluded,
  };
}

/** Samples of DICOM files without a frame number become one sample per frame (headers read in
 * Rust, in parallel). Maps are per frame file, so expanded cine runs carry no map. */
export async function expandFrames(samples: DataSample[], jobs = 0): Promise<DataSample[]> {
  const todo = samples.filter((s) => s.frame === undefined && /\.(dcm|dicom)$/i.test(s.image));
  if (todo.length === 0) return samples;
  const { native } = await import('../native.js');
  const probes = await native.probeImages(
    todo.map((s) => s.image),
    false,
    jobs,
  );
  const frames = new Map(probes.map((p) => [p.path, p.ok ? p.frames : 1]));
  return samples.flatMap((s) => {
    const n = s.frame === undefined ? frames.get(s.image) : undefined;
    if (n === undefined || n <= 1) return [s];
    return Array.from({ length: n }, (_, frame) => ({ image: s.image, source: s.source, frame }));
  });
}

/** .dcm files under root (discover() only knows raster formats): one sample each, no map. */
function dicomFiles(root: string, have: DataSample[]): DataSample[] {
  const seen = new Set(have.map((s) => s.image));
  const out: DataSample[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
    )) {
      const p = join(dir, e.name);
      if (e.isDirectory() && !e.name.startsWith('.')) walk(p);
      else if (/\.(dcm|dicom)$/i.test(e.name) && !seen.has(p))
        out.push({ image: p, source: relative(root, dir) || '.' });
    }
  };
  walk(root);
  return out;
}

function readManifest(path: string): DatasetIndex {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new DatasetError(
      `${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`,
    );
  }
  const dir = dirname(resolve(path));
  const abs = (p: string) => (isAbsolute(p) ? p : join(dir, p));
  const rows: { image: string; map?: string; frame?: number; line: number }[] = [];
  const lines = text.split(/\r?\n/);
  if (extname(path).toLowerCase() === '.jsonl') {
    lines.forEach((l, i) => {
      if (!l.trim()) return;
      let v: unknown;
      try {
        v = JSON.parse(l);
      } catch (e) {
        throw new DatasetError(`${path}:${i + 1}: not JSON (${(e as Error).message})`);
      }
      const o = v as { image?: unknown; map?: unknown; frame?: unknown };
      if (typeof o !== 'object' || o === null || typeof o.image !== 'string')
        throw new DatasetError(`${path}:${i + 1}: expected {"image": "...", "map"?: "...", "frame"?: n}`);
      rows.push({
        image: o.image,
        map: typeof o.map === 'string' ? o.map : undefined,
        frame: typeof o.frame === 'number' ? o.frame : undefined,
        line: i + 1,
      });
    });
  } else {
    const header = splitCsv(lines[0] ?? '');
    const col = (n: string) => header.indexOf(n);
    if (col('image') < 0)
      throw new DatasetError(
        `${path}:1: the CSV header must name an "image" column (got ${JSON.stringify(lines[0] ?? '')})`,
      );
    lines.slice(1).forEach((l, i) => {
      if (!l.trim()) return;
      const f = splitCsv(l);
      const image = f[col('image')];
      if (!image) throw new DatasetError(`${path}:${i + 2}: empty image path`);
      const map = col('map') >= 0 ? f[col('map')] || undefined : undefined;
      const fr = col('frame') >= 0 && f[col('frame')] ? Number(f[col('frame')]) : undefined;
      if (fr !== undefined && !(Number.isInteger(fr) && fr >= 0))
        throw new DatasetError(`${path}:${i + 2}: frame must be an integer >= 0`);
      rows.push({ image, map, frame: fr, line: i + 2 });
    });
  }
  const sources = new Map<string, SourceReport>();
  const samples = rows.map((r) => {
    const source = dirname(r.image) === '.' ? '.' : dirname(r.image);
    const rep = sources.get(source) ?? { source, images: 0, withMap: 0, missingMaps: [], extraMaps: [] };
    rep.images++;
    if (r.map) rep.withMap++;
    else rep.missingMaps.push(abs(r.image));
    sources.set(source, rep);
    const s: DataSample = { image: abs(r.image), source };
    if (r.map) s.map = abs(r.map);
    if (r.frame !== undefined) s.frame = r.frame;
    return s;
  });
  // A manifest without any map column is an image-only dataset, not one with missing maps.
  if (samples.every((s) => !s.map)) for (const r of sources.values()) r.missingMaps = [];
  return { kind: 'manifest', root: path, samples, sources: [...sources.values()], excluded: 0 };
}

/** One CSV line: comma-separated, fields optionally in double quotes ("" escapes a quote). */
export function splitCsv(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let q = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (q) {
      if (c === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (c === '"') q = false;
      else cur += c;
    } else if (c === '"') q = true;
    else if (c === ',') {
      out.push(cur.trim());
      cur = '';
    } else cur += c;
  }
  out.push(cur.trim());
  return out;
}
