// The embedded default of `vasomim pretrain`: the real angiograms shipped in data/samples
// (ARCADE, CADICA, Danilov and the XCA training split — never fercer's test split, which the
// downstream evaluation reports on), with VasoMIM vessel maps computed on the fly, and the
// UNeXt-S segmentor trained on them by `vasomim train-segmentor` (data/models/PROVENANCE.md).
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';

import type { DataSample } from '../data/dataset.js';
import { packageRoot } from '../native.js';
import { writeVesselMaps } from '../vessels/api.js';

/** Sample folders used by the demo, relative to data/samples. */
export const DEMO_FOLDERS = [
  'arcade-samples',
  'cadica-samples',
  'danilov-stenosis-samples',
  'fercer-xca80/Angios_40_training',
] as const;

/** The bundled angiograms (PNG, labels `*_gt.png` left out), without maps. */
export function demoImages(): { image: string; source: string }[] {
  const root = join(packageRoot(), 'data', 'samples');
  const out: { image: string; source: string }[] = [];
  for (const f of DEMO_FOLDERS) {
    const dir = join(root, f);
    if (!existsSync(dir)) throw new Error(`the bundled sample folder ${dir} is missing (a broken install?)`);
    for (const name of readdirSync(dir).sort())
      if (/\.png$/i.test(name) && !/_gt\.png$/i.test(name)) out.push({ image: join(dir, name), source: f });
  }
  return out;
}

/** Demo samples with vessel maps in `mapsDir` (computed once; existing maps are reused). */
export async function demoSamples(mapsDir: string, log: (line: string) => void = () => {}): Promise<DataSample[]> {
  const samples = demoImages().map((s) => ({
    ...s,
    map: join(mapsDir, s.source.replace(/[\\/]/g, '_') + '__' + basename(s.image)),
  }));
  const todo = samples.filter((s) => !existsSync(s.map));
  if (todo.length) {
    mkdirSync(mapsDir, { recursive: true });
    const t0 = performance.now();
    const res = await writeVesselMaps(todo.map((s) => ({ input: s.image, output: s.map })));
    const bad = res.filter((r) => r.status === 'failed');
    if (bad.length) throw new Error(`vessel maps failed for ${bad.map((b) => `${b.input} (${b.error})`).join(', ')}`);
    log(
      `vessel maps for ${todo.length} bundled angiograms in ` +
        `${((performance.now() - t0) / 1000).toFixed(1)} s -> ${mapsDir}`,
    );
  }
  return samples;
}

/** The segmentor checkpoint shipped for the demo. */
export function bundledSegmentor(): string {
  return join(packageRoot(), 'data', 'models', 'unext-s-demo.safetensors');
}
