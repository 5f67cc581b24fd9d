// What a training loop writes for people watching it, besides metrics.jsonl: TensorBoard events
// (every metrics record as scalars, new sample pictures as images) and report.html. The loops
// make three calls: `new RunOutputs(run, cfg, log)` once the run folder exists, `epochEnd(...)`
// after an epoch's pictures are written, `finish()` at the end. Both outputs only observe the run:
// a failure to write them is logged and the run goes on.
//
//   RunOutputs   the hooks
//   recordScalars  a metrics record -> TensorBoard scalars (tag -> value)
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import type { RunDir } from '../train/rundir.js';
import { writeReport } from './index.js';
import { EventWriter, pngInfo } from './tensorboard.js';

/** Record keys that are positions, not measurements. */
const POSITION = new Set(['step', 'epoch', 'iter', 'event']);

/**
 * TensorBoard scalars of one metrics.jsonl record: a step record's numbers as `step/<key>` at
 * its step, an epoch record's as `epoch/<key>` at its epoch (so per-epoch charts count epochs).
 */
export function recordScalars(r: Record<string, unknown>): { step: number; values: Record<string, number> } | null {
  if (r.event !== undefined && r.event !== 'epoch') return null;
  const epoch = r.event === 'epoch';
  const at = epoch ? r.epoch : r.step;
  if (typeof at !== 'number') return null;
  const values: Record<string, number> = {};
  for (const [k, v] of Object.entries(r)) {
    if (POSITION.has(k)) continue;
    // Booleans (fine-tuning's `best`) as 0 / 1; null (a term that is off) is left out.
    if (typeof v === 'number' || typeof v === 'boolean') values[`${epoch ? 'epoch' : 'step'}/${k}`] = Number(v);
  }
  return { step: at, values };
}

export class RunOutputs {
  private readonly tb?: EventWriter;
  /** Pictures already sent to TensorBoard: file -> mtime. */
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly run: RunDir,
    private readonly cfg: { tensorboard: boolean; reportEvery: number; epochs: number },
    private readonly log: (line: string) => void = () => {},
  ) {
    if (!cfg.tensorboard) return;
    this.tb = new EventWriter(run.path);
    run.onRecord = (r) => {
      const s = recordScalars(r);
      if (s) this.tb!.scalars(s.step, s.values);
    };
    log(`TensorBoard events: ${this.tb.path} (tensorboard --logdir ${run.path})`);
  }

  /** After epoch `done` (1-based count) at optimizer step `step`: new pictures, the report when due. */
  epochEnd(done: number, step: number): void {
    this.pictures(step);
    // The last epoch's report is `finish`'s.
    if (this.cfg.reportEvery > 0 && done % this.cfg.reportEvery === 0 && done < this.cfg.epochs) this.report();
  }

  /** At the end of a completed run: the last pictures and the report. */
  finish(step: number): void {
    this.pictures(step);
    this.report();
  }

  /** Sample pictures written or rewritten since the last call, as TensorBoard images `samples/<name>`. */
  private pictures(step: number): void {
    if (!this.tb || !existsSync(this.run.samples)) return;
    for (const f of readdirSync(this.run.samples).sort()) {
      if (!f.endsWith('.png') || f.includes('vasomim-tmp')) continue;
      const path = join(this.run.samples, f);
      const m = statSync(path).mtimeMs;
      if (this.seen.get(f) === m) continue;
      this.seen.set(f, m);
      try {
        // Sample grids of successive epochs share one tag, so TensorBoard's slider steps through them.
        const tag = /^epoch-\d+\.png$/.test(f) ? 'samples/reconstructions' : `samples/${f.replace(/\.png$/, '')}`;
        this.tb.image(step, tag, pngInfo(readFileSync(path)));
      } catch (e) {
        this.log(`TensorBoard image ${path}: ${(e as Error).message}`);
      }
    }
  }

  private report(): void {
    try {
      this.log(`report ${writeReport([this.run.path])}`);
    } catch (e) {
      this.log(`report.html not written: ${(e as Error).message}`);
    }
  }
}
