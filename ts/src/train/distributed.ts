// Data-parallel pre-training, the TypeScript side (docs/DISTRIBUTED.md):
//
//   groupFromEnv    this process's place in a launched group: torchrun's / Slurm's variables
//                   (the Rust `rendezvous`), or those `launchLocal` sets for its children
//   rankDevice      the device of a rank (`cuda` -> `cuda:<local rank>`)
//   joinGroup       connect the model to its peers (rank 0's parameters on every rank) and
//                   agree on the run folder rank 0 owns
//   rankZeroFirst   run a step on rank 0, then (once it is done) on the others (demo maps)
//   reduceStep      one step's logging numbers and the Ctrl-C vote summed over the ranks
//   launchLocal     `vasomim pretrain --gpus 0,1 | --nproc N`: one child process per rank; the
//                   first rank to fail stops the others, with one error naming it
//   watchLauncher   in those children: a launcher gone without stopping them (SIGKILL) stops
//                   them as Ctrl-C does
//   batchPlan, rankPlan   what --dry-run prints: the batch arithmetic, a rank's place
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { constants } from 'node:os';

import { native, type Model } from '../native.js';
import { MaskFrequency } from './maskfreq.js';

/** Where this process stands in a group (the Rust rendezvous, camelCase). */
export type Group = NonNullable<ReturnType<typeof native.rendezvous>>;

/** The group from the launcher's variables; undefined in a plain process; an Error naming a bad variable. */
export function groupFromEnv(): Group | undefined {
  try {
    return native.rendezvous() ?? undefined;
  } catch (e) {
    throw new Error(`distributed launch: ${(e as Error).message}`);
  }
}

/** A rank's device: `cuda` means the rank's local GPU (`cuda:<localRank>`); anything else stays. */
export function rankDevice(device: string, g: Group | undefined): string {
  return g && device === 'cuda' ? `cuda:${g.localRank}` : device;
}

/** The collective of a device: NCCL on GPUs, the TCP test double on the CPU. */
export const backendOf = (device: string) => (device.startsWith('cuda') ? 'nccl' : 'tcp');

/**
 * Join `model` to its group (rank 0's parameters on every rank; every rank must be at the same
 * step) and return rank 0's run folder (`runPath` on rank 0; the others pass undefined).
 */
export async function joinGroup(
  model: Model,
  g: Group,
  o: { device: string; timeoutS?: number; runPath?: string },
): Promise<string> {
  await model.joinGroup({
    backend: backendOf(o.device),
    rank: g.rank,
    worldSize: g.worldSize,
    addr: g.masterAddr,
    port: g.commPort,
    timeoutS: o.timeoutS,
  });
  // The path travels as character codes summed over the ranks (zeros except on rank 0).
  const own = g.rank === 0 ? (o.runPath ?? '') : '';
  const [len] = await model.allReduce(Float64Array.of(own.length));
  const codes = await model.allReduce(Float64Array.from({ length: len! }, (_, i) => own.charCodeAt(i) || 0));
  return String.fromCharCode(...codes);
}

/** `f` on rank 0, then, once rank 0 is done, on the others (they reuse what it wrote). */
export async function rankZeroFirst<T>(model: Model, g: Group | undefined, f: () => Promise<T>): Promise<T> {
  if (!g) return f();
  const out = g.rank === 0 ? await f() : undefined;
  await model.allReduce(Float64Array.of(0)); // a barrier
  return g.rank === 0 ? out! : f();
}

/** One step's logging numbers of this rank, before reduction. */
export interface StepCounts {
  /** Ctrl-C was pressed here: every rank stops after this step when any rank asks. */
  stop: boolean;
  images: number;
  /** Masked patches chosen by the guidance, summed over the images. */
  guided: number;
  /** Masked patches and those containing vessel; undefined without vessel maps. */
  vessel?: { masked: number; vessel: number };
  /** This step's masks alone. */
  freq: MaskFrequency;
}

