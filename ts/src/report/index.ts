// `vasomim report`: one self-contained HTML page for a run folder (pre-training, segmentor,
// fine-tuning) or an evaluation folder, or for several folders of one kind on the same axes.
//
//   buildReport   folders -> HTML text
//   writeReport   folders -> the HTML file (default <first folder>/report.html), written atomically
import { join } from 'node:path';

import { formatStat, METRIC_NAMES, type Stat } from '../eval/metrics.js';
import { writeFileAtomic } from '../util/png.js';
import { chartsFor } from './charts.js';
import { renderPage, type PageContent, type Table } from './html.js';
import { readFolder, type FolderData, type FolderKind } from './read.js';

export { readFolder, type FolderData, type FolderKind } from './read.js';
export { chartsFor, type Chart } from './charts.js';

const KIND_TITLE: Record<FolderKind, string> = {
  pretrain: 'VasoMIM pre-training',
  segmentor: 'segmentor training',
  finetune: 'fine-tuning',
  evaluation: 'evaluation',
};

const fixed = (v: unknown, d = 4) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(d) : '–');
const pct = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? `${(100 * v).toFixed(1)} %` : '–');

function resolvedOf(f: FolderData): Record<string, unknown> {
  return (f.config.resolved ?? {}) as Record<string, unknown>;
}

/** One row per folder: where the run is and how it ended. */
function summaryTable(kind: FolderKind, fs: FolderData[]): Table {
  const last = (f: FolderData) => f.steps.at(-1) ?? {};
  const lastEpoch = (f: FolderData) => f.epochs.at(-1) ?? {};
  const epochsOf = (f: FolderData) => `${f.epochs.length} / ${String(resolvedOf(f).epochs ?? '?')}`;
  switch (kind) {
    case 'pretrain':
      return {
        title: 'Summary',
        header: ['run', 'steps', 'epochs', 'last L', 'last L_rec', 'last L_cons', 'vessel share (last epoch)', 'α'],
        rows: fs.map((f) => [
          f.name,
          String(last(f).step ?? 0),
          epochsOf(f),
          fixed(last(f).loss),
          fixed(last(f).lossRec),
          fixed(last(f).lossCons),
          pct(lastEpoch(f).vesselShare),
          fixed(lastEpoch(f).alpha, 3),
        ]),
      };
    case 'segmentor':
      return {
        title: 'Summary',
        header: ['run', 'steps', 'epochs', 'last epoch loss'],
        rows: fs.map((f) => [f.name, String(last(f).step ?? 0), epochsOf(f), fixed(lastEpoch(f).loss)]),
      };
    case 'finetune':
      return {
        title: 'Summary',
        header: ['run', 'steps', 'epochs', 'best epoch', 'best val DSC', 'last val DSC'],
        rows: fs.map((f) => {
          const scored = f.epochs.filter((e) => typeof e.valDsc === 'number');
          const best = scored.reduce<Record<string, unknown> | undefined>(
            (b, e) => (b === undefined || (e.valDsc as number) > (b.valDsc as number) ? e : b),
            undefined,
          );
          return [
            f.name,
            String(last(f).step ?? 0),
            `${f.epochs.length} / ${String(((f.config.resolved ?? {}) as Record<string, unknown>).epochs ?? '?')}`,
            best ? String(best.epoch) : '–',
            fixed(best?.valDsc),
            fixed(lastEpoch(f).valDsc),
          ];
        }),
      };
    case 'evaluation': {
      const stat = (f: FolderData, k: string) => ((f.config.metrics ?? {}) as Record<string, Stat>)[k];
      return {
        title: 'Metrics (mean ± std over images)',
        header: ['folder', 'images', ...METRIC_NAMES],
        rows: fs.map((f) => [
          f.name,
          String(f.config.images ?? '?'),
          ...METRIC_NAMES.map((k) => (stat(f, k) ? formatStat(stat(f, k)!) : '–')),
        ]),
      };
    }
  }
}

/** Per-class DSC of a multi-class evaluation. */
function classTables(fs: FolderData[]): Table[] {
  return fs
    .filter((f) => Array.isArray(f.config.perClass))
    .map((f) => ({
      title: `Per-class DSC${fs.length > 1 ? ` (${f.name})` : ''}`,
      header: ['class', 'label', 'DSC (mean ± std)', 'images'],
      rows: (f.config.perClass as { label: number; name: string; dsc: Stat }[]).map((c) => [
        c.name,
        String(c.label),
        formatStat(c.dsc),
        String(c.dsc.n),
      ]),
    }));
}

/** The page of `paths` (one folder, or several of one kind to compare). */
export function buildReport(paths: string[]): string {
  if (paths.length === 0) throw new Error('no folder to report on');
  const fs = paths.map(readFolder);
  const kind = fs[0]!.kind;
  const other = fs.find((f) => f.kind !== kind);
  if (other)
    throw new Error(`cannot compare ${fs[0]!.path} (${kind}) with ${other.path} (${other.kind}): one kind at a time`);
  const many = fs.length > 1;
  const content: PageContent = {
    title: `${KIND_TITLE[kind]}: ${fs.map((f) => f.name).join(' vs ')}`,
    subtitle: `vasomim report of ${fs.map((f) => f.path).join(', ')}, written ${new Date().toISOString()}`,
    tables: [summaryTable(kind, fs), ...(kind === 'evaluation' ? classTables(fs) : [])],
    charts: chartsFor(kind, fs),
    pictures: fs.flatMap((f) =>
      f.pictures.map((p) => ({ ...p, caption: many ? `${f.name}: ${p.caption}` : p.caption })),
    ),
    details: fs.map((f) => ({
      title: `${kind === 'evaluation' ? 'summary.json' : 'config.json'}${many ? ` of ${f.name}` : ''}`,
      json: f.config,
    })),
  };
  return renderPage(content);
}

/** Write the report of `paths` to `out` (default `<first folder>/report.html`); returns its path. */
export function writeReport(paths: string[], out?: string): string {
  const html = buildReport(paths);
  const path = out ?? join(paths[0]!, 'report.html');
  writeFileAtomic(path, html);
  return path;
}
