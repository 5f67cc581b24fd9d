// The training loader as TS sees it: a preflight check (one clear error before training
// starts), then epochs of `Batch` handles built by Rust worker threads. Tensors stay in Rust;
// `batch.images()` / `batch.maps()` copy them out only for tests and visualisation.
import { LoaderSchema, type LoaderConfig, type LoaderInput } from '../config/data.js';
import { parseOptions } from '../config/vessels.js';
import { native } from '../native.js';
import { checkIndex } from './check.js';
import { DatasetError, expandFrames, indexDataset, type DataSample, type DatasetIndex } from './dataset.js';

export type Batch = InstanceType<typeof native.Batch>;
type NativeLoader = InstanceType<typeof native.Loader>;

export interface SkippedFile {
  index: number;
  path: string;
  error: string;
}

export interface EpochMetrics {
  epoch: number;
  batches: number;
  samples: number;
  /** Files skipped (unreadable mid-epoch) and replaced by the next sample. */
  skipped: number;
  skippedFiles: SkippedFile[];
}

export interface EpochOptions {
  /** Resume: the first batch to deliver (the same batches as an uninterrupted run follow). */
  startBatch?: number;
  /** Called once per skipped file (default: a warning on stderr naming it). */
  onSkip?: (s: SkippedFile, batch: number) => void;
}

export class DataLoader {
  private metrics_: EpochMetrics | undefined;

  constructor(
    readonly native: NativeLoader,
    readonly samples: DataSample[],
    readonly config: LoaderConfig,
  ) {}

  get batchesPerEpoch(): number {
    return this.native.batchesPerEpoch;
  }

  get hasMaps(): boolean {
    return this.native.hasMaps;
  }

  /** This rank's dataset indices for `epoch`, in batch order. */
  shard(epoch: number): Uint32Array {
    return this.native.shard(epoch);
  }

  /** The batches of `epoch` from `startBatch` on, prefetched by the Rust workers. */
  async *epoch(epoch: number, options: EpochOptions = {}): AsyncGenerator<Batch, EpochMetrics> {
    const start = options.startBatch ?? 0;
    const onSkip =
      options.onSkip ??
      ((s: SkippedFile, b: number) =>
        process.emitWarning(`skipped ${s.path} in batch ${b} of epoch ${epoch}: ${s.error}`, 'DataWarning'));
    const m: EpochMetrics = { epoch, batches: 0, samples: 0, skipped: 0, skippedFiles: [] };
    this.metrics_ = m;
    this.native.startEpoch(epoch, start);
    try {
      for (;;) {
        const b = await this.native.next();
        if (!b) break;
        m.batches++;
        m.samples += b.n;
        for (const s of b.skipped) {
          m.skipped++;
          m.skippedFiles.push(s);
          onSkip(s, b.index);
        }
        yield b;
      }
    } finally {
      this.native.close();
    }
    return m;
  }

  /** Counters of the current (or last) epoch. */
  metrics(): EpochMetrics | undefined {
    return this.metrics_;
  }

  /** Batch `index` of `epoch`, built on its own (no prefetch). */
  batchAt(epoch: number, index: number): Promise<Batch> {
    return this.native.batchAt(epoch, index);
  }

  close(): void {
    this.native.close();
  }
}

/**
 * Open a loader over a dataset (a folder tree, a .csv/.jsonl manifest, an index, or samples).
 * Throws one DatasetError, before any batch is built, for: no images, missing maps (when maps
 * are required), unreadable headers, maps of another size than their image, images smaller
 * than `minSide`, or fewer samples than one batch per rank.
 */
export async function openLoader(
  dataset: string | DatasetIndex | DataSample[],
  options: LoaderInput = {},
): Promise<DataLoader> {
  const c = parseOptions(LoaderSchema, options, 'loader options');
  const index: DatasetIndex =
    typeof dataset === 'string'
      ? indexDataset(dataset, c.dataset)
      : Array.isArray(dataset)
        ? { kind: 'manifest', root: '(samples)', samples: dataset, sources: [], excluded: 0 }
        : dataset;
  const where = index.root;
  let samples = await expandFrames(index.samples);
  if (samples.length === 0) throw new DatasetError(`${where}: no images found (PNG, JPEG, BMP, TIFF or DICOM)`);
  if (c.maps === 'ignore') samples = samples.map(({ map: _map, ...s }) => s);
  const missing = samples.filter((s) => !s.map);
  if (c.maps === 'require' && missing.length > 0) {
    const list = missing
      .slice(0, 3)
      .map((s) => s.image)
      .join(', ');
    throw new DatasetError(
      `${where}: ${missing.length} of ${samples.length} image(s) have no vessel map (e.g. ${list}); ` +
        'run `vasomim vessels` on the dataset first, or set maps: "optional" / "ignore"',
    );
  }
  if (c.maps === 'optional' && missing.length > 0) samples = samples.map(({ map: _map, ...s }) => s);
  if (c.verify) {
    const report = await checkIndex({ ...index, samples, sources: [] });
    const bad: string[] = [];
    if (report.unreadable.length) bad.push(...report.problems.filter((p) => p.includes('unreadable')));
    if (report.sizeMismatch.length) bad.push(...report.problems.filter((p) => p.includes('another size')));
    const small = Object.keys(report.sizes).filter((k) => Math.min(...k.split('x').map(Number)) < c.minSide);
    if (small.length) bad.push(`image size(s) ${small.join(', ')} below minSide ${c.minSide}`);
    if (bad.length) throw new DatasetError(`${where}: the dataset cannot be trained on:\n  ${bad.join('\n  ')}`);
  }
  let loader: NativeLoader;
  try {
    const { channels: _channels, ...augment } = c.augment;
    const { batchSize, seed, shuffle, dropLast, rank, world, workers, prefetch } = c;
    loader = new native.Loader(
      samples.map((s) => ({ image: s.image, map: s.map, frame: s.frame })),
      { batchSize, seed, shuffle, dropLast, rank, world, workers, prefetch, augment },
    );
  } catch (e) {
    throw new DatasetError(`${where}: ${(e as Error).message}`);
  }
  return new DataLoader(loader, samples, c);
}
