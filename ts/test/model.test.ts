// The model API end to end on the micro preset: training lowers the loss, checkpoints round-trip,
// timm export loads back, bad input is rejected with messages that name the problem, and the
// `export` / `embed` commands write what they say.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';

import {
  createModel,
  loadModel,
  parseModelConfig,
  randomMaskBatch,
  StepOptionsSchema,
  trainStep,
} from '../src/index.js';
import { tempDir } from './helpers.js';

const MICRO = { preset: 'micro', imgSize: 32, patchSize: 8, inChans: 1, embedDim: 32, decoderEmbedDim: 32 } as const;

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

function batch(n: number, size: number, chans: number, seed = 1): Float32Array {
  const r = lcg(seed);
  return Float32Array.from({ length: n * chans * size * size }, () => r() * 2 - 1);
}

/** A temporary folder, removed when the test that made it ends. */
const tmp = () => {
  const d = tempDir('vasomim-model-');
  onTestFinished(d.cleanup);
  return d.path;
};

function readNpyShape(path: string): number[] {
  const b = readFileSync(path);
  const len = b.readUInt16LE(8);
  const header = b.subarray(10, 10 + len).toString('latin1');
  const m = /'shape': \(([^)]*)\)/.exec(header);
  return m![1]!
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
}

describe('model config', () => {
  it('fills from the preset and names bad fields', () => {
    const c = parseModelConfig({ preset: 'tiny' });
    expect([c.embedDim, c.depth, c.numHeads, c.imgSize, c.patchSize]).toEqual([192, 12, 3, 224, 16]);
    expect(() => parseModelConfig({ preset: 'tiny', inChans: 2 })).toThrow(/inChans: inChans must be 1 or 3/);
    expect(() => parseModelConfig({ preset: 'giant' })).toThrow(/preset/);
    expect(() => createModel({ ...MICRO, imgSize: 30 })).toThrow(/imgSize 30 is not divisible by patchSize 8/);
  });
});

describe('Model', () => {
  it('trains: the loss falls over steps on a fixed batch', async () => {
    const model = createModel(MICRO, 0);
    expect(model.numParams).toBeGreaterThan(10_000);
    const x = batch(4, 32, 1);
    const m = randomMaskBatch(4, 16, 0.75, lcg(2));
    const first = await trainStep(model, x, m, { lr: 1e-3 });
    let last = first;
    for (let i = 0; i < 15; i++) last = await trainStep(model, x, m, { lr: 1e-3 });
    expect(last.step).toBe(16);
    expect(first.gradNorm).toBeGreaterThan(0);
    expect(last.lossRec).toBeLessThan(first.lossRec * 0.9);
  });

  it('saves and loads: same features, same step, optimizer state kept', async () => {
    const dir = tmp();
    const model = createModel(MICRO, 3);
    const x = batch(2, 32, 1, 5);
    const m = randomMaskBatch(2, 16, 0.75, lcg(6));
    await trainStep(model, x, m, { lr: 1e-3 });
    const path = join(dir, 'ckpt.safetensors');
    await model.save(path);
    const back = await loadModel(path);
    expect(back.step).toBe(1);
    expect(back.loadInfo).toMatchObject({ missing: [], unexpected: [], configSource: 'metadata' });
    const [a, b] = await Promise.all([model.embed(x), back.embed(x)]);
    expect(b.shape).toEqual([2, 2, 32]);
    expect(Array.from(b.data)).toEqual(Array.from(a.data));
    const [sa, sb] = [await trainStep(model, x, m, { lr: 1e-3 }), await trainStep(back, x, m, { lr: 1e-3 })];
    expect(sb.lossRec).toBe(sa.lossRec);
    const r = await back.reconstruct(x, m.idsKeep, m.idsRestore, m.mask);
    expect(r.images.length).toBe(x.length);
    expect(r.loss).toBeGreaterThan(0);
  });

  it('leaves frozen tensors alone', async () => {
    const x = batch(2, 32, 1, 8);
    const m = randomMaskBatch(2, 16, 0.75, lcg(9));
    const encoder = ['patch_embed', 'cls_token', 'blocks', 'norm'];
    const frozen = createModel(MICRO, 4, encoder);
    const before = await frozen.embed(x);
    await trainStep(frozen, x, m, { lr: 1e-2 });
    expect(Array.from((await frozen.embed(x)).data)).toEqual(Array.from(before.data));
    const free = createModel(MICRO, 4);
    await trainStep(free, x, m, { lr: 1e-2 });
    expect(Array.from((await free.embed(x)).data)).not.toEqual(Array.from(before.data));
  });

  it('rejects mis-sized buffers and missing files with clear errors', async () => {
    const model = createModel(MICRO);
    const m = randomMaskBatch(2, 16, 0.75);
    await expect(async () =>
      model.trainStep(
        new Float32Array(10),
        m.idsKeep,
        m.idsRestore,
        m.mask,
        StepOptionsSchema.parse({ lr: 1e-3, weightDecay: 0 }),
      ),
    ).rejects.toThrow(/images has 10 values, not a multiple of C\*S\*S = 1024/);
    const bad = { ...m, idsKeep: Uint32Array.from(m.idsKeep, () => 99) };
    await expect(async () =>
      model.trainStep(
        batch(2, 32, 1),
        bad.idsKeep,
        m.idsRestore,
        m.mask,
        StepOptionsSchema.parse({ lr: 1e-3, weightDecay: 0 }),
      ),
    ).rejects.toThrow(/patch index 99 out of range 0..16/);
    await expect(loadModel(join(tmp(), 'nope.safetensors'))).rejects.toThrow(/nope.safetensors/);
  });
});

