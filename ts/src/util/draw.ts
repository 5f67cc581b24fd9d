// Drawing on in-memory RGB pictures for the PNGs people read (heat maps, grid titles): a raster
// with `fill` / `text`, a 5×7 bitmap font (upper case, digits, a little punctuation) scaled by
// whole pixels, and the viridis colour map (perceptually uniform, readable in grey print).
//
//   Raster        width × height × 3 bytes, white; fill, put, text, toPng
//   textWidth     pixels a string takes at a scale
//   viridis       [0, 1] -> [r, g, b]
import type { PngImage } from './png.js';

/** Rows of each glyph, 5 bits a row (bit 4 = left column), written as 7 hex bytes. */
const GLYPHS: Record<string, string> = {
  A: '0e11111f111111',
  B: '1e11111e11111e',
  C: '0e11101010110e',
  D: '1e11111111111e',
  E: '1f10101e10101f',
  F: '1f10101e101010',
  G: '0e11101711110f',
  H: '1111111f111111',
  I: '0e04040404040e',
  J: '0702020202120c',
  K: '11121418141211',
  L: '1010101010101f',
  M: '111b1515111111',
  N: '11111915131111',
  O: '0e11111111110e',
  P: '1e11111e101010',
  Q: '0e11111115120d',
  R: '1e11111e141211',
  S: '0f10100e01011e',
  T: '1f040404040404',
  U: '1111111111110e',
  V: '11111111110a04',
  W: '1111111515150a',
  X: '11110a040a1111',
  Y: '11110a04040404',
  Z: '1f01020408101f',
  '0': '0e11131519110e',
  '1': '040c040404040e',
  '2': '0e11010204081f',
  '3': '1f02040201110e',
  '4': '02060a121f0202',
  '5': '1f101e0101110e',
  '6': '0608101e11110e',
  '7': '1f010204080808',
  '8': '0e11110e11110e',
  '9': '0e11110f01020c',
  ' ': '00000000000000',
  '.': '00000000000c0c',
  ',': '000000000c0408',
  ':': '000c0c000c0c00',
  '%': '18190204081303',
  '+': '0004041f040400',
  '-': '0000001f000000',
  '=': '00001f001f0000',
  '(': '02040808080402',
  ')': '08040202020408',
  '/': '00010204081000',
  '|': '04040404040404',
};

/** Glyph cell: 5 columns + 1 of spacing, 7 rows. */
const CELL_W = 6;
const CELL_H = 7;

/** Width in pixels of `text` drawn at `scale` (no trailing spacing). */
export function textWidth(text: string, scale: number): number {
  return text.length > 0 ? (text.length * CELL_W - 1) * scale : 0;
}

/** Height in pixels of a line of text at `scale`. */
export function textHeight(scale: number): number {
  return CELL_H * scale;
}

export type Rgb = readonly [number, number, number];

/** An RGB picture, white when created; coordinates outside it are clipped. */
export class Raster {
  readonly data: Uint8Array;

  constructor(
    readonly width: number,
    readonly height: number,
  ) {
    this.data = new Uint8Array(width * height * 3).fill(255);
  }

  put(x: number, y: number, c: Rgb): void {
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const o = (y * this.width + x) * 3;
    this.data[o] = c[0];
    this.data[o + 1] = c[1];
    this.data[o + 2] = c[2];
  }

  fill(x: number, y: number, w: number, h: number, c: Rgb): void {
    for (let j = y; j < y + h; j++) for (let i = x; i < x + w; i++) this.put(i, j, c);
  }

  /** Draw `text` (upper-cased; characters without a glyph become spaces) with its top-left at (x, y). */
  text(text: string, x: number, y: number, scale: number, c: Rgb = [32, 32, 32]): void {
    const s = text.toUpperCase();
    for (let k = 0; k < s.length; k++) {
      const g = GLYPHS[s[k]!] ?? GLYPHS[' ']!;
      for (let row = 0; row < CELL_H; row++) {
        const bits = parseInt(g.slice(2 * row, 2 * row + 2), 16);
        for (let col = 0; col < 5; col++)
          if (bits & (16 >> col)) this.fill(x + (k * CELL_W + col) * scale, y + row * scale, scale, scale, c);
      }
    }
  }

  toPng(): PngImage {
    return { width: this.width, height: this.height, data: this.data, channels: 3 };
  }
}

/** matplotlib's viridis at 0, 1/8, …, 1 (the map's published samples), linearly interpolated. */
const VIRIDIS: Rgb[] = [
  [68, 1, 84],
  [72, 40, 120],
  [62, 73, 137],
  [49, 104, 142],
  [38, 130, 142],
  [31, 158, 137],
  [53, 183, 121],
  [110, 206, 88],
  [253, 231, 37],
];

/** The viridis colour of `t` in [0, 1] (clamped; NaN draws as 0). */
export function viridis(t: number): Rgb {
  const u = Number.isFinite(t) ? Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1) : 0;
  const i = Math.min(VIRIDIS.length - 2, Math.floor(u));
  const f = u - i;
  const a = VIRIDIS[i]!;
  const b = VIRIDIS[i + 1]!;
  return [0, 1, 2].map((k) => Math.round(a[k]! + f * (b[k]! - a[k]!))) as unknown as Rgb;
}
