// Reading a folder for `vasomim report`: which kind it is and what it holds.
//
//   pretrain     config.json (resolved config has maskRatio), metrics.jsonl, samples/epoch-NNNN.png,
//                samples/mask-frequency.png
//   segmentor    config.json of `train-segmentor`, metrics.jsonl (loss, bce, dice), samples/predictions.png
//   finetune     config.json with an "input" entry, metrics.jsonl (steps; epochs with valDsc, best)
//   evaluation   summary.json + per-image.csv of `vasomim evaluate` (contact-sheet.png)
//
//   readFolder   one folder -> FolderData (an Error naming the folder when it is none of these)
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';

import { RunDir } from '../train/rundir.js';

export type FolderKind = 'pretrain' | 'segmentor' | 'finetune' | 'evaluation';

/** A picture of the folder, as PNG bytes with a caption. */
export interface Picture {
  caption: string;
  png: Buffer;
}

export interface FolderData {
  kind: FolderKind;
  /** The folder's name (labels of series in --compare). */
  name: string;
  path: string;
  /** config.json (runs) or summary.json (evaluation), as stored. */
  config: Record<string, unknown>;
  /** metrics.jsonl records: optimizer steps, and records with an `event` (epoch, non-finite). */
  steps: Record<string, unknown>[];
  epochs: Record<string, unknown>[];
  /** per-image.csv of an evaluation: column -> values (NaN where empty). */
  perImage?: Record<string, number[]>;
  pictures: Picture[];
}

function readJson(path: string): Record<string, unknown> {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

/** Numeric columns of a CSV written by `vasomim evaluate` (quoted ids are skipped over). */
export function readCsvColumns(path: string): Record<string, number[]> {
  const lines = readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim());
  const split = (l: string) => l.match(/("([^"]|"")*"|[^,]*)(,|$)/g)!.map((f) => f.replace(/,$/, ''));
  const header = split(lines[0] ?? '');
  const cols: Record<string, number[]> = Object.fromEntries(header.map((h) => [h, []]));
  for (const line of lines.slice(1)) {
    const f = split(line);
    header.forEach((h, i) => cols[h]!.push(f[i] === undefined || f[i] === '' ? Number.NaN : Number(f[i])));
  }
  return cols;
}

function picturesIn(dir: string, filter: (f: string) => boolean, caption: (f: string) => string): Picture[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.png') && !f.includes('vasomim-tmp') && filter(f))
    .sort()
    .map((f) => ({ caption: caption(f), png: readFileSync(join(dir, f)) }));
}

/** What `path` is and what it holds. */
export function readFolder(path: string): FolderData {
  const name = basename(resolve(path));
  if (!existsSync(path)) throw new Error(`${path} does not exist`);
  if (existsSync(join(path, 'summary.json')) && existsSync(join(path, 'per-image.csv'))) {
    const sheet = join(path, 'contact-sheet.png');
    return {
      kind: 'evaluation',
      name,
      path,
      config: readJson(join(path, 'summary.json')),
      steps: [],
      epochs: [],
      perImage: readCsvColumns(join(path, 'per-image.csv')),
      pictures: existsSync(sheet)
        ? [{ caption: 'contact sheet: worst and best images by DSC', png: readFileSync(sheet) }]
        : [],
    };
  }
  if (!existsSync(join(path, 'config.json')))
    throw new Error(
      `${path} is not a run or evaluation folder (no config.json, and no summary.json + per-image.csv of ` +
        '`vasomim evaluate`)',
    );
  const run = new RunDir(path);
  const config = readJson(run.configPath);
  const records = run.readMetrics();
  const steps = records.filter((r) => r.event === undefined);
  const epochs = records.filter((r) => r.event === 'epoch');
  const resolved = (config.resolved ?? {}) as Record<string, unknown>;
  const kind: FolderKind =
    config.input !== undefined
      ? 'finetune'
      : resolved.maskRatio !== undefined
        ? 'pretrain'
        : steps.some((s) => s.bce !== undefined) ||
            existsSync(join(path, 'segmentor.safetensors')) ||
            'inChans' in resolved
          ? 'segmentor'
          : 'pretrain';
  const pictures =
    kind === 'pretrain'
      ? [
          ...picturesIn(
            run.samples,
            (f) => /^epoch-\d+\.png$/.test(f),
            (f) => `epoch ${Number(/\d+/.exec(f)![0])}: reconstructions`,
          ),
          ...picturesIn(
            run.samples,
            (f) => f === 'mask-frequency.png',
            () => 'masking frequency per patch position (all epochs so far)',
          ),
        ]
      : picturesIn(
          run.samples,
          () => true,
          (f) => f.replace(/\.png$/, '').replace(/-/g, ' '),
        );
  return { kind, name, path, config, steps, epochs, pictures };
}
