//! Frames to the detector's square input, and boxes with them:
//!
//! - [`Placement`]: a horizontal flip, a scale, and the window of the scaled frame copied to the
//!   input's top-left corner (the rest is zero after normalisation). LSJ training draws them
//!   (flip → resize by U[0.1, 2] × S keeping the aspect → an S × S crop); test time is
//!   [`Placement::fit`] (the longer side to S, no crop).
//! - [`place_grey`]: the pixels (Pillow-exact bicubic resize of 8-bit grey, normalised per
//!   channel, the grey plane replicated); [`place_box`]: a box through the same placement,
//!   clipped to the valid area, dropped when empty; [`unplace_box`]: back to the frame.

use super::boxes::BoxF;
use crate::data::transforms::{normalise_into, resize_bicubic, CropBox, View};

/// How a `w × h` frame lands in an `S × S` input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// Resize factor (the scaled frame is round(w·scale) × round(h·scale), at least 1 × 1).
    pub scale: f64,
    /// Top-left corner of the window of the scaled frame that is copied.
    pub dx: usize,
    pub dy: usize,
    /// Flip the frame horizontally first.
    pub flip: bool,
}

impl Placement {
    /// Test time: the longer side to `s`, no crop, no flip.
    pub fn fit(w: usize, h: usize, s: usize) -> Self {
        Placement { scale: s as f64 / w.max(h) as f64, dx: 0, dy: 0, flip: false }
    }

    /// Scaled frame size (w, h).
    pub fn scaled(&self, w: usize, h: usize) -> (usize, usize) {
        let r = |v: usize| ((v as f64 * self.scale).round() as usize).max(1);
        (r(w), r(h))
    }

    /// The valid (h, w) of the input: the part of the scaled frame inside the window.
    pub fn valid(&self, w: usize, h: usize, s: usize) -> (usize, usize) {
        let (sw, sh) = self.scaled(w, h);
        (sh.saturating_sub(self.dy).min(s), sw.saturating_sub(self.dx).min(s))
    }
}

/// Writes the normalised `channels × s × s` input of a grey frame into `out`; returns the valid
/// (h, w). A window beyond the scaled frame is an error.
pub fn place_grey(
    px: &[u8],
    (w, h): (usize, usize),
    p: &Placement,
    s: usize,
    mean: &[f32],
    std: &[f32],
    out: &mut [f32],
) -> Result<(usize, usize), String> {
    if px.len() != w * h || w == 0 || h == 0 {
        return Err(format!("{} pixels for a {w}x{h} frame", px.len()));
    }
    if !(p.scale.is_finite() && p.scale > 0.0) {
        return Err(format!("scale {} must be > 0", p.scale));
    }
    let (sw, sh) = p.scaled(w, h);
    if p.dx >= sw || p.dy >= sh {
        return Err(format!("window at ({}, {}) lies beyond the {sw}x{sh} scaled frame", p.dx, p.dy));
    }
    let flipped: Vec<u8>;
    let src = if p.flip {
        flipped = px.chunks_exact(w).flat_map(|row| row.iter().rev().copied()).collect();
        &flipped[..]
    } else {
        px
    };
    let view = View { pixels: src, stride: w, crop: CropBox { top: 0, left: 0, height: h, width: w } };
    let scaled = resize_bicubic(view, sw, sh);
    let (vh, vw) = p.valid(w, h, s);
    let mut window = vec![0u8; vh * vw];
    for y in 0..vh {
        window[y * vw..(y + 1) * vw].copy_from_slice(&scaled[(p.dy + y) * sw + p.dx..(p.dy + y) * sw + p.dx + vw]);
    }
    let c = mean.len();
    let mut planes = vec![0f32; c * vh * vw];
    normalise_into(&window, mean, std, &mut planes);
    out.fill(0.0);
    for ch in 0..c {
        for y in 0..vh {
            let src = &planes[ch * vh * vw + y * vw..ch * vh * vw + (y + 1) * vw];
            out[ch * s * s + y * s..ch * s * s + y * s + vw].copy_from_slice(src);
        }
    }
    Ok((vh, vw))
}

