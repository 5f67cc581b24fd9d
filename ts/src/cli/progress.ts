// Progress for long work on stderr: a redrawn bar on a terminal, a line every few seconds
// otherwise (logs stay readable). Shows done/total, rate, ETA and extra counters.
export class Progress {
  private readonly start = performance.now();
  private lastLine = 0;
  private readonly tty = Boolean(process.stderr.isTTY);

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly unit = 'img',
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  /** Rate counts only `worked` items (skipped files would inflate it). */
  update(done: number, worked: number, extra = ''): void {
    const now = performance.now();
    const secs = (now - this.start) / 1000;
    const rate = secs > 0 ? worked / secs : 0;
    const left = this.total - done;
    const eta = rate > 0 ? formatDuration(left / rate) : '--:--';
    const frac = this.total > 0 ? done / this.total : 1;
    const text =
      `${this.label} ${bar(frac, 24)} ${done}/${this.total} ${rate.toFixed(1)} ${this.unit}/s ETA ${eta}` +
      (extra ? ' ' + extra : '');
    if (this.tty) {
      this.stream.write(`\r\x1b[2K${text}`);
    } else if (now - this.lastLine > 5000 || done === this.total) {
      this.stream.write(text + '\n');
      this.lastLine = now;
    }
  }

  /** Print a message without garbling the bar. */
  log(line: string): void {
    if (this.tty) this.stream.write('\r\x1b[2K');
    this.stream.write(line + '\n');
  }

  end(): void {
    if (this.tty) this.stream.write('\n');
  }
}

function bar(frac: number, width: number): string {
  const full = Math.round(Math.min(1, Math.max(0, frac)) * width);
  return '[' + '#'.repeat(full) + '.'.repeat(width - full) + ']';
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}