/** `c` summed over the ranks of `model`'s group (`c` itself on one rank). */
export async function reduceStep(model: Model, world: number, c: StepCounts): Promise<StepCounts> {
  if (world === 1) return c;
  const f = c.freq.toJSON();
  const v = Float64Array.of(
    c.stop ? 1 : 0,
    c.images,
    c.guided,
    c.vessel ? 1 : 0,
    c.vessel?.masked ?? 0,
    c.vessel?.vessel ?? 0,
    f.images,
    f.masked,
    f.maskedWithVessel,
    ...f.counts,
  );
  const s = await model.allReduce(v);
  const freq = MaskFrequency.fromJSON(c.freq.gridH, c.freq.gridW, {
    images: s[6]!,
    masked: s[7]!,
    maskedWithVessel: s[8]!,
    counts: [...s.subarray(9)],
  });
  // Every rank has maps or none does (one dataset): the flag sums to world or 0.
  const vessel = s[3]! > 0 ? { masked: s[4]!, vessel: s[5]! } : undefined;
  return { stop: s[0]! > 0, images: s[1]!, guided: s[2]!, vessel, freq };
}

/** The batch arithmetic of a run on `world` ranks: effective batch = ranks × micro-batch × accumulation. */
export function batchPlan(c: { batchSize: number; maxMicroBatch: number }, world: number): string {
  const perRank = c.batchSize / world;
  const accumulation = Math.ceil(perRank / c.maxMicroBatch);
  return (
    `effective batch ${c.batchSize} = ${world} rank(s) x ${perRank} images per rank per step ` +
    `(${accumulation} accumulated micro-batch(es) of <= ${Math.ceil(perRank / accumulation)})`
  );
}

/** What `--dry-run` prints inside a group: where this rank stands and what it would do. */
export function rankPlan(
  c: { batchSize: number; maxMicroBatch: number; device: string },
  g: Group | undefined,
): string {
  const world = g?.worldSize ?? 1;
  const where = g
    ? `rank ${g.rank} of ${world} (${g.launcher}, local rank ${g.localRank}), rank 0 at ${g.masterAddr}:${g.commPort}`
    : 'a single process';
  return `${where}: device ${rankDevice(c.device, g)}, backend ${backendOf(c.device)}; ${batchPlan(c, world)}`;
}

/** Two consecutive free TCP ports on the loopback (MASTER_PORT and the collective's MASTER_PORT + 1). */
async function freePorts(): Promise<number> {
  const listen = (port: number) =>
    new Promise<number | undefined>((done) => {
      const s = createServer();
      s.once('error', () => done(undefined));
      s.listen(port, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => done(p));
      });
    });
  for (let i = 0; i < 20; i++) {
    const p = await listen(0);
    if (p && p < 65535 && (await listen(p + 1))) return p;
  }
  throw new Error('distributed launch: found no two free consecutive ports on 127.0.0.1');
}

export interface LaunchOptions {
  /** Number of ranks. */
  world: number;
  /** GPU indices, one per rank (`--gpus 0,1,2,3`); none: CPU ranks (the TCP test collective). */
  gpus?: number[];
  /** Arguments of the children after the CLI script (the command and its flags, minus the launch flags). */
  args: string[];
  /** Where a line about the launch goes (default stderr). */
  onLog?: (line: string) => void;
  /** Print each rank's command (environment and argv, shell-quoted) on stdout instead of running it. */
  dryRun?: boolean;
}

