// TensorBoard event files: CRC-32C against its published check value, the TFRecord framing, and
// a micro pre-training run with --tensorboard read back by TensorBoard's own reader
// (scripts/peers/tensorboard_read.py, EventAccumulator): the same scalar series as metrics.jsonl
// and the sample pictures. The reader test skips, saying why, when the `tensorboard` package is absent.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { prepareVesselMaps } from '../src/index.js';
import { recordScalars } from '../src/report/outputs.js';
import { crc32c, EventWriter, tfRecord } from '../src/report/tensorboard.js';
import { cli, ROOT, SAMPLES, tempDir } from './helpers.js';

const PY = process.env.VASOMIM_PYTHON ?? 'python3';
const probe = spawnSync(PY, ['-c', 'import tensorboard; print(tensorboard.__version__)'], { encoding: 'utf8' });
const version = probe.status === 0 ? probe.stdout.trim() : '';
if (!version)
  console.warn(
    `tensorboard: reader test skipped: ${PY} has no tensorboard package ` +
      `(${probe.stderr.trim().split('\n').pop()}); pip install -r scripts/peers/requirements.txt`,
  );

const tmp = tempDir('vasomim-tb-');
afterAll(() => tmp.cleanup());

/** The records of an event file, each checked against its length and data CRCs. */
function readRecords(path: string): Buffer[] {
  const b = readFileSync(path);
  const masked = (c: number) => (((c >>> 15) | (c << 17)) + 0xa282ead8) >>> 0;
  const out: Buffer[] = [];
  for (let o = 0; o < b.length;) {
    const len = Number(b.readBigUInt64LE(o));
    expect(b.readUInt32LE(o + 8)).toBe(masked(crc32c(b.subarray(o, o + 8))));
    const data = b.subarray(o + 12, o + 12 + len);
    expect(b.readUInt32LE(o + 12 + len)).toBe(masked(crc32c(data)));
    out.push(data);
    o += 16 + len;
  }
  return out;
}

describe('event file format', () => {
  it('CRC-32C has the Castagnoli check value; records are framed with masked CRCs', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32))).toBe(0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeros
    const r = tfRecord(Buffer.from('abc'));
    expect(r.length).toBe(8 + 4 + 3 + 4);
    expect(Number(r.readBigUInt64LE(0))).toBe(3);
    const w = new EventWriter(join(tmp.path, 'tb'));
    w.scalars(3, { 'step/loss': 0.5, 'step/none': Number.NaN });
    const recs = readRecords(w.path);
    expect(recs.length).toBe(2);
    expect(recs[0]!.includes(Buffer.from('brain.Event:2'))).toBe(true);
    expect(recs[1]!.includes(Buffer.from('step/loss'))).toBe(true);
    expect(recs[1]!.includes(Buffer.from('step/none'))).toBe(false);
  });

  it('maps metrics records to tags: step/<key> at the step, epoch/<key> at the epoch', () => {
    expect(recordScalars({ step: 4, epoch: 1, iter: 0, loss: 0.25, lossCons: null, best: true })).toEqual({
      step: 4,
      values: { 'step/loss': 0.25, 'step/best': 1 },
    });
    expect(recordScalars({ step: 4, epoch: 1, event: 'epoch', vesselShare: 0.2 })).toEqual({
      step: 1,
      values: { 'epoch/vesselShare': 0.2 },
    });
    expect(recordScalars({ step: 5, epoch: 1, event: 'non-finite', message: 'x' })).toBeNull();
  });
});

const data = join(tmp.path, 'xa');
const runs = join(tmp.path, 'runs');
/** A micro pre-training run (64², micro ViT, 6 images, batch 4: one step an epoch). */
const microRun = (extra: string[]) =>
  cli([
    'pretrain',
    ...['--data', data, '--runs', runs, '--model', 'micro', '--img-size', '64'],
    ...['--batch-size', '4', '--epochs', '3', '--warmup-epochs', '1', '--eta', '1', '--cons-weight', '0'],
    ...['--segmentor', 'none', '--workers', '1', '--sample-every', '2', ...extra],
  ]);

