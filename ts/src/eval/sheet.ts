// The contact sheet of `evaluate`: one row per case, three panels — image | ground truth |
// prediction — each fitted into a square panel (nearest neighbour, aspect kept, letterboxed).
// Binary predictions are coloured against the truth: true positive white, false positive red,
// false negative blue; label maps use a fixed palette.
import type { PngImage } from '../util/png.js';

export interface SheetRow {
  image: Float32Array;
  truth: Float32Array;
  pred: Float32Array;
}

/** Fit a width x height map into a side x side panel (nearest neighbour); NaN outside the picture. */
export function fitPanel(src: ArrayLike<number>, width: number, height: number, side: number): Float32Array {
  const out = new Float32Array(side * side).fill(NaN);
  const scale = Math.min(side / width, side / height);
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  const ox = Math.floor((side - w) / 2);
  const oy = Math.floor((side - h) / 2);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(height - 1, Math.floor(((y + 0.5) * height) / h));
    for (let x = 0; x < w; x++) {
      const sx = Math.min(width - 1, Math.floor(((x + 0.5) * width) / w));
      out[(oy + y) * side + ox + x] = src[sy * width + sx]!;
    }
  }
  return out;
}

const GAP = 4;
const BACKGROUND = [16, 16, 16] as const;
const LETTERBOX = [40, 40, 40] as const;
const TP = [255, 255, 255] as const;
const FP = [255, 64, 64] as const;
const FN = [64, 128, 255] as const;

/** Label colours: 0 black, then well-separated hues. */
export function palette(label: number): readonly [number, number, number] {
  if (label === 0) return [0, 0, 0];
  const h = (label * 0.618033988749895) % 1;
  const s = 0.75;
  const v = 1;
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s);
  const q = v * (1 - f * s);
  const t = v * (1 - (1 - f) * s);
  const rgb = [
    [v, t, p],
    [q, v, p],
    [p, v, t],
    [p, q, v],
    [t, p, v],
    [v, p, q],
  ][i % 6]!;
  return [Math.round(rgb[0]! * 255), Math.round(rgb[1]! * 255), Math.round(rgb[2]! * 255)];
}

export function contactSheet(rows: SheetRow[], side: number, binary: boolean): PngImage {
  const width = 3 * side + 4 * GAP;
  const height = Math.max(1, rows.length) * (side + GAP) + GAP;
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) data.set(BACKGROUND, 3 * i);
  rows.forEach((row, r) => {
    const top = GAP + r * (side + GAP);
    for (let y = 0; y < side; y++)
      for (let x = 0; x < side; x++) {
        const k = y * side + x;
        const put = (panel: number, c: readonly number[]) =>
          data.set(c, 3 * ((top + y) * width + GAP + panel * (side + GAP) + x));
        const g = row.image[k]!;
        if (Number.isNaN(g)) {
          for (let p = 0; p < 3; p++) put(p, LETTERBOX);
          continue;
        }
        const v = Math.max(0, Math.min(255, Math.round(g)));
        put(0, [v, v, v]);
        const t = row.truth[k]!;
        const p = row.pred[k]!;
        if (binary) {
          put(1, t ? TP : [0, 0, 0]);
          put(2, p && t ? TP : p ? FP : t ? FN : [0, 0, 0]);
        } else {
          put(1, palette(t));
          put(2, palette(p));
        }
      }
  });
  return { width, height, data, channels: 3 };
}
