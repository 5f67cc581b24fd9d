// Sample grids of a pre-training run, one PNG per checkpointed epoch: a row per image with
//   input | masked input | reconstruction | reconstruction + visible | vessel map B | guidance G
// (G = η·B + (1 − η)·P). "reconstruction" is what L_cons sees: every patch predicted, none pasted;
// "+ visible" pastes the visible patches back, as MAE's figures show it.
// all at the model's input size, under a row of column titles. The batch is the same every time
// (epoch 0, batch 0), the masks those of the epoch shown, so grids of successive epochs compare
// directly. The grid's mean input image is returned: the background of the masking-frequency map.
import type { PretrainConfig } from '../config/pretrain.js';
import type { Batch } from '../data/loader.js';
import type { Model } from '../model/index.js';
import { Raster, textHeight, textWidth } from '../util/draw.js';
import { writePng } from '../util/png.js';
import { batchMasks, runMaskOptions } from './masking.js';

const GAP = 4;
const TITLES = ['input', 'masked', 'reconstruction', 'recon + visible', 'vessel map B', 'guidance G'];

/** The mean angiogram of a grid's images: `size`² grey values 0..255. */
export interface MeanImage {
  data: Float64Array;
  size: number;
}

export async function sampleGrid(
  model: Model,
  batch: Batch,
  cfg: PretrainConfig,
  epoch: number,
  path: string,
): Promise<MeanImage> {
  const S = cfg.model.imgSize;
  const C = cfg.model.inChans;
  const p = cfg.model.patchSize;
  const g = S / p;
  const L = g * g;
  const n = Math.min(cfg.sampleImages, batch.n);
  const maps = batch.maps();
  const eta = cfg.masking === 'vessel-guided' ? cfg.eta : maps ? 1 : 0;
  const guide = maps || model.hasSegmentor ? await model.guidance(batch, eta, true) : undefined;
  const masks = batchMasks(runMaskOptions(cfg, epoch, guide ? cfg.masking : 'random'), L, batch.samples, guide?.mass);
  const images = batch.images();
  const rec = await model.reconstruct(
    images,
    new Uint32Array(masks.idsKeep.buffer),
    new Uint32Array(masks.idsRestore.buffer),
    Float32Array.from(masks.mask),
  );
  const mean = cfg.augment.mean[0]!;
  const std = cfg.augment.std[0]!;
  const grey = (v: number) => Math.max(0, Math.min(255, Math.round((v * std + mean) * 255)));

  const cols = TITLES.length;
  // Titles at twice the font size when they fit a column, else at 1x, cut to the column.
  const scale = TITLES.every((t) => textWidth(t, 2) <= S) ? 2 : 1;
  const head = textHeight(scale) + 12;
  const W = cols * S + (cols - 1) * GAP;
  const H = head + n * S + (n - 1) * GAP;
  const out = new Raster(W, H);
  TITLES.forEach((t, col) => {
    const text = t.slice(0, Math.floor((S + scale) / (6 * scale)));
    out.text(text, col * (S + GAP) + Math.floor((S - textWidth(text, scale)) / 2), 6, scale);
  });
  const put = (row: number, col: number, value: (y: number, x: number) => number) => {
    const oy = head + row * (S + GAP);
    const ox = col * (S + GAP);
    for (let y = 0; y < S; y++)
      for (let x = 0; x < S; x++) {
        const v = value(y, x);
        out.put(ox + x, oy + y, [v, v, v]);
      }
  };
  const avg = new Float64Array(S * S);
  for (let i = 0; i < n; i++) {
    const img = (y: number, x: number) => images[(i * C * S + y) * S + x]!;
    for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) avg[y * S + x]! += grey(img(y, x)) / n;
    const masked = (y: number, x: number) => masks.mask[i * L + Math.floor(y / p) * g + Math.floor(x / p)] === 1;
    put(i, 0, (y, x) => grey(img(y, x)));
    put(i, 1, (y, x) => (masked(y, x) ? 96 : grey(img(y, x))));
    const recon = (y: number, x: number) => grey(rec.images[(i * C * S + y) * S + x]!);
    put(i, 2, recon);
    put(i, 3, (y, x) => (masked(y, x) ? recon(y, x) : grey(img(y, x))));
    put(i, 4, (y, x) => (maps ? Math.round(255 * maps[(i * S + y) * S + x]!) : 0));
    put(i, 5, (y, x) => {
      const b = maps ? maps[(i * S + y) * S + x]! : 0;
      const pr = guide?.prob ? guide.prob[(i * S + y) * S + x]! : 0;
      return Math.round(255 * (eta * b + (1 - eta) * pr));
    });
  }
  writePng(path, out.toPng());
  return { data: avg, size: S };
}
