// Data-parallel pre-training on the CPU through the TCP test collective (docs/DISTRIBUTED.md):
// 2 and 3 local ranks train like 1 process with the same effective batch (every logged number
// and the final weights within 1e-6 relative), DistributedSampler sharding, a SIGKILLed rank
// stopping the run with an intact checkpoint, and resuming on another world size.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { openLoader } from '../src/data/loader.js';
import { native } from '../src/native.js';
import { demoImages } from '../src/train/demo.js';
import { prepareVesselMaps } from '../src/vessels/api.js';
import { cli, readJsonLines, relErr, ROOT, tempDir } from './helpers.js';

const tmp = tempDir('vasomim-dist-');
const data = join(tmp.path, 'xa');
const runs = join(tmp.path, 'runs');
// 13 images: world·⌊13/world⌋ = 12 kept for 2 and 3 ranks; batch 6 = 2 steps per epoch on any
// world size. Masks from the offline maps (eta 1), L_cons through the bundled segmentor.
// Micro-batches of one image: each image's forward/backward is then the same computation on
// every world size, so the comparison isolates the data-parallel part (sharding, masks,
// averaging). With whole-batch micro-batches f32 summation order alone moves L_cons by ~2e-6.
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
  '6',
  '--epochs',
  '5',
  '--warmup-epochs',
  '1',
  '--lr',
  '1e-3',
  '--eta',
  '1',
  '--cons-weight',
  '1',
  '--segmentor',
  'bundled',
  '--alpha0',
  '0.5',
  '--max-micro-batch',
  '1',
  '--workers',
  '1',
  '--checkpoint-every',
  '1',
  '--sample-every',
  '5',
];
/**
 * The runs differ by summation order only (the ranks' sums are added in another order), but not
 * every quantity is continuous in the weights. The segmentor of L_cons has ReLUs and 2×2
 * max-pools: when rounding-level weight differences move an activation across a ReLU's zero or
 * swap a max-pool tie, that pixel's gradient goes elsewhere, and the runs drift apart from there.
 * Measured (3 ranks, 10 steps, 2026-11-29): every value within 2e-7 until such a flip at step 9;
 * then gradNorm 2.9e-4, lossCons 1.4e-6 (step 10), moments 1.3e-3. The tolerances are about 10×
 * those; a wrong reduction (a mean instead of a sum, a rank's share weighted twice, a sample
 * missing) moves every one of them by 17 % or more.
 */
const TOL = 1e-5;
const TOL_GRAD = 3e-3;
const TOL_KINK = 1e-2;

beforeAll(async () => {
  const src = join(data, 'src');
  mkdirSync(src, { recursive: true });
  for (const s of demoImages().slice(0, 13)) copyFileSync(s.image, join(src, basename(s.image)));
  expect((await prepareVesselMaps(data)).processed).toBe(13);
}, 60_000);

afterAll(() => tmp.cleanup());

interface Rec {
  step: number;
  epoch: number;
  iter?: number;
  lr?: number;
  loss?: number;
  lossRec?: number;
  lossCons?: number;
  gradNorm?: number;
  vesselShare?: number | null;
  guided?: number;
  event?: string;
}

const metrics = (run: string): Rec[] => readJsonLines<Rec>(join(run, 'metrics.jsonl'));

/** The f32 tensors of a safetensors file by name. */
function tensors(path: string): Map<string, Float32Array> {
  const b = readFileSync(path);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; data_offsets: [number, number] }
  >;
  const out = new Map<string, Float32Array>();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__' || t.dtype !== 'F32') continue;
    const [s, e] = t.data_offsets;
    out.set(name, new Float32Array(new Uint8Array(b.subarray(8 + n + s, 8 + n + e)).buffer));
  }
  return out;
}

