// The run directory (one per run), as ARCHITECTURE.md lays it out:
//   runs/<name>/config.json      resolved config + versions, device, seed
//   runs/<name>/metrics.jsonl    one JSON object per line (step, epoch, lr, losses, ...)
//   runs/<name>/checkpoints/     weights + optimizer + loop state (written atomically)
//   runs/<name>/samples/         PNG pictures
// Appends to metrics.jsonl are whole lines; on resume, lines past the checkpoint's step are
// dropped so the file reads like an uninterrupted run.
//
//   RunDir     the folder: create / open, config.json, metrics.jsonl, checkpoints
//   planRun    create-or-resume shared by pretrain, train-segmentor and finetune: the layered
//              config (preset -> config file -> flags) of a new run, or the stored one of a
//              resumed run, and the run folder
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';

import { mergeConfig } from '../config/pretrain.js';
import { writeFileAtomic } from '../util/png.js';

/** The checkpoint a run resumes from (rewritten at every save). */
export const LAST_CHECKPOINT = 'last.safetensors';

export class RunDir {
  readonly checkpoints: string;
  readonly samples: string;
  readonly metricsPath: string;
  readonly configPath: string;
  /** Called with every record appended to metrics.jsonl (TensorBoard mirrors them). */
  onRecord?: (record: Record<string, unknown>) => void;

  constructor(readonly path: string) {
    this.checkpoints = join(path, 'checkpoints');
    this.samples = join(path, 'samples');
    this.metricsPath = join(path, 'metrics.jsonl');
    this.configPath = join(path, 'config.json');
  }

  /** A new run folder `<root>/<name>`; `name` defaults to a UTC timestamp. Refuses an existing non-empty folder. */
  static create(root: string, name?: string): RunDir {
    const n = name ?? new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');
    const dir = new RunDir(join(root, n));
    if (existsSync(dir.path) && readdirSync(dir.path).length > 0)
      throw new Error(
        `run folder ${dir.path} already exists and is not empty (use --resume ${dir.path} to continue it, or ` +
          `another --name)`,
      );
    mkdirSync(dir.checkpoints, { recursive: true });
    mkdirSync(dir.samples, { recursive: true });
    return dir;
  }

  /** An existing run, for resuming. */
  static open(path: string): RunDir {
    const dir = new RunDir(path);
    if (!existsSync(dir.configPath)) throw new Error(`${path} is not a run folder (no config.json)`);
    mkdirSync(dir.checkpoints, { recursive: true });
    mkdirSync(dir.samples, { recursive: true });
    return dir;
  }

  writeConfig(config: unknown): void {
    writeFileAtomic(this.configPath, JSON.stringify(config, null, 2) + '\n');
  }

  readConfig(): unknown {
    try {
      return JSON.parse(readFileSync(this.configPath, 'utf8'));
    } catch (e) {
      throw new Error(`${this.configPath}: ${(e as Error).message}`);
    }
  }

