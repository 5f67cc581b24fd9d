// `vasomim pretrain` end to end on a micro ViT: a 2-epoch run on a fixture dataset, exact resume
// (after --max-steps, Ctrl-C and SIGKILL), the NaN guard, and one clear error for bad configs,
// a missing segmentor and a dataset without maps.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join, relative, sep } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { PretrainSchema, resolvePretrainConfig } from '../src/config/pretrain.js';
import { demoImages } from '../src/train/demo.js';
import { prepareVesselMaps } from '../src/vessels/api.js';
import { cli, readJsonLines, ROOT, SAMPLES, tempDir } from './helpers.js';

const tmp = tempDir('vasomim-pretrain-');
const data = join(tmp.path, 'xa');
const noMaps = join(tmp.path, 'nomaps');
const runs = join(tmp.path, 'runs');
// micro ViT at 64² (16 patches of 16²): each step takes milliseconds.
const BASE = [
  'pretrain',
  '--data',
  data,
  '--runs',
  runs,
  '--model',
  'micro',
  '--img-size',
  '64',
  '--batch-size',
  '4',
  '--epochs',
  '3',
  '--warmup-epochs',
  '1',
  '--eta',
  '1',
  '--cons-weight',
  '0',
  '--segmentor',
  'none',
  '--workers',
  '2',
  '--checkpoint-every',
  '1',
  '--sample-every',
  '2',
];

beforeAll(async () => {
  const src = join(data, 'src');
  mkdirSync(src, { recursive: true });
  mkdirSync(noMaps, { recursive: true });
  const picks = [
    'cadica-samples/p10_v7_00031.png',
    'cadica-samples/p11_v5_00033.png',
    'cadica-samples/p11_v9_00032.png',
    'arcade-samples/STEN_001_0000.png',
    'arcade-samples/STEN_002_0000.png',
    'danilov-stenosis-samples/14_002_5_0016.png',
    'danilov-stenosis-samples/14_002_5_0017.png',
    'danilov-stenosis-samples/14_002_5_0018.png',
  ];
  for (const p of picks) {
    copyFileSync(join(SAMPLES, p), join(src, p.split('/')[1]!));
    copyFileSync(join(SAMPLES, p), join(noMaps, p.split('/')[1]!));
  }
  const s = await prepareVesselMaps(data);
  expect(s.processed).toBe(8);
}, 60_000);

afterAll(() => tmp.cleanup());

interface Rec {
  step: number;
  epoch: number;
  iter?: number;
  lr?: number;
  loss?: number;
  gradNorm?: number;
  vesselShare?: number | null;
  guided?: number;
  event?: string;
}

function metrics(run: string): Rec[] {
  return readJsonLines<Rec>(join(run, 'metrics.jsonl'));
}

/** What must repeat exactly in a resumed run (img/s of course does not). */
const key = (r: Rec) =>
  JSON.stringify([r.step, r.epoch, r.iter, r.lr, r.loss, r.gradNorm, r.vesselShare, r.guided, r.event]);

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

