// Scan-line polygon fill for COCO polygons (ARCADE annotations).
//
// Convention: COCO coordinates are continuous and pixel (x, y) covers [x, x+1) x [y, y+1); a
// pixel is filled when its centre (x + 0.5, y + 0.5) is inside the polygon or on its boundary,
// by the even-odd rule. The test is O'Rourke's point-in-polygon with boundary detection
// ("Computational Geometry in C", 2nd ed., §7.4): with the point at the origin, count the edges
// straddling the x-axis (one end above, y > 0) whose crossing lies right of the point, and those
// straddling it downwards (one end below, y < 0) whose crossing lies left of it; a point within
// 1e-12 of a vertex, or with right and left counts of different parity, is on the boundary;
// otherwise an odd right count means inside. This is what scikit-image's `draw.polygon` /
// `polygon2mask` computes on vertices shifted by -0.5 (that shift is exact in float64), and the
// same float64 operations in the same order give the same pixels (golden-tested,
// scripts/golden/seg_metrics.py). Pillow's ImageDraw.polygon truncates vertices to integers, and
// its output changed between Pillow 9.4 and 13.0, so it is not the reference
// (docs/SEGMENTATION.md).

/**
 * Set `value` in every pixel of `mask` (row-major, width x height) whose centre is inside the
 * polygon `xy` = [x0, y0, x1, y1, ...] (COCO order). Returns the number of pixels set.
 */
export function fillPolygon(mask: Uint8Array, width: number, height: number, xy: ArrayLike<number>, value = 1): number {
  if (mask.length !== width * height)
    throw new RangeError(`mask has ${mask.length} pixels, expected ${width}x${height}`);
  if (xy.length % 2 !== 0) throw new RangeError(`polygon has an odd number of coordinates (${xy.length})`);
  const n = xy.length / 2;
  if (n < 3) return 0;
  const xs = new Float64Array(n);
  const ys = new Float64Array(n);
  let minX = Infinity;
  let maxX = -Infinity;
  let minY = Infinity;
  let maxY = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = Number(xy[2 * i]);
    const y = Number(xy[2 * i + 1]);
    if (!Number.isFinite(x) || !Number.isFinite(y)) throw new RangeError(`polygon vertex ${i} is not a finite point`);
    xs[i] = x - 0.5; // exact in float64 for any coordinate an image can have
    ys[i] = y - 0.5;
    minX = Math.min(minX, xs[i]!);
    maxX = Math.max(maxX, xs[i]!);
    minY = Math.min(minY, ys[i]!);
    maxY = Math.max(maxY, ys[i]!);
  }
  const r0 = Math.max(0, Math.floor(minY));
  const r1 = Math.min(height - 1, Math.ceil(maxY));
  const c0 = Math.max(0, Math.floor(minX));
  const c1 = Math.min(width - 1, Math.ceil(maxX));
  let count = 0;
  for (let r = r0; r <= r1; r++)
    for (let c = c0; c <= c1; c++)
      if (insideOrOn(xs, ys, c, r)) {
        mask[r * width + c] = value;
        count++;
      }
  return count;
}

const EPS = 1e-12;

/** O'Rourke's in-polygon test; true for inside, on an edge or at a vertex. */
function insideOrOn(xs: Float64Array, ys: Float64Array, x: number, y: number): boolean {
  const n = xs.length;
  let right = 0;
  let left = 0;
  let x1 = xs[n - 1]! - x;
  let y1 = ys[n - 1]! - y;
  for (let i = 0; i < n; i++) {
    const x0 = xs[i]! - x;
    const y0 = ys[i]! - y;
    if (-EPS < x0 && x0 < EPS && -EPS < y0 && y0 < EPS) return true; // a vertex
    if (y0 > 0 !== y1 > 0 && (x0 * y1 - x1 * y0) / (y1 - y0) > 0) right++;
    if (y0 < 0 !== y1 < 0 && (x0 * y1 - x1 * y0) / (y1 - y0) < 0) left++;
    x1 = x0;
    y1 = y0;
  }
  if ((right & 1) !== (left & 1)) return true; // on an edge
  return (right & 1) === 1;
}
