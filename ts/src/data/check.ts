// `data check`: what a dataset holds and what is wrong with it, before a run finds out.
// Reads headers only (in Rust, in parallel, a chunk of files at a time), so a 170K-frame
// corpus is never held in memory.
import { DatasetSchema, type DatasetInput } from '../config/data.js';
import { parseOptions } from '../config/vessels.js';
import { native } from '../native.js';
import { indexDataset, type DatasetIndex, type SourceReport } from './dataset.js';

export interface CheckOptions {
  dataset?: DatasetInput;
  /** Also decode the pixels of every file (finds truncated data; slower). */
  decode?: boolean;
  /** Threads (0 = all cores). */
  jobs?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface DataReport {
  kind: DatasetIndex['kind'];
  root: string;
  images: number;
  withMaps: number;
  /** DICOM frames in total (1 per raster image). */
  frames: number;
  sources: (Omit<SourceReport, 'missingMaps' | 'extraMaps'> & { missingMaps: number; extraMaps: number })[];
  missingMaps: string[];
  extraMaps: string[];
  unreadable: { path: string; error: string }[];
  /** Image and map of different sizes (the paired crop needs them equal). */
  sizeMismatch: { image: string; map: string; imageSize: string; mapSize: string }[];
  /** "WxH" -> number of images. */
  sizes: Record<string, number>;
  excluded: number;
  /** One line per problem; empty when the dataset is fine. */
  problems: string[];
}

const CHUNK = 2048;

export async function checkDataset(path: string, options: CheckOptions = {}): Promise<DataReport> {
  const ds = parseOptions(DatasetSchema, options.dataset ?? {}, 'dataset options');
  const index = indexDataset(path, ds);
  return checkIndex(index, options);
}

export async function checkIndex(index: DatasetIndex, options: CheckOptions = {}): Promise<DataReport> {
  const r: DataReport = {
    kind: index.kind,
    root: index.root,
    images: index.samples.length,
    withMaps: index.samples.filter((s) => s.map).length,
    frames: 0,
    sources: index.sources.map((s) => ({ ...s, missingMaps: s.missingMaps.length, extraMaps: s.extraMaps.length })),
    missingMaps: index.sources.flatMap((s) => s.missingMaps),
    extraMaps: index.sources.flatMap((s) => s.extraMaps),
    unreadable: [],
    sizeMismatch: [],
    sizes: {},
    excluded: index.excluded,
    problems: [],
  };
  const total = index.samples.length;
  for (let i = 0; i < total; i += CHUNK) {
    const chunk = index.samples.slice(i, i + CHUNK);
    const paths = chunk.flatMap((s) => (s.map ? [s.image, s.map] : [s.image]));
    const probes = await native.probeImages(paths, options.decode ?? false, options.jobs ?? 0);
    let k = 0;
    for (const s of chunk) {
      const img = probes[k++]!;
      const map = s.map ? probes[k++]! : undefined;
      if (!img.ok) r.unreadable.push({ path: img.path, error: img.error ?? 'unreadable' });
      else {
        const key = `${img.width}x${img.height}`;
        r.sizes[key] = (r.sizes[key] ?? 0) + 1;
        r.frames += img.frames;
      }
      if (map && !map.ok) r.unreadable.push({ path: map.path, error: map.error ?? 'unreadable' });
      if (map?.ok && img.ok && (map.width !== img.width || map.height !== img.height))
        r.sizeMismatch.push({
          image: s.image,
          map: map.path,
          imageSize: `${img.width}x${img.height}`,
          mapSize: `${map.width}x${map.height}`,
        });
    }
    options.onProgress?.(Math.min(total, i + CHUNK), total);
  }
  const few = (xs: string[]) => xs.slice(0, 3).join(', ') + (xs.length > 3 ? `, … (${xs.length - 3} more)` : '');
  if (total === 0) r.problems.push(`no images found under ${index.root}`);
  if (r.missingMaps.length)
    r.problems.push(`${r.missingMaps.length} image(s) without a vessel map: ${few(r.missingMaps)}`);
  if (r.extraMaps.length) r.problems.push(`${r.extraMaps.length} map(s) without an image: ${few(r.extraMaps)}`);
  if (r.unreadable.length)
    r.problems.push(
      `${r.unreadable.length} unreadable file(s): ${few(r.unreadable.map((u) => `${u.path} (${u.error})`))}`,
    );
  if (r.sizeMismatch.length)
    r.problems.push(
      `${r.sizeMismatch.length} map(s) of another size than their image: ` +
        `${few(r.sizeMismatch.map((m) => `${m.map} ${m.mapSize} vs ${m.imageSize}`))}`,
    );
  return r;
}
