// The loader benchmark: images/s of 512² PNG (+ vessel map) -> augmented 224² batches.
// Without a dataset it builds one from the bundled 512² angiograms and their vessel maps.
import { copyFileSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { type LoaderInput } from '../config/data.js';
import { packageRoot } from '../native.js';
import { prepareVesselMaps } from '../vessels/api.js';
import { indexDataset, type DataSample } from './dataset.js';
import { openLoader } from './loader.js';

export interface BenchResult {
  imagesPerSecond: number;
  images: number;
  batches: number;
  seconds: number;
  workers: number;
  batchSize: number;
  size: number;
  distinctImages: number;
}

/**
 * The bundled 512² frames (CADICA, Kemerovo stenosis, ARCADE) copied into `dir/angio/`, with maps in
 * `dir/angio_frangi/`.
 */
export async function prepareBenchData(dir: string): Promise<string> {
  const src = join(packageRoot(), 'data', 'samples');
  const angio = join(dir, 'angio');
  mkdirSync(angio, { recursive: true });
  for (const folder of ['cadica-samples', 'danilov-stenosis-samples', 'arcade-samples'])
    for (const f of readdirSync(join(src, folder))) {
      if (f.endsWith('.png') && !existsSync(join(angio, f))) copyFileSync(join(src, folder, f), join(angio, f));
    }
  await prepareVesselMaps(angio, {});
  return dir;
}

/** Time `batches` batches after a warm-up batch; the sample list is repeated to be long enough. */
export async function benchLoader(root: string, options: LoaderInput & { batches?: number }): Promise<BenchResult> {
  const { batches = 20, ...opts } = options;
  const index = indexDataset(root, opts.dataset ?? {});
  const batchSize = opts.batchSize ?? 64;
  const need = (batches + 1) * batchSize;
  const samples: DataSample[] = [];
  while (samples.length < need) samples.push(...index.samples);
  const loader = await openLoader(samples, { ...opts, batchSize, shuffle: true, verify: false });
  const it = loader.epoch(0);
  await it.next(); // warm-up: threads started, files in the page cache
  const t0 = performance.now();
  let images = 0;
  let n = 0;
  for (let b = await it.next(); !b.done && n < batches; b = await it.next()) {
    images += b.value.n;
    n++;
  }
  const seconds = (performance.now() - t0) / 1000;
  await it.return(undefined as never);
  return {
    imagesPerSecond: images / seconds,
    images,
    batches: n,
    seconds,
    workers: loader.config.workers,
    batchSize,
    size: loader.config.augment.size,
    distinctImages: index.samples.length,
  };
}
