// The frame of the long training commands (pretrain, train-segmentor, finetune): Ctrl-C asks the
// job to stop at its next checkpoint, one progress bar with the job's log lines printed around it,
// and the report of a stopped run (exit code 130 when interrupted); presetSummary for their help.
import { onInterrupt } from './interrupt.js';
import { Progress } from './progress.js';

/** The options every training job takes from its command. */
export interface JobHooks {
  /** True once Ctrl-C was pressed. */
  shouldStop: () => boolean;
  /** A log line on stderr, above the progress bar. */
  onLog: (line: string) => void;
}

/**
 * Runs `job` with Ctrl-C handling (`interruptMessage` says what the first press does) and a progress
 * bar labelled `name`, which `bar` makes on its first call; the bar is closed and the handler
 * removed however the job ends.
 */
export async function runLongJob<R>(
  name: string,
  interruptMessage: string,
  job: (hooks: JobHooks, bar: (total: number, unit: string) => Progress) => Promise<R>,
): Promise<R> {
  const interrupt = onInterrupt(interruptMessage);
  let bar: Progress | undefined;
  try {
    return await job(
      {
        shouldStop: interrupt.stopRequested,
        onLog: (line) => (bar ? bar.log(line) : process.stderr.write(line + '\n')),
      },
      (total, unit) => (bar ??= new Progress(name, total, unit)),
    );
  } finally {
    bar?.end();
    interrupt.dispose();
  }
}

/** Reports on stderr a run that stopped (`where`: "at step 12") before its end, and how to resume it. */
export function reportStop(name: string, where: string, checkpoint: string | undefined, run: string): void {
  process.stderr.write(`stopped ${where}; checkpoint ${checkpoint}\nresume with: vasomim ${name} --resume ${run}\n`);
}

/** A run preset in a command's help: `<epochs> epochs, batch <batchSize>`. */
export const presetSummary = (p: { epochs?: number; batchSize?: number }) => `${p.epochs} epochs, batch ${p.batchSize}`;
