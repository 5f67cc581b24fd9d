// Run directory bookkeeping, PNG output and the masking-frequency map.
import { appendFileSync, mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { readImage } from '../src/index.js';
import { MaskFrequency } from '../src/train/maskfreq.js';
import { RunDir } from '../src/train/rundir.js';
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
    expect(() => writePng(join(tmp.path, 'x.png'), { width: 1, height: 1, data: [0] })).toThrow(/cannot write .*x\.png/);
  });
});

describe('MaskFrequency', () => {
  it('counts how often each patch is masked and the share of masked patches with vessel', async () => {
    const mf = new MaskFrequency(2, 2);
    mf.add([1, 1, 0, 0, 1, 0, 1, 0], [5, 0, 0, 0, 5, 0, 0, 3]);
    expect(Array.from(mf.frequency())).toEqual([1, 0.5, 0.5, 0]);
    expect(mf.vesselShare()).toBeCloseTo(2 / 4, 12);
    mf.writePng(join(tmp.path, 'freq.png'), 4);
    const img = await readImage(join(tmp.path, 'freq.png'));
    expect([img.width, img.height]).toEqual([8, 8]);
    expect([img.pixels[0], img.pixels[4], img.pixels[63]]).toEqual([255, 128, 0]);
    expect(() => mf.add([1, 0, 1])).toThrow(/not a multiple of 4/);
  });
});
