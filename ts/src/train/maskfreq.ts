// The paper's visual check of vessel-guided masking: how often each patch position was masked,
// and which share of masked patches contained vessel. Accumulated per epoch, drawn as a PNG.
import { writePng } from '../util/png.js';

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

  /** Grey PNG, `scale` pixels per patch, 0 = never masked, 255 = always masked. */
  writePng(path: string, scale = 16): void {
    const f = this.frequency();
    const W = this.gridW * scale;
    const H = this.gridH * scale;
    const data = new Uint8Array(W * H);
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++)
        data[y * W + x] = Math.round(255 * f[Math.floor(y / scale) * this.gridW + Math.floor(x / scale)]!);
    writePng(path, { width: W, height: H, data });
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