/** What must be bit for bit equal in two runs of the same computation (img/s of course is not). */
const exact = (r: Rec) =>
  JSON.stringify([r.step, r.epoch, r.iter, r.lr, r.loss, r.lossRec, r.lossCons, r.gradNorm, r.guided, r.event]);

/** Every step record equal in position, lr and counters, within TOL in the losses and TOL_GRAD in the gradient norm. */
function expectSameRun(got: Rec[], want: Rec[]): void {
  expect(got.length).toBe(want.length);
  got.forEach((g, i) => {
    const w = want[i]!;
    const where = `record ${i} (step ${w.step}, ${w.event ?? 'step'})`;
    expect([g.step, g.epoch, g.iter, g.lr, g.event, g.guided, g.vesselShare], where).toEqual([
      w.step,
      w.epoch,
      w.iter,
      w.lr,
      w.event,
      w.guided,
      w.vesselShare,
    ]);
    for (const k of ['loss', 'lossRec', 'lossCons'] as const)
      if (w[k] !== undefined) expect(relErr([g[k]!], [w[k]]), `${where} ${k}`).toBeLessThan(TOL);
    if (w.gradNorm !== undefined)
      expect(relErr([g.gradNorm!], [w.gradNorm]), `${where} gradNorm`).toBeLessThan(TOL_GRAD);
  });
}

/** ‖a − b‖ / ‖b‖ */
function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let n = 0;
  for (let i = 0; i < b.length; i++) {
    d += (a[i]! - b[i]!) ** 2;
    n += b[i]! ** 2;
  }
  return Math.sqrt(d / n);
}

/**
 * Weights and AdamW moments of two checkpoints within TOL_KINK, ‖a − b‖ / ‖b‖ per tensor. Left out:
 * the key third of each `attn.qkv.bias`, whose exact gradient is zero (softmax ignores a shift
 * shared by all keys), so its AdamW updates are rounding noise in any run (measured: |k bias|
 * stays < 5e-5 while the q and v biases reach 4e-3, and two runs differ there by up to 1 %).
 */
/** `vasomim pretrain` of the tiny config on `nproc` ranks for 400 epochs, in the background: the
 * launcher and its stderr so far. */
function launchLong(name: string, nproc: number): { child: ChildProcess; stderr: () => string } {
  const main = join(ROOT, 'ts/src/cli/main.ts');
  const args = [...BASE, '--epochs', '400', '--name', name, '--nproc', String(nproc)];
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), main, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  return { child, stderr: () => stderr };
}

function expectSameWeights(a: string, b: string): void {
  const ta = tensors(a);
  const tb = tensors(b);
  expect([...ta.keys()].sort()).toEqual([...tb.keys()].sort());
  expect(ta.size).toBeGreaterThan(100);
  for (const [name, x] of ta) {
    let [u, v] = [x, tb.get(name)!];
    if (name.endsWith('attn.qkv.bias')) {
      const d = v.length / 3;
      [u, v] = [u, v].map((t) => Float32Array.of(...t.subarray(0, d), ...t.subarray(2 * d))) as [
        Float32Array,
        Float32Array,
      ];
    }
    expect(relL2(u, v), name).toBeLessThan(TOL_KINK);
  }
}

const last = (name: string) => join(runs, name, 'checkpoints', 'last.safetensors');