  /** Append one metrics record as a JSON line. Non-finite numbers are written as null. */
  log(record: Record<string, unknown>): void {
    appendFileSync(
      this.metricsPath,
      JSON.stringify(record, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v)) + '\n',
    );
    this.onRecord?.(record);
  }

  /** All records (a torn last line from a killed process is ignored). */
  readMetrics(): Record<string, unknown>[] {
    if (!existsSync(this.metricsPath)) return [];
    const out: Record<string, unknown>[] = [];
    for (const line of readFileSync(this.metricsPath, 'utf8').split('\n')) {
      if (!line.trim()) continue;
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        /* a partial line written when the process was killed */
      }
    }
    return out;
  }

  /** Keep only records with `step <= step` (used when resuming from a checkpoint at `step`). */
  truncateMetrics(step: number): void {
    const kept = this.readMetrics().filter((r) => typeof r.step !== 'number' || r.step <= step);
    writeFileAtomic(this.metricsPath, kept.map((r) => JSON.stringify(r) + '\n').join(''));
  }

  /** `checkpoints/last.safetensors` of a run being resumed; an Error naming it when it is missing. */
  lastCheckpoint(): string {
    const ckpt = join(this.checkpoints, LAST_CHECKPOINT);
    if (!existsSync(ckpt)) throw new Error(`${this.path}: no checkpoint to resume from (${ckpt} is missing)`);
    return ckpt;
  }

  /** Checkpoint files `<prefix>-<epoch>.<ext>` and the newest one (by epoch, then mtime). */
  latestCheckpoint(ext = '.safetensors'): string | undefined {
    if (!existsSync(this.checkpoints)) return undefined;
    const files = readdirSync(this.checkpoints).filter((f) => f.endsWith(ext) && !f.includes('vasomim-tmp'));
    const epochOf = (f: string) => Number(/-(\d+)\./.exec(f)?.[1] ?? -1);
    files.sort(
      (a, b) =>
        epochOf(a) - epochOf(b) ||
        statSync(join(this.checkpoints, a)).mtimeMs - statSync(join(this.checkpoints, b)).mtimeMs,
    );
    const last = files.at(-1);
    return last && join(this.checkpoints, last);
  }
}

export interface RunPlanOptions<C> {
  /** Config layers in order (config file, then flags); a new run resolves them over the defaults. */
  layers: Record<string, unknown>[];
  /** A run folder to resume: its stored config is the run, `layers` only give `invocation` keys. */
  resume?: string;
  /** Layers -> the resolved config (preset, then the layers); throws naming a bad field. */
  resolve: (...layers: Record<string, unknown>[]) => C;
  /** Keys that belong to one invocation, not to the run (loader threads, a step limit). */
  invocation: readonly string[];
  /** Entry of config.json that stores the user's layers (default `config`). */
  key?: string;
}

export interface RunPlan<C> {
  config: C;
  /** The reopened folder when resuming; undefined for a new run (see `create`). */
  resumed?: RunDir;
  /** A new run's folder `<runs>/<name>`; created on the first call, so a run that fails its checks leaves none. */
  create(): RunDir;
  /** config.json: the layers (with preset, runs and the folder name pinned), the resolved config and `extra`. */
  write(run: RunDir, extra?: Record<string, unknown>): void;
}

/**
 * Create-or-resume. A new run: `resolve(...layers)`. A resumed run: the layers stored in its
 * config.json, with only the `invocation` keys taken from `layers` (what does not change the
 * result), so a resumed run repeats the uninterrupted one.
 */
export function planRun<C extends { runs: string; name?: string; preset?: string }>(o: RunPlanOptions<C>): RunPlan<C> {
  const key = o.key ?? 'config';
  const merged = o.layers.reduce((m, l) => mergeConfig(m, l), {} as Record<string, unknown>);
  const invocation = Object.fromEntries(Object.entries(merged).filter(([k]) => o.invocation.includes(k)));
  const user = Object.fromEntries(Object.entries(merged).filter(([k]) => !o.invocation.includes(k)));
  if (o.resume) {
    const resumed = RunDir.open(o.resume);
    const saved = (resumed.readConfig() as Record<string, unknown>)[key];
    if (typeof saved !== 'object' || saved === null)
      throw new Error(`${resumed.configPath}: no "${key}" entry (not a run of this command)`);
    const config = o.resolve(saved as Record<string, unknown>, invocation);
    return {
      config,
      resumed,
      create: () => resumed,
      write: () => {
        throw new Error(`${resumed.configPath}: a resumed run keeps its config`);
      },
    };
  }
  const config = o.resolve(...o.layers);
  let run: RunDir | undefined;
  return {
    config,
    create: () => (run ??= RunDir.create(config.runs, config.name)),
    write: (r, extra = {}) => {
      const pinned = {
        ...(config.preset !== undefined ? { preset: config.preset } : {}),
        runs: config.runs,
        name: basename(r.path),
      };
      r.writeConfig({ [key]: { ...user, ...pinned }, resolved: config, ...extra });
    },
  };
}
