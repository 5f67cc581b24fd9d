// Run directory bookkeeping, PNG output and the masking-frequency map.
import { appendFileSync, mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { readImage } from '../src/index.js';
import { MaskFrequency } from '../src/train/maskfreq.js';
import { viridis } from '../src/util/draw.js';
import { parseCheckpointExtra, parseLoopState, PretrainLoopStateSchema } from '../src/config/checkpoint.js';
import { mergeConfig } from '../src/config/pretrain.js';
import { planRun, RunDir } from '../src/train/rundir.js';
import { encodePng, writePng } from '../src/util/png.js';
import { tempDir } from './helpers.js';

let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  tmp = tempDir('vasomim-run-');
});
afterEach(() => tmp.cleanup());

describe('RunDir', () => {
  it('lays out a run, logs JSON lines, survives a torn last line and truncates on resume', () => {
    const run = RunDir.create(tmp.path, 'r1');
    run.writeConfig({ seed: 0, model: { preset: 'tiny' } });
    for (let step = 1; step <= 5; step++) run.log({ step, loss: 1 / step, bad: step === 3 ? Number.NaN : 0 });
    appendFileSync(run.metricsPath, '{"step": 6, "lo'); // killed mid-write
    const again = RunDir.open(run.path);
    expect(again.readConfig()).toEqual({ seed: 0, model: { preset: 'tiny' } });
    const m = again.readMetrics();
    expect(m.map((r) => r.step)).toEqual([1, 2, 3, 4, 5]);
    expect(m[2]!.bad).toBeNull();
    again.truncateMetrics(3);
    expect(readFileSync(run.metricsPath, 'utf8').trim().split('\n')).toHaveLength(3);
    expect(() => RunDir.create(tmp.path, 'r1')).toThrow(/already exists and is not empty \(use --resume/);
    expect(() => RunDir.open(join(tmp.path, 'nope'))).toThrow(/not a run folder/);
  });

  it('finds the newest checkpoint by epoch and ignores temporary files', () => {
    const run = RunDir.create(tmp.path, 'r2');
    expect(run.latestCheckpoint()).toBeUndefined();
    for (const e of [2, 10, 4]) writeFileSync(join(run.checkpoints, `checkpoint-${e}.safetensors`), 'x');
    writeFileSync(join(run.checkpoints, 'checkpoint-99.safetensors.vasomim-tmp-1-2'), 'partial');
    utimesSync(join(run.checkpoints, 'checkpoint-4.safetensors'), new Date(), new Date(Date.now() + 1e6));
    expect(run.latestCheckpoint()).toBe(join(run.checkpoints, 'checkpoint-10.safetensors'));
  });
});

describe('PNG', () => {
  it('encodes grey and RGB images that decode to the same samples', async () => {
    const grey = Array.from({ length: 12 }, (_, i) => i * 20);
    writePng(join(tmp.path, 'g.png'), { width: 4, height: 3, data: grey });
    expect(Array.from((await readImage(join(tmp.path, 'g.png'))).pixels)).toEqual(grey);
    const rgb = [255, 0, 0, 10, 10, 10];
    writePng(join(tmp.path, 'c.png'), { width: 2, height: 1, data: rgb, channels: 3 });
    expect(Array.from((await readImage(join(tmp.path, 'c.png'))).pixels)).toEqual([76, 10]);
    expect(() => encodePng({ width: 2, height: 2, data: [1, 2, 3] })).toThrow(/3 samples, expected 2x2x1/);
    mkdirSync(join(tmp.path, 'x.png'));
    expect(() => writePng(join(tmp.path, 'x.png'), { width: 1, height: 1, data: [0] })).toThrow(
      /cannot write .*x\.png/,
    );
  });
});

describe('MaskFrequency', () => {
  it('counts how often each patch is masked and the share of masked patches with vessel', async () => {
    const mf = new MaskFrequency(2, 2);
    mf.add([1, 1, 0, 0, 1, 0, 1, 0], [5, 0, 0, 0, 5, 0, 0, 3]);
    expect(Array.from(mf.frequency())).toEqual([1, 0.5, 0.5, 0]);
    expect(mf.vesselShare()).toBeCloseTo(2 / 4, 12);
    // The heat map: the raw counts as .npy, a viridis map over the background, scaled to the map's range.
    const bg = { data: new Float64Array(16).fill(100), size: 4 };
    mf.writeHeatMap(join(tmp.path, 'freq'), bg);
    const npy = readFileSync(join(tmp.path, 'freq.npy'));
    const headerLen = npy.readUInt16LE(8);
    expect((10 + headerLen) % 64).toBe(0);
    expect(npy.toString('latin1', 10, 10 + headerLen)).toContain("'shape': (2, 2)");
    const counts = [0, 1, 2, 3].map((i) => npy.readDoubleLE(10 + headerLen + 8 * i));
    expect(counts).toEqual([2, 1, 1, 0]);
    const png = await readImage(join(tmp.path, 'freq.png'));
    const r = mf.heatMap(bg);
    expect([png.width, png.height]).toEqual([r.width, r.height]);
    expect(r.width).toBeGreaterThan(448); // 224-px cells for a 2 x 2 grid, plus the colour bar
    // The always-masked patch is viridis(1) (yellow) over grey 100, the never-masked one viridis(0).
    const at = (x: number, y: number) => Array.from(r.data.slice((y * r.width + x) * 3, (y * r.width + x) * 3 + 3));
    const blend = (c: readonly number[]) => c.map((v) => Math.round(0.6 * v + 0.4 * 100));
    const top = 12 + 14 + 10;
    expect(at(12 + 10, top + 10)).toEqual(blend(viridis(1)));
    expect(at(12 + 224 + 10, top + 224 + 10)).toEqual(blend(viridis(0)));
    expect(at(12 + 224 + 10, top + 10)).toEqual(blend(viridis(0.5)));
    expect(() => mf.add([1, 0, 1])).toThrow(/not a multiple of 4/);
  });
});

describe('planRun', () => {
  // A toy command: defaults, then the layers; `workers` belongs to one invocation.
  const resolveToy = (...layers: Record<string, unknown>[]) =>
    layers.reduce((m, l) => mergeConfig(m, l), { runs: tmp.path, epochs: 3, workers: 1, opt: { lr: 1 } }) as {
      runs: string;
      name?: string;
      epochs: number;
      workers: number;
      opt: { lr: number; wd?: number };
    };

  it('layers a new run, stores it, and resumes it with only the invocation keys changed', () => {
    const layers = [
      { name: 'toy', opt: { wd: 0.1 } },
      { epochs: 5, workers: 4 },
    ];
    const plan = planRun({ layers, resolve: resolveToy, invocation: ['workers'] });
    expect(plan.resumed).toBeUndefined();
    expect(plan.config).toMatchObject({ epochs: 5, workers: 4, opt: { lr: 1, wd: 0.1 } });
    const run = plan.create();
    expect(plan.create()).toBe(run);
    plan.write(run, { versions: { node: 'x' } });
    const saved = JSON.parse(readFileSync(run.configPath, 'utf8'));
    expect(saved.config).toEqual({ name: 'toy', opt: { wd: 0.1 }, epochs: 5, runs: tmp.path }); // no workers
    expect(saved.versions).toEqual({ node: 'x' });

    const again = planRun({
      layers: [{ epochs: 99, workers: 2 }],
      resume: run.path,
      resolve: resolveToy,
      invocation: ['workers'],
    });
    expect(again.resumed!.path).toBe(run.path);
    expect(again.config).toMatchObject({ epochs: 5, workers: 2, opt: { lr: 1, wd: 0.1 } });
    expect(() => again.resumed!.lastCheckpoint()).toThrow(
      /no checkpoint to resume from .*last\.safetensors is missing/,
    );
    expect(() => planRun({ layers: [], resume: run.path, resolve: resolveToy, invocation: [], key: 'input' })).toThrow(
      /config\.json: no "input" entry/,
    );
    expect(() => planRun({ layers: [], resume: join(tmp.path, 'nope'), resolve: resolveToy, invocation: [] })).toThrow(
      /nope is not a run folder/,
    );
  });
});

describe('saved loop state and checkpoint metadata', () => {
  it('parse with their schemas; a bad one is an error naming the file', () => {
    const state = {
      version: 1,
      epoch: 2,
      nextBatch: 1,
      step: 9,
      maskFrequency: { counts: [1, 0], images: 1, masked: 1, maskedWithVessel: 0 },
      epochMasked: 3,
      epochVessel: 1,
    };
    expect(parseLoopState(PretrainLoopStateSchema, JSON.stringify(state), 'a.safetensors', 'vasomim pretrain')).toEqual(
      state,
    );
    expect(() => parseLoopState(PretrainLoopStateSchema, undefined, 'a.safetensors', 'vasomim pretrain')).toThrow(
      /a\.safetensors: no loop state/,
    );
    expect(() => parseLoopState(PretrainLoopStateSchema, '{"version": 1', 'a.safetensors', 'vasomim pretrain')).toThrow(
      /a\.safetensors: loop state .* is not JSON/,
    );
    expect(() =>
      parseLoopState(
        PretrainLoopStateSchema,
        JSON.stringify({ ...state, step: -1 }),
        'a.safetensors',
        'vasomim pretrain',
      ),
    ).toThrow(/a\.safetensors: bad loop state[^]*step:/);
    const meta = {
      task: 'vessel-seg',
      classes: ['background', 'vessel'],
      mean: [0.5],
      std: [0.2],
      threshold: 0.5,
      loop: { bestDsc: null, bestEpoch: -1 },
    };
    expect(parseCheckpointExtra(JSON.stringify(meta), 'b.safetensors')).toEqual(meta);
    expect(() => parseCheckpointExtra(JSON.stringify({ ...meta, classes: 'x' }), 'b.safetensors')).toThrow(
      /b\.safetensors: bad segmentation metadata[^]*classes:/,
    );
  });
});