beforeAll(async () => {
  mkdirSync(join(data, 'src'), { recursive: true });
  for (const p of [
    'cadica-samples/p10_v7_00031.png',
    'cadica-samples/p11_v5_00033.png',
    'arcade-samples/STEN_001_0000.png',
    'arcade-samples/STEN_002_0000.png',
    'danilov-stenosis-samples/14_002_5_0016.png',
    'danilov-stenosis-samples/14_002_5_0017.png',
  ])
    copyFileSync(join(SAMPLES, p), join(data, 'src', p.split('/')[1]!));
  await prepareVesselMaps(data);
}, 60_000);

describe('--tensorboard and --report-every', () => {
  it('belong to the invocation: a run resumed with --tensorboard writes events; bad values are named', () => {
    expect(microRun(['--name', 'resumed', '--max-steps', '1']).code).toBe(0);
    const run = join(runs, 'resumed');
    expect(readdirSync(run).some((f) => f.startsWith('events.out'))).toBe(false);
    const r = cli(['pretrain', '--resume', run, '--tensorboard']);
    expect(r.code, r.stderr).toBe(0);
    const events = readdirSync(run).filter((f) => f.startsWith('events.out'));
    expect(events.length).toBe(1);
    // steps 2 and 3 (and the epoch records) were written by the resumed invocation
    expect(readRecords(join(run, events[0]!)).filter((b) => b.includes(Buffer.from('step/loss'))).length).toBe(2);
    const bad = microRun(['--name', 'bad', '--report-every=-1']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('reportEvery must be >= 0 (--report-every -1)');
  });
});

describe.skipIf(!version)(`TensorBoard ${version} reads a --tensorboard run`, () => {
  it('the same scalar series as metrics.jsonl, and the sample pictures as images', () => {
    const r = microRun(['--name', 'tb', '--tensorboard']);
    expect(r.code, r.stderr).toBe(0);
    const run = join(runs, 'tb');
    expect(readdirSync(run).filter((f) => f.startsWith('events.out.tfevents.')).length).toBe(1);
    const peer = spawnSync(PY, [join(ROOT, 'scripts', 'peers', 'tensorboard_read.py'), run], {
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    });
    expect(peer.status, peer.stderr).toBe(0);
    const tb = JSON.parse(peer.stdout) as {
      scalars: Record<string, [number, number][]>;
      images: Record<string, [number, number, number, number][]>;
    };
    // The expected series, built from metrics.jsonl (TensorBoard stores simple_value as float32).
    const want: Record<string, [number, number][]> = {};
    const records = readFileSync(join(run, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const rec of records) {
      const epoch = rec.event === 'epoch';
      for (const [k, v] of Object.entries(rec))
        if (!['step', 'epoch', 'iter', 'event'].includes(k) && typeof v === 'number')
          (want[`${epoch ? 'epoch' : 'step'}/${k}`] ??= []).push([
            (epoch ? rec.epoch : rec.step) as number,
            Math.fround(v),
          ]);
    }
    expect(Object.keys(want)).toEqual(
      expect.arrayContaining(['step/loss', 'step/lossRec', 'step/lr', 'step/gradNorm', 'epoch/vesselShare']),
    );
    expect(Object.keys(tb.scalars).sort()).toEqual(Object.keys(want).sort());
    for (const [tag, series] of Object.entries(want)) expect(tb.scalars[tag], tag).toEqual(series);
    expect(want['step/loss']!.length).toBe(3); // 6 images, batch 4: one full batch an epoch, 3 epochs
    // Grids after epochs 2 and 3 (sample-every 2, and the last), the heat map each time.
    const grids = tb.images['samples/reconstructions']!;
    expect(grids.map((g) => g[0])).toEqual([2, 3]);
    const heat = tb.images['samples/mask-frequency']!;
    expect(heat.length).toBe(2);
    const png = readFileSync(join(run, 'samples', 'mask-frequency.png'));
    expect(heat[1]!.slice(1)).toEqual([png.readUInt32BE(16), png.readUInt32BE(20), png.length]);
  });
});
