// The paper's visual check of vessel-guided masking: how often each patch position was masked,
// and which share of masked patches contained vessel. Accumulated per epoch, drawn as a colour
// heat map with a scale over the mean angiogram (mask-frequency.png), the raw counts beside it
// (mask-frequency.npy).
import { Raster, textHeight, textWidth, viridis, type Rgb } from '../util/draw.js';
import { writeNpyF64 } from '../util/npy.js';
import { writePng } from '../util/png.js';

/** Side of the heat map in pixels (cells are whole pixels, at least 8). */
const HEAT_SIDE = 448;

export class MaskFrequency {
  private readonly counts: Float64Array;
  private images = 0;
  private masked = 0;
  private maskedWithVessel = 0;

  constructor(
    readonly gridH: number,
    readonly gridW: number,
  ) {
    this.counts = new Float64Array(gridH * gridW);
  }

  /**
   * Add a batch: `mask` (B, L) with 1 = masked; `vesselMass` (B, L), the vessel map's per-patch
   * mass (a patch "contains vessel" when its mass is > 0), optional.
   */
  add(mask: ArrayLike<number>, vesselMass?: ArrayLike<number>): void {
    const L = this.counts.length;
    if (mask.length % L !== 0) throw new Error(`mask has ${mask.length} values, not a multiple of ${L} patches`);
    if (vesselMass && vesselMass.length !== mask.length)
      throw new Error(`vessel mass has ${vesselMass.length} values, mask ${mask.length}`);
    for (let i = 0; i < mask.length; i++) {
      if (!mask[i]) continue;
      this.counts[i % L]! += 1;
      this.masked++;
      if (vesselMass && vesselMass[i]! > 0) this.maskedWithVessel++;
    }
    this.images += mask.length / L;
  }

  /** Add the counts of another map of the same grid (the other ranks' masks of a step). */
  merge(o: MaskFrequency): void {
    if (o.counts.length !== this.counts.length)
      throw new Error(`masking-frequency map of ${o.counts.length} patches, expected ${this.counts.length}`);
    o.counts.forEach((c, i) => (this.counts[i]! += c));
    this.images += o.images;
    this.masked += o.masked;
    this.maskedWithVessel += o.maskedWithVessel;
  }

  /** Share of masked patches that contain vessel (NaN without vessel masses). */
  vesselShare(): number {
    return this.masked > 0 ? this.maskedWithVessel / this.masked : Number.NaN;
  }

  /** Per-patch masking frequency in [0, 1]. */
  frequency(): Float64Array {
    return this.counts.map((c) => (this.images > 0 ? c / this.images : 0));
  }

  /** Images counted so far. */
  get imageCount(): number {
    return this.images;
  }

  /**
   * The map people read: `<base>.png`, a viridis heat map of the masking frequency over
   * `background` (the mean angiogram, `size`² grey 0..255, optional) with a colour bar whose
   * range is the map's own (rounded out to whole percent, so small differences show), and
   * `<base>.npy`, the raw counts (float64, gridH × gridW; frequency = counts / images, the image
   * count is in the picture's title).
   */
  writeHeatMap(base: string, background?: { data: ArrayLike<number>; size: number }): void {
    writeNpyF64(`${base}.npy`, this.counts, [this.gridH, this.gridW]);
    writePng(`${base}.png`, this.heatMap(background).toPng());
  }

  /** The heat map raster of `writeHeatMap`. */
  heatMap(background?: { data: ArrayLike<number>; size: number }): Raster {
    const f = this.frequency();
    const cell = Math.max(8, Math.round(HEAT_SIDE / Math.max(this.gridH, this.gridW)));
    const mapW = this.gridW * cell;
    const mapH = this.gridH * cell;
    let lo = Math.floor(100 * Math.min(...f)) / 100;
    let hi = Math.ceil(100 * Math.max(...f)) / 100;
    if (hi - lo < 0.01) [lo, hi] = [Math.max(0, hi - 0.01), Math.max(0.01, hi)];
    const t = (v: number) => (v - lo) / (hi - lo);
    // The background stretched to its own range: a mean of a few angiograms is low in contrast.
    let bLo = Infinity;
    let bHi = -Infinity;
    for (let i = 0; background && i < background.data.length; i++) {
      bLo = Math.min(bLo, background.data[i]!);
      bHi = Math.max(bHi, background.data[i]!);
    }
    const grey = (v: number) => (bHi > bLo ? (255 * (v - bLo)) / (bHi - bLo) : v);
    // Layout: title band, the map, a gap, the colour bar and its tick labels.
    const pad = 12;
    const top = pad + textHeight(2) + 10;
    const barX = pad + mapW + 16;
    const barW = 22;
    const labels = [0, 0.25, 0.5, 0.75, 1].map((k) => lo + k * (hi - lo));
    const digits = hi - lo < 0.05 ? 1 : 0;
    const label = (v: number) => `${(100 * v).toFixed(digits)}%`;
    const labelW = Math.max(...labels.map((v) => textWidth(label(v), 2)));
    const img = new Raster(barX + barW + 8 + labelW + pad, top + mapH + pad + textHeight(2) + 8);
    img.text(`masked share per patch, ${this.images} images`, pad, pad, 2);
    for (let y = 0; y < mapH; y++)
      for (let x = 0; x < mapW; x++) {
        const c = viridis(t(f[Math.floor(y / cell) * this.gridW + Math.floor(x / cell)]!));
        // The angiogram shows through (40 %) so the masks can be placed on the anatomy.
        const g = background
          ? grey(
              background.data[
                Math.floor((y * background.size) / mapH) * background.size + Math.floor((x * background.size) / mapW)
              ]!,
            )
          : 255;
        img.put(pad + x, top + y, [0, 1, 2].map((k) => Math.round(0.6 * c[k]! + 0.4 * g)) as unknown as Rgb);
      }
    for (let y = 0; y < mapH; y++) img.fill(barX, top + y, barW, 1, viridis(1 - y / (mapH - 1)));
    for (const v of labels) {
      const y = top + Math.round((1 - t(v)) * (mapH - 1));
      img.fill(barX + barW, y, 5, 2, [32, 32, 32]);
      img.text(label(v), barX + barW + 8, Math.min(top + mapH - textHeight(2), Math.max(top, y - 7)), 2);
    }
    img.text(background ? 'over the mean angiogram' : '', pad, top + mapH + 8, 2, [96, 96, 96]);
    return img;
  }

  /** Plain numbers for a checkpoint's loop state (resume continues the same map). */
  toJSON(): { counts: number[]; images: number; masked: number; maskedWithVessel: number } {
    return {
      counts: [...this.counts],
      images: this.images,
      masked: this.masked,
      maskedWithVessel: this.maskedWithVessel,
    };
  }

  static fromJSON(
    gridH: number,
    gridW: number,
    s: { counts: number[]; images: number; masked: number; maskedWithVessel: number },
  ): MaskFrequency {
    const f = new MaskFrequency(gridH, gridW);
    if (s.counts.length !== f.counts.length)
      throw new Error(`masking-frequency state has ${s.counts.length} patches, expected ${f.counts.length}`);
    f.counts.set(s.counts);
    f.images = s.images;
    f.masked = s.masked;
    f.maskedWithVessel = s.maskedWithVessel;
    return f;
  }

  reset(): void {
    this.counts.fill(0);
    this.images = this.masked = this.maskedWithVessel = 0;
  }
}