/** A word as a POSIX shell reads it back. */
const shellWord = (w: string) => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`);

/**
 * Run one child process per rank on this machine with torchrun's variables (RANK, WORLD_SIZE,
 * LOCAL_RANK, MASTER_ADDR, MASTER_PORT; CUDA_VISIBLE_DEVICES = the GPUs, so rank r uses
 * `cuda:r`). Rank 0 prints as usual; the others' stderr is prefixed with their rank. When a
 * rank fails (non-zero exit, signal), the others are stopped (SIGTERM) at once and one line
 * names the rank and how it ended; the exit code is that rank's (128 + signal for a signal).
 * The children run in their own process group: Ctrl-C (SIGINT) and SIGTERM reach the launcher,
 * which passes each one on once to every rank (the ranks agree on the step to stop at, write
 * the checkpoint and exit 130; a second Ctrl-C quits at once, as in one process).
 */
export async function launchLocal(o: LaunchOptions): Promise<number> {
  const log = o.onLog ?? ((l: string) => process.stderr.write(l + '\n'));
  const port = await freePorts();
  const script = process.argv[1]!;
  const children: ChildProcess[] = [];
  const stopped = new Set<number>(); // ranks the launcher itself stopped
  const failures: { rank: number; how: string; code: number; signal: boolean }[] = [];
  const forward = (signal: NodeJS.Signals) => () =>
    children.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill(signal));
  const onInt = forward('SIGINT');
  const onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    const exits = Array.from({ length: o.world }, (_, rank) => {
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        RANK: String(rank),
        WORLD_SIZE: String(o.world),
        LOCAL_RANK: String(rank),
        LOCAL_WORLD_SIZE: String(o.world),
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: String(port),
        VASOMIM_LAUNCHER_PID: String(process.pid),
      };
      if (o.gpus) env.CUDA_VISIBLE_DEVICES = o.gpus.join(',');
      const argv = [...process.execArgv, script, ...o.args];
      if (o.dryRun) {
        const vars = ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'];
        if (o.gpus) vars.push('CUDA_VISIBLE_DEVICES');
        const words = [...vars.map((k) => `${k}=${env[k]}`), process.execPath, ...argv];
        process.stdout.write(words.map(shellWord).join(' ') + '\n');
        return Promise.resolve(0);
      }
      const child = spawn(process.execPath, argv, {
        env,
        stdio: rank === 0 ? 'inherit' : ['ignore', 'ignore', 'pipe'],
        detached: true,
      });
      children.push(child);
      child.stderr?.on('data', (d: Buffer) => {
        if (failures.length) return; // after a failure the others only echo it
        for (const line of d.toString().split('\n')) if (line.trim()) process.stderr.write(`[rank ${rank}] ${line}\n`);
      });
      log(`rank ${rank}: pid ${child.pid}${o.gpus ? ` on GPU ${o.gpus[rank]}` : ''}`);
      return new Promise<number>((done) => {
        child.on('exit', (code, signal) => {
          const c = code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0);
          if (c !== 0 && c !== 130 && (!stopped.has(rank) || (signal && signal !== 'SIGTERM'))) {
            const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
            failures.push({ rank, how, code: c, signal: signal !== null });
            children.forEach((other, r) => {
              if (other.exitCode === null && other.signalCode === null && !stopped.has(r)) {
                stopped.add(r);
                other.kill('SIGTERM');
              }
            });
          }
          done(c);
        });
      });
    });
    const codes = await Promise.all(exits);
    // The cause: a rank killed from outside, else the first to fail (its peers fail after it).
    const cause = failures.find((f) => f.signal) ?? failures[0];
    if (cause) {
      log(
        `distributed run failed: rank ${cause.rank} (pid ${children[cause.rank]!.pid}) ${cause.how}; ` +
          'the other ranks were stopped. The last checkpoint is intact: continue with --resume <run folder>.',
      );
      return cause.code;
    }
    return Math.max(...codes);
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

/**
 * In a rank `launchLocal` started (`VASOMIM_LAUNCHER_PID` set): once the launcher is gone (it was
 * killed with SIGKILL and could not stop its ranks, which run in their own process group), ask
 * this rank to stop as Ctrl-C does: every rank votes to stop, so they stop at the same step with
 * a checkpoint. Returns the function that stops watching.
 */
export function watchLauncher(env: NodeJS.ProcessEnv = process.env, everyMs = 500): () => void {
  const launcher = Number(env.VASOMIM_LAUNCHER_PID);
  if (!Number.isInteger(launcher) || launcher <= 0) return () => {};
  // The stderr of ranks > 0 is a pipe to the launcher: once it is gone a write fails with EPIPE,
  // which would end the rank before it votes to stop. Such a write is lost instead.
  process.stderr.on('error', () => {});
  const timer = setInterval(() => {
    if (process.ppid === launcher) return;
    clearInterval(timer);
    process.stderr.write(`the launcher (pid ${launcher}) is gone: stopping this rank at the next step\n`);
    process.kill(process.pid, 'SIGINT');
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
