// Frame extraction: DICOM cine runs (or any images) to 8-bit PNG frames plus a manifest.csv
// that `openLoader`, `data check` and `vessels` accept.
import { mkdirSync, writeFileSync } from 'node:fs';
import { basename, extname, join, relative } from 'node:path';

import { FramesSchema, type FramesInput } from '../config/data.js';
import { parseOptions } from '../config/vessels.js';
import { native } from '../native.js';

export interface FrameRow {
  image: string;
  source: string;
  frame: number;
  width: number;
  height: number;
}

export interface FramesSummary {
  out: string;
  manifest: string;
  frames: FrameRow[];
  failed: { input: string; error: string }[];
}

const csv = (s: string) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);

/** Every frame of every input as `<out>/<stem>_<frame>.png` (`<stem>.png` for single frames). */
export async function extractFrames(
  inputs: string[],
  options: FramesInput,
  onFile?: (input: string, frames: number, error?: string) => void,
): Promise<FramesSummary> {
  const o = parseOptions(FramesSchema, options, 'frames options');
  mkdirSync(o.out, { recursive: true });
  const stems = new Map<string, number>();
  const summary: FramesSummary = { out: o.out, manifest: join(o.out, 'manifest.csv'), frames: [], failed: [] };
  for (const input of inputs) {
    let stem = basename(input, extname(input));
    const n = (stems.get(stem) ?? 0) + 1;
    stems.set(stem, n);
    if (n > 1) stem = `${stem}_${n}`;
    try {
      const files = await native.extractFramesToPng(input, o.out, stem, o.overwrite);
      for (const f of files)
        summary.frames.push({
          image: relative(o.out, f.path),
          source: input,
          frame: f.frame,
          width: f.width,
          height: f.height,
        });
      onFile?.(input, files.length);
    } catch (e) {
      summary.failed.push({ input, error: (e as Error).message });
      onFile?.(input, 0, (e as Error).message);
    }
  }
  const lines = [
    'image,source,frame,width,height',
    ...summary.frames.map((f) => [csv(f.image), csv(f.source), f.frame, f.width, f.height].join(',')),
  ];
  writeFileSync(summary.manifest, lines.join('\n') + '\n');
  return summary;
}
