// The `vasomim` command line: help, exit codes, error messages naming the bad flag or file,
// and the files it writes.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { vesselness } from '../src/index.js';
import { cli, readNpy, relErr, SAMPLES, tempDir, xcaSubset } from './helpers.js';

const XCA1 = join(SAMPLES, 'fercer-xca80', 'Angios_40_training', '1.png');
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vasomim-cli-');
});
afterAll(() => tmp.cleanup());

describe('vasomim', () => {
  it('lists its commands with --help and exits 2 without one', () => {
    const h = cli(['--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/vessels\s+vessel maps/);
    expect(h.stdout).toMatch(/vesselness\s+raw/);
    expect(cli([]).code).toBe(2);
    const u = cli(['frobnicate']);
    expect(u.code).toBe(2);
    expect(u.stderr).toMatch(/unknown command "frobnicate"/);
    expect(cli(['--version']).stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });

  it.each(['vessels', 'vesselness'])('%s --help documents every option', (cmd) => {
    const r = cli([cmd, '--help']);
    expect(r.code).toBe(0);
    for (const flag of ['--filter', '--sigmas', '--white-ridges', '--alpha', '--beta', '--gamma', '--config', '--help'])
      expect(r.stdout).toContain(flag);
    expect(r.stdout).toMatch(/16-bit grey is\s+scaled/);
  });
});

describe('vasomim vessels', () => {
  it('rejects bad flags with exit 2 and a message naming them', () => {
    const p = cli(['vessels', SAMPLES, '--percentile', '150']);
    expect(p.code).toBe(2);
    expect(p.stderr).toMatch(/map\.percentile: percentile must be in \[0, 100\] \(--percentile 150\)/);
    const s = cli(['vessels', SAMPLES, '--sigmas', '1,x']);
    expect(s.code).toBe(2);
    expect(s.stderr).toMatch(/--sigmas: "1,x" is not a comma-separated list of numbers/);
    const u = cli(['vessels', SAMPLES, '--bogus']);
    expect(u.code).toBe(2);
    expect(u.stderr).toMatch(/bogus/);
    const f = cli(['vessels', SAMPLES, '--filter', 'gabor']);
    expect(f.code).toBe(2);
    expect(f.stderr).toMatch(/--filter: unknown filter "gabor"/);
    const c = cli(['vessels', SAMPLES, '--cast', 'round']);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/--cast: unknown cast "round" \(expected clamp, wrap\)/);
  });

  it('reads a config file, lets flags override it, and names bad fields and files', () => {
    const cfg = join(tmp.path, 'job.json');
    writeFileSync(cfg, JSON.stringify({ map: { border: -4 } }));
    const bad = cli(['vessels', SAMPLES, '--config', cfg]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/map\.border: border must be >= 0/);
    const ok = cli([
      'vessels',
      SAMPLES,
      '--config',
      cfg,
      '--border',
      '3',
      '--out',
      join(tmp.path, 'cfgout'),
      '--exclude',
      '*',
      '--json',
    ]);
    expect(ok.stderr).toMatch(/no images found/); // every file excluded: the override reached the job
    const missing = cli(['vessels', SAMPLES, '--config', join(tmp.path, 'nope.json')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/nope\.json: no such file/);
    writeFileSync(cfg, '{ not json');
    expect(cli(['vessels', SAMPLES, '--config', cfg]).stderr).toMatch(/job\.json: not valid JSON/);
  });

  it('maps a tree, prints one error line per bad file, exits 1, and resumes', () => {
    const root = join(tmp.path, 'tree');
    mkdirSync(join(root, 'good'), { recursive: true });
    mkdirSync(join(root, 'bad'), { recursive: true });
    copyFileSync(XCA1, join(root, 'good', 'a.png'));
    copyFileSync(XCA1, join(root, 'good', 'b.png'));
    writeFileSync(join(root, 'bad', 'c.png'), readFileSync(XCA1).subarray(0, 500));
    writeFileSync(join(root, 'bad', 'd.jpg'), 'plain text');
    const r = cli(['vessels', root, '--json', '--jobs', '2']);
    expect(r.code).toBe(1);
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('error: '));
    expect(errors).toHaveLength(2);
    expect(errors.some((l) => l.includes(join('bad', 'c.png')) && /cannot decode/.test(l))).toBe(true);
    expect(errors.some((l) => l.includes(join('bad', 'd.jpg')) && /not an image/.test(l))).toBe(true);
    expect(r.stderr).toMatch(/2 processed, 0 skipped, 2 failed/);
    const summary = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect([summary.processed, summary.failed, summary.total]).toEqual([2, 2, 4]);
    const again = cli(['vessels', join(root, 'good')]);
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(/0 processed, 2 skipped, 0 failed/);
  });

  it('runs on the bundled samples when no root is given', () => {
    const r = cli(['vessels', '--json', '--filter', 'sato', '--jobs', '2'], { cwd: tmp.path });
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(s.total).toBeGreaterThanOrEqual(89);
    expect(s.failed).toBe(0);
    expect(s.out).toBe(join('runs', 'vessel-maps'));
    expect(r.stderr).toMatch(/maps in runs\/vessel-maps/);
  });
});

describe('vasomim vesselness', () => {
  it('writes the raw response as .npy in float64 or float32, equal to the API', async () => {
    const out64 = join(tmp.path, 'r64.npy');
    const r = cli(['vesselness', XCA1, '--out', out64]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/wrote .*r64\.npy \(300x300 float64, sato sigmas 1,2,3,4/);
    const n64 = readNpy(out64);
    expect([n64.descr, n64.shape]).toEqual(['<f8', [300, 300]]);
    const api = await vesselness(XCA1);
    expect(relErr(n64.data, api.data)).toBe(0);
    const out32 = join(tmp.path, 'r32.npy');
    expect(cli(['vesselness', XCA1, '--out', out32, '--dtype', 'float32', '--filter', 'frangi']).code).toBe(0);
    const n32 = readNpy(out32);
    expect(n32.descr).toBe('<f4');
    const fr = await vesselness(XCA1, { filter: 'frangi' });
    expect(relErr(n32.data, fr.data)).toBeLessThan(1e-4);
  });

  it('writes a display PNG scaled to the maximum', () => {
    const out = join(tmp.path, 'r.png');
    expect(cli(['vesselness', XCA1, '--out', out, '--sigmas', '2,3']).code).toBe(0);
    expect(readFileSync(out).subarray(1, 4).toString()).toBe('PNG');
  });

  it('explains bad usage and bad files', () => {
    expect(cli(['vesselness', XCA1]).stderr).toMatch(/--out <file\.npy\|file\.png> is required/);
    const ext = cli(['vesselness', XCA1, '--out', join(tmp.path, 'x.txt')]);
    expect(ext.code).toBe(2);
    expect(ext.stderr).toMatch(/must end in \.npy or \.png/);
    const dt = cli(['vesselness', XCA1, '--out', join(tmp.path, 'x.npy'), '--dtype', 'int8']);
    expect(dt.stderr).toMatch(/--dtype: "int8"/);
    const missing = cli(['vesselness', join(tmp.path, 'missing.png'), '--out', join(tmp.path, 'y.npy')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/missing\.png: cannot open/);
    const two = cli(['vesselness', XCA1, XCA1, '--out', join(tmp.path, 'z.npy')]);
    expect(two.stderr).toMatch(/expected exactly one image, got 2/);
  });
});

describe('bad input files exit 2 with a message naming the file', () => {
  const garbage = () => {
    const bad = join(tmp.path, 'bad.safetensors');
    writeFileSync(bad, Buffer.alloc(3000, 0x5a));
    const img = join(tmp.path, 'bad.png');
    writeFileSync(img, 'not an image\n');
    return { bad, img };
  };

  it('embed, predict and evaluate refuse a corrupt model or checkpoint file', () => {
    const { bad } = garbage();
    for (const args of [
      ['embed', bad, XCA1, '--out', join(tmp.path, 'f.npy')],
      ['predict', bad, XCA1, '--out', join(tmp.path, 'pred')],
      ['evaluate', bad, '--data', join(SAMPLES, 'fercer-xca80'), '--out', join(tmp.path, 'eval'), '--limit', '1'],
    ]) {
      const r = cli(args);
      expect(r.code, `${args[0]}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toContain(`${bad}:`);
    }
  });

  it('embed, predict and evaluate refuse a corrupt image', async () => {
    const { bad, img } = garbage();
    // embed: a real checkpoint, so the image is what fails.
    const { createModel } = await import('../src/index.js');
    const ckpt = join(tmp.path, 'micro.safetensors');
    await createModel({ preset: 'micro' }, 1).save(ckpt);
    const e = cli(['embed', ckpt, XCA1, img, '--out', join(tmp.path, 'f.npy')]);
    expect(e.code, e.stderr).toBe(2);
    expect(e.stderr).toContain(`${img}: not an image`);
    // predict checks its images before it reads the model.
    const p = cli(['predict', bad, img, '--out', join(tmp.path, 'pred')]);
    expect(p.code, p.stderr).toBe(2);
    expect(p.stderr).toContain(`${img}: not an image`);
    // evaluate: a corrupt test image in the dataset.
    const root = xcaSubset(tmp.path, 'xca-corrupt', [1], [21]);
    writeFileSync(join(root, 'testing', '21.png'), 'not an image\n');
    const v = cli(['evaluate', '--baseline', 'sato', '--data', root, '--out', join(tmp.path, 'eval2')]);
    expect(v.code, v.stderr).toBe(2);
    expect(v.stderr).toContain(join(root, 'testing', '21.png'));
  }, 60_000);

  it('evaluate refuses to tune the threshold on the split it reports', () => {
    const r = cli([
      'evaluate',
      '--baseline',
      'sato',
      '--data',
      join(SAMPLES, 'fercer-xca80'),
      '--out',
      join(tmp.path, 'eval3'),
      '--tune-split',
      'test',
      '--split',
      'test',
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/tuneSplit and evalSplit are both 'test'.*\(--tune-split test\)/);
    // A fixed threshold tunes nothing, so the same split is fine there.
    expect(
      cli([
        'evaluate',
        '--baseline',
        'sato',
        '--data',
        join(SAMPLES, 'fercer-xca80'),
        '--out',
        join(tmp.path, 'eval4'),
        '--split',
        'test',
        '--tune-split',
        'test',
        '--threshold',
        '0.5',
        '--limit',
        '2',
      ]).code,
    ).toBe(0);
  }, 60_000);
});