/// A frame box through the placement, clipped to the valid area; None when nothing of it
/// (width or height ≤ 1e-5, detectron2's rule) is left.
pub fn place_box(b: &BoxF, (w, h): (usize, usize), p: &Placement, s: usize) -> Option<BoxF> {
    let (sw, sh) = p.scaled(w, h);
    let (fx, fy) = (sw as f32 / w as f32, sh as f32 / h as f32);
    let (x1, x2) = if p.flip { (w as f32 - b[2], w as f32 - b[0]) } else { (b[0], b[2]) };
    let (vh, vw) = p.valid(w, h, s);
    let c = |v: f32, hi: usize| v.clamp(0.0, hi as f32);
    let r = [
        c(x1 * fx - p.dx as f32, vw),
        c(b[1] * fy - p.dy as f32, vh),
        c(x2 * fx - p.dx as f32, vw),
        c(b[3] * fy - p.dy as f32, vh),
    ];
    (r[2] - r[0] > 1e-5 && r[3] - r[1] > 1e-5).then_some(r)
}

/// An input box back to frame pixels (test-time placements: no flip, no window).
pub fn unplace_box(b: &BoxF, (w, h): (usize, usize), p: &Placement) -> BoxF {
    let (sw, sh) = p.scaled(w, h);
    let (fx, fy) = (w as f32 / sw as f32, h as f32 / sh as f32);
    [b[0] * fx, b[1] * fy, b[2] * fx, b[3] * fy]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_and_maps_boxes_back() {
        let p = Placement::fit(800, 400, 512);
        assert_eq!(p.scaled(800, 400), (512, 256));
        assert_eq!(p.valid(800, 400, 512), (256, 512));
        let b = [100.0, 50.0, 300.0, 150.0];
        let q = place_box(&b, (800, 400), &p, 512).unwrap();
        assert_eq!(q, [64.0, 32.0, 192.0, 96.0]);
        assert_eq!(unplace_box(&q, (800, 400), &p), b);
    }

    #[test]
    fn crop_flip_and_empty_boxes() {
        let p = Placement { scale: 2.0, dx: 100, dy: 40, flip: true };
        // 100-wide frame, box at x 10..30: flipped 70..90, ×2 = 140..180, −100 = 40..80.
        let q = place_box(&[10.0, 30.0, 30.0, 50.0], (100, 100), &p, 64).unwrap();
        assert_eq!(q, [40.0, 20.0, 64.0, 60.0]);
        assert_eq!(place_box(&[80.0, 0.0, 99.0, 10.0], (100, 100), &p, 64), None);
        let px: Vec<u8> = (0..100 * 100).map(|i| (i % 100) as u8).collect();
        let mut out = vec![9f32; 64 * 64];
        let valid = place_grey(&px, (100, 100), &p, 64, &[0.0], &[1.0 / 255.0], &mut out).unwrap();
        assert_eq!(valid, (64, 64));
        // Flipped: column x of the frame holds 99 − x; scaled ×2 and shifted by 100 → frame x ≈ 50.
        assert!((out[0] - 49.0).abs() <= 1.0, "{}", out[0]);
        let small = Placement { scale: 0.25, dx: 0, dy: 0, flip: false };
        let valid = place_grey(&px, (100, 100), &small, 64, &[0.0], &[1.0], &mut out).unwrap();
        assert_eq!(valid, (25, 25));
        assert_eq!(out[30 * 64 + 30], 0.0);
        let e = place_grey(&px, (100, 100), &Placement { dx: 30, ..small }, 64, &[0.0], &[1.0], &mut out);
        assert!(e.unwrap_err().contains("beyond the 25x25 scaled frame"));
    }
}
