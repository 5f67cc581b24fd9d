// 2-D skeletonisation by Zhang-Suen thinning, as scikit-image's `skeletonize` does for 2-D
// images (its default `method='zhang'`): equal pixel for pixel (golden-tested,
// scripts/golden/seg_metrics.py).
//
// Zhang & Suen (CACM 27(3), 1984): repeat two parallel sub-iterations until nothing changes; in
// each, every foreground pixel P1 whose 8 neighbours P2..P9 (P2 north, clockwise) satisfy
//   (a) 2 <= B <= 6, B = number of foreground neighbours,
//   (b) A = 1, A = number of 0 -> 1 transitions in the cyclic sequence P2, P3, ..., P9, P2,
//   (c) sub-iteration 1: P2·P4·P6 = 0 and P4·P6·P8 = 0; sub-iteration 2: P2·P4·P8 = 0 and P2·P6·P8 = 0,
// is removed (all decisions of a sub-iteration are taken on the image before it). Pixels outside
// the image are background.
//
// scikit-image decides with a hard-coded 256-entry table that equals these conditions except in
// the 25 neighbourhoods listed in SKIMAGE_DEPARTURES (measured against scikit-image 0.26; the
// golden fixture checks the result on real vessel masks and random shapes). We apply the same
// decisions so that clDice equals the reference pipeline's; `variant: 'textbook'` gives the
// plain conditions above.

/** Neighbour offsets in Zhang-Suen order P2..P9: N, NE, E, SE, S, SW, W, NW (dy, dx). */
const ORDER: readonly (readonly [number, number])[] = [
  [-1, 0],
  [-1, 1],
  [0, 1],
  [1, 1],
  [1, 0],
  [1, -1],
  [0, -1],
  [-1, -1],
];

/** Bit k of a neighbourhood code is P(k+2). Removal sets: bit 0 = sub-iteration 1, bit 1 = 2. */
function textbook(code: number): number {
  const p = (k: number) => (code >> (k - 2)) & 1; // P2..P9
  let b = 0;
  let a = 0;
  for (let k = 2; k <= 9; k++) {
    b += p(k);
    if (p(k) === 0 && p(k === 9 ? 2 : k + 1) === 1) a++;
  }
  if (b < 2 || b > 6 || a !== 1) return 0;
  const first = p(2) * p(4) * p(6) === 0 && p(4) * p(6) * p(8) === 0;
  const second = p(2) * p(4) * p(8) === 0 && p(2) * p(6) * p(8) === 0;
  return (first ? 1 : 0) | (second ? 2 : 0);
}

/**
 * Where scikit-image's table departs from the textbook conditions: the 3x3 neighbourhood
 * ('NW N NE/W . E/SW S SE'; the centre is foreground) and the sub-iterations in which
 * scikit-image removes the centre (0: never, 1: first, 2: second, 3: both).
 */
export const SKIMAGE_DEPARTURES: readonly (readonly [string, number])[] = [
  ['110/0.0/000', 1],
  ['011/0.0/000', 1],
  ['010/0.1/000', 3],
  ['110/0.1/000', 1],
  ['001/0.1/000', 1],
  ['011/0.1/000', 1],
  ['000/0.1/001', 2],
  ['010/0.1/001', 2],
  ['000/0.1/010', 3],
  ['000/0.0/011', 0],
  ['000/0.1/011', 2],
  ['000/0.0/110', 2],
  ['000/0.1/110', 2],
  ['001/0.1/110', 2],
  ['100/1.0/000', 0],
  ['010/1.0/000', 3],
  ['110/1.0/000', 1],
  ['011/1.0/000', 1],
  ['000/1.0/010', 3],
  ['100/1.0/010', 1],
  ['000/1.0/011', 2],
  ['000/1.0/100', 2],
  ['010/1.0/100', 1],
  ['011/1.0/100', 1],
  ['000/1.0/110', 2],
];

/** 'NW N NE/W . E/SW S SE' (e.g. '110/0.1/000') -> neighbourhood code (bit k = P(k+2)). */
function codeOf(pattern: string): number {
  const [nw, n, ne, , w, , e, , sw, s, se] = pattern.split('');
  const bits = [n, ne, e, se, s, sw, w, nw];
  return bits.reduce((c, b, k) => c | ((b === '1' ? 1 : 0) << k), 0);
}

function buildTable(variant: 'skimage' | 'textbook'): Uint8Array {
  const t = new Uint8Array(256);
  for (let c = 0; c < 256; c++) t[c] = textbook(c);
  if (variant === 'skimage') for (const [p, v] of SKIMAGE_DEPARTURES) t[codeOf(p)] = v;
  return t;
}

const TABLES = { skimage: buildTable('skimage'), textbook: buildTable('textbook') };

/**
 * The skeleton of a binary mask (non-zero = foreground), row-major `width` x `height`, as 0/1.
 * `variant: 'skimage'` (default) equals `skimage.morphology.skeletonize`.
 */
export function skeletonize(
  mask: ArrayLike<number>,
  width: number,
  height: number,
  options: { variant?: 'skimage' | 'textbook' } = {},
): Uint8Array {
  if (mask.length !== width * height)
    throw new RangeError(`skeletonize: mask has ${mask.length} pixels, expected ${width}x${height}`);
  const table = TABLES[options.variant ?? 'skimage'];
  const W = width + 2;
  const img = new Uint8Array(W * (height + 2));
  let live: number[] = [];
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++)
      if (mask[y * width + x]) {
        const i = (y + 1) * W + x + 1;
        img[i] = 1;
        live.push(i);
      }
  const offsets = ORDER.map(([dy, dx]) => dy * W + dx);
  const remove: number[] = [];
  for (let changed = true; changed;) {
    changed = false;
    for (const pass of [1, 2]) {
      remove.length = 0;
      for (const i of live) {
        let code = 0;
        for (let k = 0; k < 8; k++) code |= img[i + offsets[k]!]! << k;
        if (table[code]! & pass) remove.push(i);
      }
      if (remove.length) {
        changed = true;
        for (const i of remove) img[i] = 0;
        live = live.filter((i) => img[i] === 1);
      }
    }
  }
  const out = new Uint8Array(width * height);
  for (const i of live) {
    const y = Math.floor(i / W) - 1;
    out[y * width + (i % W) - 1] = 1;
  }
  return out;
}
