// Pictures of detections: a grey frame as RGB with box outlines (ground truth green, predictions
// red, brighter for higher scores) and the contact sheet of `evaluate` (frames side by side,
// each fitted into a square panel with its boxes).
import type { PngImage } from '../util/png.js';
import type { Frame } from './model.js';

export const GT_COLOUR = [64, 255, 96] as const;
export const PRED_COLOUR = [255, 48, 48] as const;

/** Outline of box [x1, y1, x2, y2] (`width` px, inside the box) on an RGB buffer. */
function outline(rgb: Uint8Array, w: number, h: number, b: number[], colour: readonly number[], width = 2) {
  const x1 = Math.max(0, Math.floor(b[0]!));
  const y1 = Math.max(0, Math.floor(b[1]!));
  const x2 = Math.min(w - 1, Math.ceil(b[2]!) - 1);
  const y2 = Math.min(h - 1, Math.ceil(b[3]!) - 1);
  const put = (x: number, y: number) => rgb.set(colour, 3 * (y * w + x));
  for (let t = 0; t < width; t++) {
    for (let x = x1; x <= x2; x++) {
      if (y1 + t <= y2) put(x, y1 + t);
      if (y2 - t >= y1) put(x, y2 - t);
    }
    for (let y = y1; y <= y2; y++) {
      if (x1 + t <= x2) put(x1 + t, y);
      if (x2 - t >= x1) put(x2 - t, y);
    }
  }
}

/** The frame with ground-truth boxes (green) and predicted boxes (red, fading with the score). */
export function drawBoxes(
  frame: Frame,
  truth: number[][],
  pred: { boxes: number[][]; scores: number[] },
  lineWidth = 2,
): PngImage {
  const { width: w, height: h } = frame;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0; i < w * h; i++) {
    const v = Math.max(0, Math.min(255, Math.round(frame.pixels[i]!)));
    rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = v;
  }
  for (const b of truth) outline(rgb, w, h, b, GT_COLOUR, lineWidth);
  pred.boxes.forEach((b, k) => {
    const s = Math.max(0.35, Math.min(1, pred.scores[k]!));
    outline(
      rgb,
      w,
      h,
      b,
      PRED_COLOUR.map((c) => Math.round(c * s)),
      lineWidth,
    );
  });
  return { width: w, height: h, data: rgb, channels: 3 };
}

/** Panels of `side` px (nearest neighbour, aspect kept), `cols` per row. */
export function boxSheet(panels: PngImage[], side: number, cols = 4): PngImage {
  const gap = 4;
  const rows = Math.max(1, Math.ceil(panels.length / cols));
  const width = cols * (side + gap) + gap;
  const height = rows * (side + gap) + gap;
  const data = new Uint8Array(width * height * 3).fill(16);
  panels.forEach((p, i) => {
    const ox = gap + (i % cols) * (side + gap);
    const oy = gap + Math.floor(i / cols) * (side + gap);
    const scale = Math.min(side / p.width, side / p.height);
    const pw = Math.max(1, Math.round(p.width * scale));
    const ph = Math.max(1, Math.round(p.height * scale));
    for (let y = 0; y < ph; y++) {
      const sy = Math.min(p.height - 1, Math.floor(((y + 0.5) * p.height) / ph));
      for (let x = 0; x < pw; x++) {
        const sx = Math.min(p.width - 1, Math.floor(((x + 0.5) * p.width) / pw));
        const s = 3 * (sy * p.width + sx);
        const d = 3 * ((oy + y) * width + ox + x);
        data[d] = p.data[s]!;
        data[d + 1] = p.data[s + 1]!;
        data[d + 2] = p.data[s + 2]!;
      }
    }
  });
  return { width, height, data, channels: 3 };
}