describe('CLI export / embed', () => {
  const main = join(import.meta.dirname, '..', 'src', 'cli', 'main.ts');
  const cli = (...args: string[]) =>
    execFileSync(process.execPath, ['--import', 'tsx', main, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });

  it('exports a timm encoder and embeds real angiograms with it', async () => {
    const dir = tmp();
    const model = createModel({ preset: 'micro', imgSize: 64 }, 1);
    const ckpt = join(dir, 'micro.safetensors');
    await model.save(ckpt);
    const timm = join(dir, 'timm.safetensors');
    expect(cli('export', ckpt, '--format', 'timm', '--out', timm)).toMatch(
      /wrote .*timm.safetensors \(timm encoder: embed 64, depth 2/,
    );
    const exported = await loadModel(timm);
    expect(exported.loadInfo!.missing.every((k) => k.startsWith('decoder') || k === 'mask_token')).toBe(true);
    expect(exported.loadInfo!.unexpected).toEqual([]);

    const samples = join(import.meta.dirname, '..', '..', 'data', 'samples', 'cadica-samples');
    const images = readdirSync(samples)
      .filter((f) => f.endsWith('.png'))
      .map((f) => join(samples, f));
    const out = join(dir, 'features.npy');
    expect(cli('embed', timm, ...images, '--out', out)).toMatch(/float32 \d+x2x64/);
    expect(readNpyShape(out)).toEqual([images.length, 2, 64]);
    // The exported encoder gives the original model's features.
    const f1 = await model.embedFiles(images);
    const f2 = await exported.embedFiles(images);
    const maxDiff = f1.data.reduce((mx, v, i) => Math.max(mx, Math.abs(v - f2.data[i]!)), 0);
    expect(maxDiff).toBeLessThan(1e-5);
    // bf16 autocast gives the same features within bf16's precision (and not bit for bit).
    const outBf16 = join(dir, 'features-bf16.npy');
    expect(cli('embed', timm, ...images, '--out', outBf16, '--precision', 'bf16')).toMatch(/float32 \d+x2x64/);
    const [a, b] = [readFileSync(out), readFileSync(outBf16)];
    const fa = new Float32Array(a.buffer, a.byteOffset + a.length - f1.data.length * 4, f1.data.length);
    const fb = new Float32Array(b.buffer, b.byteOffset + b.length - f1.data.length * 4, f1.data.length);
    const scale = fa.reduce((mx, v) => Math.max(mx, Math.abs(v)), 0);
    const d = fa.reduce((mx, v, i) => Math.max(mx, Math.abs(v - fb[i]!)), 0);
    expect(d / scale).toBeLessThan(3e-2);
    expect(d).toBeGreaterThan(0);
  });

  it('reports usage errors with exit code 2', () => {
    expect(() => cli('export', 'x.safetensors', '--format', 'onnx', '--out', 'y.safetensors')).toThrow(
      /only "timm" is supported/,
    );
    expect(() => cli('embed', 'x.safetensors', '--out', 'f.npy')).toThrow(
      /expected a checkpoint and at least one image/,
    );
    expect(() => cli('embed', 'x.safetensors', 'a.png', '--out', 'f.npy', '--precision', 'tf32')).toThrow(
      /precision: tf32 needs a CUDA device/,
    );
    // embed's flags come from its schema (EmbedSchema): its checks name the field.
    expect(() => cli('embed', 'x.safetensors', 'a.png', '--out', 'f.txt')).toThrow(/out must end in \.npy/);
    expect(() => cli('embed', 'x.safetensors', 'a.png', '--out', 'f.npy', '--precision', 'fp8')).toThrow(/precision/);
  });
});