describe('vasomim pretrain', () => {
  let reference: Rec[];

  it('runs 3 epochs and writes a complete run folder', () => {
    const r = cli([...BASE, '--name', 'full']);
    expect(r.stderr).toContain('epoch');
    expect(r.code).toBe(0);
    const run = join(runs, 'full');
    for (const f of [
      'config.json',
      'checkpoints/last.safetensors',
      'checkpoints/checkpoint-0001.safetensors',
      'checkpoints/checkpoint-0003.safetensors',
      'samples/epoch-0001.png',
      'samples/epoch-0002.png',
      'samples/mask-frequency.png',
      'encoder.safetensors',
    ])
      expect(existsSync(join(run, f)), f).toBe(true);
    reference = metrics(run);
    const steps = reference.filter((r) => r.event === undefined);
    expect(steps.length).toBe(6); // 8 images, batch 4, 3 epochs
    expect(steps.map((s) => s.step)).toEqual([1, 2, 3, 4, 5, 6]);
    for (const s of steps) {
      expect(Number.isFinite(s.loss)).toBe(true);
      expect(s.vesselShare).toBeGreaterThanOrEqual(0);
    }
    // warm-up then cosine: lr(0) = 0, peak after 1 epoch, lower at the end
    expect(steps[0]!.lr).toBe(0);
    expect(steps[2]!.lr).toBeGreaterThan(steps[5]!.lr!);
    expect(reference.filter((r) => r.event === 'epoch').length).toBe(3);
    const cfg = JSON.parse(readFileSync(join(run, 'config.json'), 'utf8'));
    expect(cfg.resolved.model.embedDim).toBe(64);
    expect(cfg.resolved.epochs).toBe(3);
  }, 120_000);

  it('resumes after --max-steps with the same losses, bit for bit', () => {
    expect(cli([...BASE, '--name', 'partial', '--max-steps', '3']).code).toBe(0);
    const run = join(runs, 'partial');
    expect(metrics(run).filter((r) => r.event === undefined).length).toBe(3);
    const r = cli(['pretrain', '--resume', run]);
    expect(r.stderr).toContain('resuming');
    expect(r.code).toBe(0);
    expect(metrics(run).map(key)).toEqual(reference.map(key));
  }, 120_000);

  it('Ctrl-C checkpoints and exits 130; SIGKILL resumes from the last checkpoint; both equal a full run', async () => {
    // 8 epochs = 16 steps: the signal lands mid-run.
    const LONG = [...BASE, '--epochs', '8'];
    expect(cli([...LONG, '--name', 'long']).code).toBe(0);
    const long = metrics(join(runs, 'long'));
    for (const [name, signal] of [
      ['sigint', 'SIGINT'],
      ['sigkill', 'SIGKILL'],
    ] as const) {
      const run = join(runs, name);
      const child = spawn(
        process.execPath,
        ['--import', import.meta.resolve('tsx'), join(ROOT, 'ts/src/cli/main.ts'), ...LONG, '--name', name],
        { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      let killedAt = -1;
      const code = await new Promise<number | null>((resolve) => {
        const poll = setInterval(() => {
          const m = existsSync(join(run, 'metrics.jsonl')) ? metrics(run) : [];
          if (killedAt < 0 && m.some((r) => r.step >= 3)) {
            killedAt = Math.max(...m.map((r) => r.step));
            child.kill(signal);
          }
        }, 2);
        child.on('exit', (c) => {
          clearInterval(poll);
          resolve(c);
        });
      });
      expect(killedAt, 'the signal must land mid-run').toBeLessThan(16);
      if (signal === 'SIGINT') {
        expect(code, stderr).toBe(130);
        expect(stderr).toContain(`resume with: vasomim pretrain --resume ${run}`);
      } else expect(code).toBeNull();
      const done = metrics(run).filter((r) => r.event === undefined).length;
      expect(done).toBeLessThan(16);
      const r = cli(['pretrain', '--resume', run]);
      expect(r.code, r.stderr).toBe(0);
      expect(metrics(run).map(key)).toEqual(long.map(key));
    }
  }, 180_000);

  it('--resume of a run whose checkpoint is corrupt exits 2 naming the checkpoint', () => {
    expect(cli([...BASE, '--name', 'corrupt', '--max-steps', '1']).code).toBe(0);
    const last = join(runs, 'corrupt', 'checkpoints', 'last.safetensors');
    writeFileSync(last, Buffer.alloc(4096, 0x5a));
    const r = cli(['pretrain', '--resume', join(runs, 'corrupt')]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(`${last}:`);
  }, 120_000);

  it('stops on a non-finite loss and keeps the last good checkpoint', () => {
    const run = join(runs, 'nan');
    // lr 1e30: step 1 is finite (its loss is computed before the update), step 2 is not.
    expect(cli([...BASE, '--name', 'nan', '--warmup-epochs', '0', '--lr', '1e30', '--max-steps', '1']).code).toBe(0);
    const last = join(run, 'checkpoints', 'last.safetensors');
    const before = sha(last);
    const r = cli(['pretrain', '--resume', run]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/step 2 .*non-finite loss/);
    expect(r.stderr).toContain(`the last good checkpoint is ${last}`);
    expect(sha(last)).toBe(before);
    expect(metrics(run).at(-1)!.event).toBe('non-finite');
  }, 120_000);

  it('names the bad field of a config', () => {
    const bad = join(tmp.path, 'bad.json');
    writeFileSync(bad, JSON.stringify({ maskRatio: 1.5, epochs: 0, typo: 1 }));
    const r = cli(['pretrain', '--config', bad, '--runs', runs]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('maskRatio: maskRatio must be in [0, 1)');
    expect(r.stderr).toContain('epochs: epochs must be >= 1');
    expect(r.stderr).toMatch(/typo/);
    expect(existsSync(join(runs, 'bad'))).toBe(false);
    const flag = cli(['pretrain', '--epochs', 'ten']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain('--epochs: "ten" is not a number');
  });

  it('needs a segmentor for eta < 1 or L_cons, and says which file is missing', () => {
    const r = cli(['pretrain', '--data', data, '--runs', runs, '--preset', 'vasomim-vit-b']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('segmentor: eta < 1 and consWeight > 0 need a segmentor checkpoint');
    const missing = join(tmp.path, 'nope.safetensors');
    const m = cli([...BASE, '--name', 'noseg', '--segmentor', missing, '--eta', '0.5']);
    expect(m.code).not.toBe(0);
    expect(m.stderr).toContain(`segmentor checkpoint ${missing} does not exist`);
  });

  it('refuses a dataset without vessel maps for guided masking, and trains on it with random masking', () => {
    const r = cli([...BASE, '--data', noMaps, '--name', 'nomaps']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('have no vessel map');
    expect(r.stderr).toContain('vasomim vessels');
    const ok = cli([
      ...BASE,
      '--data',
      noMaps,
      '--name',
      'nomaps-random',
      '--masking',
      'random',
      '--epochs',
      '1',
      '--warmup-epochs',
      '0',
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    const m = metrics(join(runs, 'nomaps-random')).filter((r) => r.event === undefined);
    expect(m.length).toBe(2);
    expect(m[0]!.vesselShare).toBeNull();
  });

  it('trains a segmentor, then pre-trains with it: guidance from S and L_cons through S', () => {
    const t = cli([
      'train-segmentor',
      '--data',
      data,
      '--runs',
      runs,
      '--name',
      'seg',
      '--epochs',
      '2',
      '--batch-size',
      '4',
      '--img-size',
      '64',
      '--workers',
      '2',
    ]);
    expect(t.code, t.stderr).toBe(0);
    const seg = join(runs, 'seg', 'segmentor.safetensors');
    expect(existsSync(seg)).toBe(true);
    expect(existsSync(join(runs, 'seg', 'samples', 'predictions.png'))).toBe(true);
    const segSteps = metrics(join(runs, 'seg')).filter((r) => r.event === undefined);
    expect(segSteps.length).toBe(4);
    /** One epoch with the segmentor at eta 0.5 and L_cons weighted `consWeight`. */
    const withSeg = (consWeight: string) => [
      ...BASE,
      '--segmentor',
      seg,
      '--eta',
      '0.5',
      '--cons-weight',
      consWeight,
      '--epochs',
      '1',
      '--warmup-epochs',
      '0',
    ];
    /** The step records of a run (no events), with their loss terms. */
    const stepsOf = (name: string) =>
      metrics(join(runs, name)).filter((x) => x.event === undefined) as (Rec & {
        lossRec: number;
        lossCons: number | null;
      })[];
    const r = cli([...withSeg('0.5'), '--name', 'withseg']);
    expect(r.code, r.stderr).toBe(0);
    const steps = stepsOf('withseg');
    expect(steps.length).toBe(2);
    for (const x of steps) {
      expect(x.lossCons).toBeGreaterThan(0);
      expect(x.loss!).toBeCloseTo(x.lossRec + 0.5 * x.lossCons!, 5);
    }
    // The same run without L_cons has the same L_rec on its first step (same weights, batch, masks).
    const r0 = cli([...withSeg('0'), '--name', 'withseg-nocons']);
    expect(r0.code, r0.stderr).toBe(0);
    const s0 = stepsOf('withseg-nocons');
    expect(s0[0]!.lossRec).toBe(steps[0]!.lossRec);
    expect(s0[0]!.lossCons).toBeNull();
    // Exact resume holds with S attached (P recomputed from the same batch, eval-mode BatchNorm).
    const args = withSeg('0.5');
    expect(cli([...args, '--name', 'withseg-resume', '--max-steps', '1']).code).toBe(0);
    expect(cli(['pretrain', '--resume', join(runs, 'withseg-resume')]).code).toBe(0);
    expect(metrics(join(runs, 'withseg-resume')).map(key)).toEqual(metrics(join(runs, 'withseg')).map(key));
    // A segmentor for other input channels is refused with both counts named.
    const one = cli([
      ...BASE,
      '--name',
      'withseg-1ch',
      '--segmentor',
      seg,
      '--in-chans',
      '1',
      '--epochs',
      '1',
      '--warmup-epochs',
      '0',
    ]);
    expect(one.code).not.toBe(0);
    expect(one.stderr).toMatch(/takes 3 input channel\(s\), the model 1/);
  }, 120_000);

  it('train-segmentor: Ctrl-C writes a checkpoint, --resume ends as the uninterrupted run', async () => {
    const args = [
      'train-segmentor',
      '--data',
      data,
      '--runs',
      runs,
      '--epochs',
      '6',
      '--batch-size',
      '2',
      '--img-size',
      '64',
      '--workers',
      '2',
    ];
    expect(cli([...args, '--name', 'seg-full']).code).toBe(0);
    const segKey = (run: string) =>
      metrics(run).map((r) => JSON.stringify([r.step, r.epoch, r.iter, r.lr, r.loss, r.event]));
    const full = segKey(join(runs, 'seg-full'));
    const run = join(runs, 'seg-int');
    const child = spawn(
      process.execPath,
      ['--import', import.meta.resolve('tsx'), join(ROOT, 'ts/src/cli/main.ts'), ...args, '--name', 'seg-int'],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    let sent = false;
    const code = await new Promise<number | null>((resolve) => {
      const poll = setInterval(() => {
        if (!sent && existsSync(join(run, 'metrics.jsonl')) && metrics(run).some((r) => r.step >= 3)) {
          sent = true;
          child.kill('SIGINT');
        }
      }, 2);
      child.on('exit', (c) => {
        clearInterval(poll);
        resolve(c);
      });
    });
    expect(code, stderr).toBe(130);
    expect(stderr).toContain(`resume with: vasomim train-segmentor --resume ${run}`);
    expect(metrics(run).filter((r) => r.event === undefined).length).toBeLessThan(24);
    const r = cli(['train-segmentor', '--resume', run]);
    expect(r.code, r.stderr).toBe(0);
    expect(segKey(run)).toEqual(full);
  }, 120_000);

  it('--help documents every field of the run config', () => {
    const r = cli(['pretrain', '--help']);
    expect(r.code).toBe(0);
    const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()).replace('alpha-t', 'alpha-t');
    for (const k of Object.keys(PretrainSchema.shape)) {
      if (k === 'augment') continue; // the crop follows the model's size and channels
      expect(r.stdout, k).toContain(`--${k === 'model' ? 'model' : kebab(k)}`);
    }
    const t = cli(['train-segmentor', '--help']);
    expect(t.code).toBe(0);
    expect(t.stdout).toContain('--resume');
  });

  it('the npm package ships what the embedded demo and the install hook need', () => {
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const files = new Set((JSON.parse(r.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path));
    const need = [
      'scripts/install.mjs',
      'data/models/unext-s-demo.safetensors',
      'data/models/PROVENANCE.md',
      'ts/dist/cli/main.js',
      'bindings/index.js',
    ];
    for (const img of demoImages()) need.push(relative(ROOT, img.image).split(sep).join('/'));
    for (const f of need) expect(files.has(f), f).toBe(true);
  });

  it('presets: the paper recipe and the demo resolve with flags on top', () => {
    const paper = resolvePretrainConfig({ preset: 'vasomim-vit-b', segmentor: 'unext.safetensors' });
    expect(paper).toMatchObject({
      epochs: 800,
      warmupEpochs: 40,
      blr: 1.5e-4,
      batchSize: 2048,
      maskRatio: 0.5,
      beta1: 0.9,
      beta2: 0.95,
      weightDecay: 0.05,
      eta: 0.5,
      alphaT: 0.5,
      consWeight: 1,
    });
    expect(paper.model).toMatchObject({
      embedDim: 768,
      depth: 12,
      numHeads: 12,
      decoderEmbedDim: 512,
      decoderDepth: 8,
    });
    const demo = resolvePretrainConfig({}, { epochs: 2, warmupEpochs: 1, model: { imgSize: 112 } });
    expect(demo.preset).toBe('demo');
    expect(demo.model).toMatchObject({ embedDim: 192, imgSize: 112, decoderDepth: 2 });
    expect(demo.augment.size).toBe(112);
  });
});

describe('device', () => {
  it('asking this CPU build for cuda exits 2 with how to get a CUDA build, and writes no run', () => {
    const dir = tempDir();
    try {
      const cfg = join(dir.path, 'cuda.json');
      writeFileSync(cfg, JSON.stringify({ device: 'cuda' }));
      const r = cli(['pretrain', '--config', cfg, '--runs', join(dir.path, 'runs')]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(
        /device cuda:0: this build of vasomim has no CUDA support; build it with `--features cuda` \(see docs\/CUDA/,
      );
      expect(existsSync(join(dir.path, 'runs'))).toBe(false);
      const flag = cli(['pretrain', '--device', 'cuda', '--runs', join(dir.path, 'runs')]);
      expect(flag.code).toBe(2);
      expect(flag.stderr).toMatch(/no CUDA support; build it with `--features cuda` \(see docs\/CUDA\.md\)/);
      const bad = join(dir.path, 'bad.json');
      writeFileSync(bad, JSON.stringify({ device: 'gpu' }));
      expect(cli(['pretrain', '--config', bad, '--runs', join(dir.path, 'runs')]).stderr).toMatch(
        /expected cpu, cuda or cuda:N/,
      );
    } finally {
      dir.cleanup();
    }
  });

  it('precision: tf32 on the CPU is a config error before any run folder; bf16 autocast trains near f32', () => {
    const dir = tempDir();
    try {
      const r = cli(['pretrain', '--precision', 'tf32', '--runs', join(dir.path, 'runs')]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/precision: tf32 needs a CUDA device \(device is cpu\)/);
      expect(existsSync(join(dir.path, 'runs'))).toBe(false);
      expect(cli(['pretrain', '--precision', 'fp16', '--runs', join(dir.path, 'runs')]).stderr).toMatch(
        /--precision: unknown precision "fp16" \(expected auto, f32, tf32, bf16\)/,
      );
      // One epoch of the micro run in f32 and in bf16 (autocast: bf16 matrix products, f32 statistics
      // and losses, f32 weights): same data, masks and init, so the losses differ by bf16 rounding only.
      const set: Record<string, string> = { '--runs': join(dir.path, 'runs'), '--epochs': '1', '--warmup-epochs': '0' };
      const base = BASE.map((v, i) => set[BASE[i - 1] ?? ''] ?? v);
      const f32 = cli([...base, '--name', 'f32']);
      const bf16 = cli([...base, '--name', 'bf16', '--precision', 'bf16']);
      expect(f32.code, f32.stderr).toBe(0);
      expect(bf16.code, bf16.stderr).toBe(0);
      const losses = (name: string) =>
        metrics(join(dir.path, 'runs', name))
          .filter((m) => m.loss !== undefined)
          .map((m) => m.loss!);
      const [a, b] = [losses('f32'), losses('bf16')];
      expect(a.length).toBeGreaterThan(0);
      expect(b.length).toBe(a.length);
      for (let i = 0; i < a.length; i++) expect(Math.abs(b[i]! - a[i]!) / a[i]!).toBeLessThan(2e-2);
      expect(b).not.toEqual(a);
    } finally {
      dir.cleanup();
    }
  }, 120_000);

  it('vasomim doctor names the build features and why CUDA is unavailable', () => {
    const r = cli(['doctor', '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as { features: string[]; cudaDevices: string[]; cudaUnavailable: string | null };
    expect(j.features).toEqual([]);
    expect(j.cudaDevices).toEqual([]);
    expect(j.cudaUnavailable).toMatch(/no CUDA support; build it with `--features cuda` \(see docs\/CUDA\.md\)/);
    expect(cli(['doctor']).stdout).toMatch(/--device cuda: unavailable: this build of vasomim has no CUDA support/);
  });

  it('the native handles take the device and refuse one this build lacks', async () => {
    const { native } = await import('../src/native.js');
    expect(() => native.checkDevice('cpu')).not.toThrow();
    expect(() => native.Segmentor.create({ inChans: 1 }, 0, 'cuda:1')).toThrow(
      /device cuda:1: this build of vasomim has no CUDA support/,
    );
    expect(() => native.Segmentor.create({ inChans: 2 })).toThrow(/inChans must be 1 or 3, got 2/);
    expect(() => native.Segmentor.create({ channels: 1 })).toThrow(/unknown field `channels`/);
  });
});
