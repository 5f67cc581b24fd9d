// Live parity with timm (skipped when no Python with torch + timm is found): `vasomim export`
// output loads strictly into timm.create_model(..., num_classes=0) and timm's features of real
// angiograms match `vasomim embed` within TOL_ABS. Python: $VASOMIM_TORCH_PYTHON, else
// /usr/bin/python3 (Debian's python3-torch), else python3.
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';

import { createModel } from '../src/index.js';
import { tempDir } from './helpers.js';

const root = join(import.meta.dirname, '..', '..');
const python = [process.env.VASOMIM_TORCH_PYTHON, '/usr/bin/python3', 'python3'].find(
  (p) => p && spawnSync(p, ['-c', 'import torch, timm, safetensors, PIL'], { stdio: 'ignore' }).status === 0,
);
if (!python)
  console.warn('timm parity skipped: no Python with torch, timm, safetensors and pillow (see docs/MODEL.md)');

// Absolute tolerance on the features: about 10x the worst difference measured against timm 0.9.16
// on torch 1.13 (docs/MODEL.md: up to 3.8e-6 for base; 2.7e-6 on 2026-11-29; features up to 4.4).
const TOL_ABS = 3e-5;

const main = join(root, 'ts', 'src', 'cli', 'main.ts');
const cli = (...args: string[]) =>
  execFileSync(process.execPath, ['--import', 'tsx', main, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });

describe.skipIf(!python)('timm parity (live)', () => {
  const samples = join(root, 'data', 'samples', 'cadica-samples');
  const images = readdirSync(samples)
    .filter((f) => f.endsWith('.png'))
    .map((f) => join(samples, f));

  for (const preset of ['tiny', 'small', 'base'] as const) {
    it(`vit_${preset}_patch16_224: strict load, features within ${TOL_ABS} absolute`, async () => {
      // The checkpoint and its export (up to 0.7 GB for base) go when the test ends.
      const { path: dir, cleanup } = tempDir('vasomim-timm-');
      onTestFinished(cleanup);
      const ckpt = join(dir, `${preset}.safetensors`);
      await createModel({ preset }, 7).save(ckpt);
      const exported = join(dir, `${preset}.timm.safetensors`);
      cli('export', ckpt, '--format', 'timm', '--out', exported);
      const feats = join(dir, 'features.npy');
      cli('embed', exported, ...images, '--out', feats);
      const out = execFileSync(
        python!,
        [join(root, 'scripts', 'golden', 'timm_parity.py'), `vit_${preset}_patch16_224`, exported, feats, ...images],
        {
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      const line = out.trim().split('\n').pop()!;
      console.log(`timm parity: ${line}`);
      const r = JSON.parse(line) as {
        missing: string[];
        unexpected: string[];
        max_abs_diff: number;
        max_abs_feature: number;
      };
      expect(r.missing).toEqual([]);
      expect(r.unexpected).toEqual([]);
      expect(r.max_abs_feature).toBeGreaterThan(1);
      expect(r.max_abs_diff).toBeLessThan(TOL_ABS);
    }, 300_000);
  }
});