describe('data-parallel pre-training (CPU test collective)', () => {
  let reference: Rec[];

  it('2 and 3 ranks train like 1 process with the same effective batch (a group of 1: bit for bit)', () => {
    const one = cli([...BASE, '--name', 'w1']);
    expect(one.code, one.stderr).toBe(0);
    reference = metrics(join(runs, 'w1'));
    const steps = reference.filter((r) => r.event === undefined);
    expect(steps.length).toBe(10); // 2 steps x 5 epochs
    expect(steps.some((s) => s.guided! > 0)).toBe(true);
    expect(steps.every((s) => s.lossCons! > 0)).toBe(true);
    // A group of one rank goes through the same code path (buckets, sums) and changes nothing.
    const solo = cli([...BASE, '--name', 'n1', '--nproc', '1']);
    expect(solo.code, solo.stderr).toBe(0);
    expect(metrics(join(runs, 'n1')).map(exact)).toEqual(reference.map(exact));
    expect(tensors(last('n1'))).toEqual(tensors(last('w1')));
    for (const n of [2, 3]) {
      const r = cli([...BASE, '--name', `w${n}`, '--nproc', String(n)]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toContain(`${n} ranks joined`);
      expect(r.stderr).toContain(`rank ${n - 1}: pid`);
      expectSameRun(metrics(join(runs, `w${n}`)), reference);
      expectSameWeights(last(`w${n}`), last('w1'));
      // Rank 0 alone wrote the run folder: one metrics line per step, the pictures and the encoder.
      expect(existsSync(join(runs, `w${n}`, 'encoder.safetensors'))).toBe(true);
    }
  }, 240_000);

  it('shards like DistributedSampler(drop_last): each kept sample once per epoch, same global batches', async () => {
    const open = (rank: number, world: number) =>
      openLoader(data, { batchSize: 6 / world, rank, world, seed: 3, maps: 'require', workers: 1 });
    const single = await open(0, 1);
    for (const world of [2, 3]) {
      const ranks = await Promise.all(Array.from({ length: world }, (_, r) => open(r, world)));
      for (const epoch of [0, 1, 2]) {
        const order = [...single.shard(epoch)];
        const shards = ranks.map((l) => [...l.shard(epoch)]);
        const all = shards.flat();
        // world·⌊13/world⌋ = 12 samples, each exactly once; the one left out is the order's last.
        expect(all.length).toBe(12);
        expect(new Set(all).size).toBe(12);
        expect(all.sort((a, b) => a - b)).toEqual(order.slice(0, 12).sort((a, b) => a - b));
        // Rank r takes positions r, r + world, ...: global batch b = the 1-rank batch b.
        shards.forEach((s, r) => expect(s).toEqual(order.slice(0, 12).filter((_, i) => i % world === r)));
        for (const b of [0, 1]) {
          const global = shards.flatMap((s) => s.slice((b * 6) / world, ((b + 1) * 6) / world));
          expect(global.sort((x, y) => x - y)).toEqual(order.slice(b * 6, b * 6 + 6).sort((x, y) => x - y));
        }
      }
      for (const l of ranks) expect(l.batchesPerEpoch).toBe(single.batchesPerEpoch);
      ranks.forEach((l) => l.close());
    }
    single.close();
  });

  it('resumes on another world size (2 ranks, then 3) and continues the same run', () => {
    const run = join(runs, 'elastic');
    const a = cli([...BASE, '--name', 'elastic', '--nproc', '2', '--max-steps', '5']);
    expect(a.code, a.stderr).toBe(0);
    expect(metrics(run).filter((r) => r.event === undefined).length).toBe(5);
    const b = cli(['pretrain', '--resume', run, '--nproc', '3', '--workers', '1']);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toContain('on 3 ranks');
    expectSameRun(metrics(run), reference);
    expectSameWeights(last('elastic'), last('w1'));
  }, 120_000);

  it('a SIGKILLed rank stops the run within seconds, with one error and an intact checkpoint', async () => {
    const run = join(runs, 'killed');
    const { child, stderr } = launchLong('killed', 3);
    let killedAt = 0;
    const code = await new Promise<number | null>((resolve) => {
      const poll = setInterval(() => {
        const pid = /rank 1: pid (\d+)/.exec(stderr())?.[1];
        const epochs = existsSync(join(run, 'metrics.jsonl'))
          ? metrics(run).filter((r) => r.event === 'epoch').length
          : 0;
        if (!killedAt && pid && epochs >= 2) {
          killedAt = performance.now();
          process.kill(Number(pid), 'SIGKILL');
        }
      }, 5);
      child.on('exit', (c) => {
        clearInterval(poll);
        resolve(c);
      });
    });
    expect(killedAt, stderr()).toBeGreaterThan(0);
    expect(performance.now() - killedAt).toBeLessThan(10_000);
    expect(code).not.toBe(0);
    expect(code).not.toBeNull();
    expect(stderr()).toMatch(/distributed run failed: rank 1 \(pid \d+\) was killed by SIGKILL/);
    expect(stderr().match(/distributed run failed/g)?.length).toBe(1);
    // The last checkpoint loads, with its loop position, and the run continues from it.
    const m = await native.Model.load(last('killed'));
    expect(JSON.parse(m.loadInfo!.loopState!).step).toBeGreaterThanOrEqual(2);
    const r = cli(['pretrain', '--resume', run, '--nproc', '2', '--workers', '1', '--max-steps', '2']);
    expect(r.code, r.stderr).toBe(0);
  }, 120_000);

  it('a SIGKILLed launcher: its ranks stop at the same step with a checkpoint, and the run resumes', async () => {
    const run = join(runs, 'orphaned');
    const { child, stderr } = launchLong('orphaned', 2);
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    const pids = await new Promise<number[]>((resolve) => {
      const poll = setInterval(() => {
        const found = [0, 1].map((r) => Number(new RegExp(`rank ${r}: pid (\\d+)`).exec(stderr())?.[1] ?? 0));
        const steps = existsSync(join(run, 'metrics.jsonl')) ? metrics(run).length : 0;
        if (found.every((p) => p > 0) && steps >= 3) {
          clearInterval(poll);
          child.kill('SIGKILL');
          resolve(found);
        }
      }, 5);
    });
    const killedAt = performance.now();
    while (pids.some(alive) && performance.now() - killedAt < 30_000) await new Promise((r) => setTimeout(r, 50));
    expect(pids.filter(alive), stderr()).toEqual([]);
    // Rank 0 (whose output this is) ended as on Ctrl-C: every rank voted to stop, whichever of them
    // noticed first; a rank that died instead would have ended it with "rank 1 is gone".
    expect(stderr()).toContain(`resume with: vasomim pretrain --resume ${run}`);
    expect(stderr()).not.toContain('is gone during');
    // The checkpoint is at the last logged step, and the run continues.
    const m = await native.Model.load(last('orphaned'));
    const at = JSON.parse(m.loadInfo!.loopState!).step as number;
    expect(at).toBe(metrics(run).filter((r) => r.event === undefined).length);
    const r = cli(['pretrain', '--resume', run, '--nproc', '2', '--workers', '1', '--max-steps', '1']);
    expect(r.code, r.stderr).toBe(0);
    expect(metrics(run).filter((r) => r.event === undefined).length).toBe(at + 1);
  }, 120_000);

  it('Ctrl-C reaches every rank: they stop at the same step with a checkpoint (exit 130) and resume', async () => {
    const run = join(runs, 'interrupted');
    const { child, stderr } = launchLong('interrupted', 2);
    const code = await new Promise<number | null>((resolve) => {
      let sent = false;
      const poll = setInterval(() => {
        const steps = existsSync(join(run, 'metrics.jsonl')) ? metrics(run).length : 0;
        if (!sent && steps >= 3) {
          sent = true;
          child.kill('SIGINT');
        }
      }, 5);
      child.on('exit', (c) => {
        clearInterval(poll);
        resolve(c);
      });
    });
    expect(code, stderr()).toBe(130);
    expect(stderr()).toContain(`resume with: vasomim pretrain --resume ${run}`);
    const m = await native.Model.load(last('interrupted'));
    const at = JSON.parse(m.loadInfo!.loopState!).step as number;
    expect(at).toBe(metrics(run).filter((r) => r.event === undefined).length);
    const r = cli(['pretrain', '--resume', run, '--nproc', '2', '--workers', '1', '--max-steps', '1']);
    expect(r.code, r.stderr).toBe(0);
    expect(metrics(run).filter((r) => r.event === undefined).length).toBe(at + 1);
  }, 120_000);

  it('rejects bad launch options with one error naming the field', () => {
    const r = cli([...BASE, '--name', 'bad', '--gpus', '0,x']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('gpus must be a comma-separated list of GPU indices');
    const both = cli([...BASE, '--name', 'bad', '--gpus', '0', '--nproc', '2']);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('give --gpus or --nproc, not both');
    const odd = cli([...BASE, '--name', 'odd', '--nproc', '4']);
    expect(odd.code).not.toBe(0);
    expect(odd.stderr).toContain('batchSize (6) must be a multiple of the number of ranks (4)');
    expect(odd.stderr.match(/batchSize \(6\) must be/g)?.length).toBe(1);
  }, 60_000);

  describe('the launch scripts run as written (dry run)', () => {
    const vasomim = `${process.execPath} --import ${import.meta.resolve('tsx')} ${join(ROOT, 'ts/src/cli/main.ts')}`;
    const script = (name: string, env: Record<string, string>) =>
      spawnSync('bash', [join(ROOT, 'scripts/distributed', name), '/data/XA-170K', 'unext.safetensors'], {
        cwd: ROOT,
        encoding: 'utf8',
        env: { ...process.env, DRY_RUN: '1', VASOMIM: vasomim, ...env },
      });

    it('pretrain_8gpu.sh: 8 ranks of the paper run, effective batch 2048', () => {
      const r = script('pretrain_8gpu.sh', {});
      expect(r.status, r.stderr).toBe(0);
      const lines = r.stdout.trim().split('\n');
      expect(lines[0]).toBe(
        'effective batch 2048 = 8 rank(s) x 256 images per rank per step (4 accumulated micro-batch(es) of <= 64)',
      );
      const ranks = lines.slice(1);
      expect(ranks.length).toBe(8);
      ranks.forEach((l, i) => {
        expect(l).toMatch(
          new RegExp(`^RANK=${i} WORLD_SIZE=8 LOCAL_RANK=${i} LOCAL_WORLD_SIZE=8 MASTER_ADDR=127.0.0.1 `),
        );
        expect(l).toContain('CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 ');
        expect(l).toContain(' pretrain --preset vasomim-vit-b --data /data/XA-170K --segmentor unext.safetensors');
        expect(l).toMatch(/ --device cuda$/);
        expect(l).not.toContain('--dry-run');
      });
      expect(new Set(ranks.map((l) => /MASTER_PORT=(\d+)/.exec(l)?.[1])).size).toBe(1);
    }, 30_000);

    it('pretrain.sbatch: every rank resolves its place from the Slurm variables', () => {
      const r = script('pretrain.sbatch', { NODES: '2', GPUS_PER_NODE: '2', DEVICE: 'cpu', NODELIST: 'gn[07-08]' });
      expect(r.status, r.stderr).toBe(0);
      const lines = r.stdout.trim().split('\n');
      expect(lines.length).toBe(8); // the command and its --dry-run line, per rank
      for (let rank = 0; rank < 4; rank++) {
        expect(lines[2 * rank]).toMatch(
          new RegExp(
            `^SLURM_PROCID=${rank} SLURM_NTASKS=4 SLURM_LOCALID=${rank % 2} SLURM_JOB_NODELIST=gn\\[07-08\\] `,
          ),
        );
        expect(lines[2 * rank + 1]).toBe(
          `rank ${rank} of 4 (slurm, local rank ${rank % 2}), rank 0 at gn07:29500: device cpu, backend tcp; ` +
            'effective batch 2048 = 4 rank(s) x 512 images per rank per step (8 accumulated micro-batch(es) of <= 64)',
        );
      }
    }, 60_000);
  });
});
