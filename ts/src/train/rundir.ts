// The run directory (one per run), as ARCHITECTURE.md lays it out:
//   runs/<name>/config.json      resolved config + versions, device, seed
//   runs/<name>/metrics.jsonl    one JSON object per line (step, epoch, lr, losses, ...)
//   runs/<name>/checkpoints/     weights + optimizer + loop state (written atomically)
//   runs/<name>/samples/         PNG pictures
// Appends to metrics.jsonl are whole lines; on resume, lines past the checkpoint's step are
// dropped so the file reads like an uninterrupted run.
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { writeFileAtomic } from '../util/png.js';

export class RunDir {
  readonly checkpoints: string;
  readonly samples: string;
  readonly metricsPath: string;
  readonly configPath: string;

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
      throw new Error(`run folder ${dir.path} already exists and is not empty (use --resume ${dir.path} to continue it, or another --name)`);
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
    appendFileSync(this.metricsPath, JSON.stringify(record, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v)) + '\n');
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

  /** Checkpoint files `<prefix>-<epoch>.<ext>` and the newest one (by epoch, then mtime). */
  latestCheckpoint(ext = '.safetensors'): string | undefined {
    if (!existsSync(this.checkpoints)) return undefined;
    const files = readdirSync(this.checkpoints).filter((f) => f.endsWith(ext) && !f.includes('vasomim-tmp'));
    const epochOf = (f: string) => Number(/-(\d+)\./.exec(f)?.[1] ?? -1);
    files.sort((a, b) => epochOf(a) - epochOf(b) || statSync(join(this.checkpoints, a)).mtimeMs - statSync(join(this.checkpoints, b)).mtimeMs);
    const last = files.at(-1);
    return last && join(this.checkpoints, last);
  }
}
