//! Paired augmentation of VasoMIM (method §2): one RandomResizedCrop draw and one flip draw
//! shared by the angiogram and its vessel map, then normalisation.
//!
//! Semantics reproduced (written from the documented behaviour, no code copied):
//! - [`rrc_params`]: torchvision `RandomResizedCrop.get_params` — up to 10 tries of
//!   area = H·W·U(scale), aspect = exp(U(ln r0, ln r1)), w = round(√(area·aspect)),
//!   h = round(√(area/aspect)) with Python's round-half-to-even; accepted when 0 < w ≤ W and
//!   0 < h ≤ H, then top ~ U{0..H−h}, left ~ U{0..W−w}; else the central crop of the image's
//!   aspect clamped into the ratio range.
//! - [`resize_bicubic`]: Pillow's `Image.resize(..., BICUBIC)` of the cropped 8-bit image
//!   (torchvision crops a PIL image, then resizes it): separable, horizontal pass first, cubic
//!   kernel a = −0.5 whose support grows by the downscale factor (antialias), weights normalised
//!   per output pixel then turned into 22-bit fixed point, each pass rounded and clipped to
//!   8 bits.
//! - [`resize_nearest`]: Pillow's NEAREST resize (the source index of output x is
//!   ⌊(x + ½)·in/out⌋, accumulated as Pillow does).
//! - Normalisation: v/255 then (x − mean)/std per channel in f32, as torchvision's
//!   `ToTensor` + `Normalize`; maps: v/255 (so {0, 255} → {0, 1}).

use super::rng::SplitMix64;

/// A crop box in pixels (torchvision's i, j, h, w).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Python's `round()` for the non-negative values met here (ties to even).
fn round_py(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// torchvision's `RandomResizedCrop.get_params` for an image of `height` x `width`.
pub fn rrc_params(height: usize, width: usize, scale: (f64, f64), ratio: (f64, f64), rng: &mut SplitMix64) -> CropBox {
    let area = (height * width) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform_in(scale.0, scale.1);
        let aspect = rng.uniform_in(lr0, lr1).exp();
        let w = round_py((target * aspect).sqrt());
        let h = round_py((target / aspect).sqrt());
        if 0 < w && w as usize <= width && 0 < h && h as usize <= height {
            let (w, h) = (w as usize, h as usize);
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return CropBox { top, left, height: h, width: w };
        }
    }
    central_crop(height, width, ratio)
}

/// The fallback of `get_params`: the whole image, its aspect clamped into `ratio`, centred.
pub fn central_crop(height: usize, width: usize, ratio: (f64, f64)) -> CropBox {
    let in_ratio = width as f64 / height as f64;
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < lo {
        (width, (round_py(width as f64 / lo) as usize).clamp(1, height))
    } else if in_ratio > hi {
        ((round_py(height as f64 * hi) as usize).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

/// Pillow's fixed-point precision for 8-bit resampling: 32 − 8 − 2 bits.
const PRECISION_BITS: u32 = 22;

/// The cubic convolution kernel with a = −0.5 (Keys), support 2 (also used to resample
/// position embeddings in `nn::pos_embed`).
pub(crate) fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index and fixed-point weights (all `ksize` long).
struct Coeffs {
    first: Vec<usize>,
    count: Vec<usize>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Resampling weights from `in_size` input pixels to `out_size`, Pillow's rule: centre of
/// output pixel xx at (xx + ½)·scale; taps from ⌊centre − support + ½⌋ to ⌊centre + support + ½⌋
/// (clamped to the image), weight = kernel((x − centre + ½)/filterscale), normalised to sum 1.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut first = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // `as i64` truncates toward zero like C's (int); negative values clamp to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let v = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            row[x] = if v < 0.0 { (f - 0.5) as i32 } else { (f + 0.5) as i32 };
        }
        first.push(xmin);
        count.push(n);
    }
    Coeffs { first, count, ksize, weights }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= 255 << PRECISION_BITS {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// A rectangle of an 8-bit grey image (no copy): rows of `stride` pixels.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub pixels: &'a [u8],
    pub stride: usize,
    pub crop: CropBox,
}

impl View<'_> {
    #[inline]
    fn row(&self, y: usize) -> &[u8] {
        let start = (self.crop.top + y) * self.stride + self.crop.left;
        &self.pixels[start..start + self.crop.width]
    }
}

/// Pillow-exact bicubic resize of the cropped view to `out_w` x `out_h`.
pub fn resize_bicubic(src: View<'_>, out_w: usize, out_h: usize) -> Vec<u8> {
    let (in_w, in_h) = (src.crop.width, src.crop.height);
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    if !need_h && !need_v {
        return (0..in_h).flat_map(|y| src.row(y).to_vec()).collect();
    }
    // Horizontal pass, only over the rows the vertical pass reads.
    let cv = coeffs(in_h, out_h);
    let (y_first, y_last) = if need_v { (cv.first[0], cv.first[out_h - 1] + cv.count[out_h - 1]) } else { (0, in_h) };
    let tmp: Vec<u8>;
    let (mid, mid_w): (&[u8], usize) = if need_h {
        let ch = coeffs(in_w, out_w);
        let t = match ch.ksize {
            k if k > in_w => horizontal_any(src, &ch, y_first, y_last, out_w),
            5 => horizontal_fixed::<5>(src, &ch, y_first, y_last, out_w),
            7 => horizontal_fixed::<7>(src, &ch, y_first, y_last, out_w),
            9 => horizontal_fixed::<9>(src, &ch, y_first, y_last, out_w),
            11 => horizontal_fixed::<11>(src, &ch, y_first, y_last, out_w),
            13 => horizontal_fixed::<13>(src, &ch, y_first, y_last, out_w),
            _ => horizontal_any(src, &ch, y_first, y_last, out_w),
        };
        tmp = t;
        (&tmp, out_w)
    } else {
        tmp = (y_first..y_last).flat_map(|y| src.row(y).to_vec()).collect();
        (&tmp, in_w)
    };
    if !need_v {
        return mid.to_vec();
    }
    let mut out = vec![0u8; out_w * out_h];
    let mut acc = vec![0i32; mid_w];
    for (yy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
        acc.fill(1 << (PRECISION_BITS - 1));
        let y0 = cv.first[yy] - y_first;
        let w = &cv.weights[yy * cv.ksize..yy * cv.ksize + cv.count[yy]];
        for (dy, &k) in w.iter().enumerate() {
            let row = &mid[(y0 + dy) * mid_w..(y0 + dy + 1) * mid_w];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * k;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// The horizontal pass with each output's taps as stored (variable count).
fn horizontal_any(src: View<'_>, ch: &Coeffs, y_first: usize, y_last: usize, out_w: usize) -> Vec<u8> {
    let mut t = vec![0u8; (y_last - y_first) * out_w];
    for (y, out_row) in t.chunks_exact_mut(out_w).enumerate() {
        let row = src.row(y + y_first);
        for (xx, o) in out_row.iter_mut().enumerate() {
            let x0 = ch.first[xx];
            let w = &ch.weights[xx * ch.ksize..xx * ch.ksize + ch.count[xx]];
            let mut acc: i32 = 1 << (PRECISION_BITS - 1);
            for (p, &k) in row[x0..x0 + w.len()].iter().zip(w) {
                acc += *p as i32 * k;
            }
            *o = clip8(acc);
        }
    }
    t
}

/// The same pass with exactly K taps per output (K = ksize <= input width): each window is
/// moved left at the right edge and its weights shifted, the extra taps weighing 0, so the
/// integer sums are unchanged while the loop has a fixed length the compiler unrolls.
fn horizontal_fixed<const K: usize>(
    src: View<'_>,
    ch: &Coeffs,
    y_first: usize,
    y_last: usize,
    out_w: usize,
) -> Vec<u8> {
    let in_w = src.crop.width;
    let mut starts = Vec::with_capacity(out_w);
    let mut weights = Vec::with_capacity(out_w);
    for xx in 0..out_w {
        let x0 = ch.first[xx];
        let s = x0.min(in_w - K);
        let mut w = [0i32; K];
        let n = ch.count[xx];
        w[x0 - s..x0 - s + n].copy_from_slice(&ch.weights[xx * ch.ksize..xx * ch.ksize + n]);
        starts.push(s);
        weights.push(w);
    }
    let mut t = vec![0u8; (y_last - y_first) * out_w];
    for (y, out_row) in t.chunks_exact_mut(out_w).enumerate() {
        let row = src.row(y + y_first);
        for ((o, &s), w) in out_row.iter_mut().zip(&starts).zip(&weights) {
            let win: &[u8; K] = row[s..s + K].try_into().unwrap();
            let mut acc: i32 = 1 << (PRECISION_BITS - 1);
            for (&p, &k) in win.iter().zip(w) {
                acc += p as i32 * k;
            }
            *o = clip8(acc);
        }
    }
    t
}

/// Source indices of Pillow's NEAREST resize along one axis. Pillow walks the output with a
/// running sum (x_in += in/out, starting at in/out · ½) and truncates, so do we, to land on
/// the same pixel when a centre falls exactly on an edge.
fn nearest_index(in_size: usize, out_size: usize) -> Vec<usize> {
    let a = in_size as f64 / out_size as f64;
    let mut xo = a * 0.5;
    let mut out = Vec::with_capacity(out_size);
    for _ in 0..out_size {
        out.push((xo as usize).min(in_size - 1));
        xo += a;
    }
    out
}

/// Pillow-exact nearest-neighbour resize of the cropped view.
pub fn resize_nearest(src: View<'_>, out_w: usize, out_h: usize) -> Vec<u8> {
    let xs = nearest_index(src.crop.width, out_w);
    let ys = nearest_index(src.crop.height, out_h);
    let mut out = Vec::with_capacity(out_w * out_h);
    for &y in &ys {
        let row = src.row(y);
        out.extend(xs.iter().map(|&x| row[x]));
    }
    out
}

/// Mirror each row in place.
pub fn hflip(pixels: &mut [u8], width: usize) {
    for row in pixels.chunks_exact_mut(width) {
        row.reverse();
    }
}

/// ImageNet statistics (method §2), for grey replicated to three channels.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Write the normalised planes of an 8-bit image into `out` (channels x H x W): one
/// 256-entry table per channel, computed as torchvision does in f32.
pub fn normalise_into(pixels: &[u8], mean: &[f32], std: &[f32], out: &mut [f32]) {
    let n = pixels.len();
    assert_eq!(out.len(), n * mean.len());
    for (c, plane) in out.chunks_exact_mut(n).enumerate() {
        let lut: Vec<f32> = (0..256).map(|v| (v as f32 / 255.0 - mean[c]) / std[c]).collect();
        for (o, &p) in plane.iter_mut().zip(pixels) {
            *o = lut[p as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(p: &[u8], w: usize, h: usize) -> View<'_> {
        View { pixels: p, stride: w, crop: CropBox { top: 0, left: 0, height: h, width: w } }
    }

    #[test]
    fn kernel_interpolates_and_weights_sum_to_one() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        for (i, o) in [(300, 224), (100, 224), (512, 7), (1, 5)] {
            let c = coeffs(i, o);
            for xx in 0..o {
                let s: i64 = c.weights[xx * c.ksize..][..c.count[xx]].iter().map(|&v| v as i64).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= c.count[xx] as i64, "{i}->{o}");
            }
        }
    }

    #[test]
    fn constant_images_stay_constant_and_identity_is_a_copy() {
        let p = vec![77u8; 37 * 23];
        assert!(resize_bicubic(view(&p, 37, 23), 224, 224).iter().all(|&v| v == 77));
        assert!(resize_bicubic(view(&p, 37, 23), 5, 3).iter().all(|&v| v == 77));
        let q: Vec<u8> = (0..64u8).collect();
        assert_eq!(resize_bicubic(view(&q, 8, 8), 8, 8), q);
        assert_eq!(resize_nearest(view(&q, 8, 8), 8, 8), q);
    }

    #[test]
    fn fixed_tap_pass_equals_the_variable_one() {
        let mut rng = SplitMix64::new(9);
        let (w, h) = (97, 61);
        let px: Vec<u8> = (0..w * h).map(|_| rng.below(256) as u8).collect();
        for _ in 0..200 {
            let cw = 1 + rng.below(w as u64) as usize;
            let ch = 1 + rng.below(h as u64) as usize;
            let crop = CropBox {
                top: rng.below((h - ch + 1) as u64) as usize,
                left: rng.below((w - cw + 1) as u64) as usize,
                height: ch,
                width: cw,
            };
            let out_w = 1 + rng.below(60) as usize;
            let v = View { pixels: &px, stride: w, crop };
            let c = coeffs(cw, out_w);
            let any = horizontal_any(v, &c, 0, ch, out_w);
            let fixed = match c.ksize {
                k if k > cw => any.clone(),
                5 => horizontal_fixed::<5>(v, &c, 0, ch, out_w),
                7 => horizontal_fixed::<7>(v, &c, 0, ch, out_w),
                9 => horizontal_fixed::<9>(v, &c, 0, ch, out_w),
                11 => horizontal_fixed::<11>(v, &c, 0, ch, out_w),
                13 => horizontal_fixed::<13>(v, &c, 0, ch, out_w),
                _ => any.clone(),
            };
            assert_eq!(any, fixed, "{crop:?} -> {out_w}");
        }
    }

    #[test]
    fn fallback_is_the_centred_clamped_crop() {
        // 100 wide x 10 high has aspect 10 > 4/3: h = 10, w = round(10 * 4/3) = 13.
        assert_eq!(central_crop(10, 100, (0.75, 4.0 / 3.0)), CropBox { top: 0, left: 43, height: 10, width: 13 });
        // A 1000 x 1 strip can never satisfy 10 tries of scale >= 0.2: the fallback is used.
        let mut rng = SplitMix64::new(1);
        let c = rrc_params(1, 1000, (0.2, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!(c, central_crop(1, 1000, (0.75, 4.0 / 3.0)));
    }

    #[test]
    fn normalise_matches_the_formula() {
        let mut out = vec![0f32; 6];
        normalise_into(&[0, 255], &IMAGENET_MEAN, &IMAGENET_STD, &mut out);
        assert!((out[0] + 0.485 / 0.229).abs() < 1e-6);
        assert!((out[5] - (1.0 - 0.406) / 0.225).abs() < 1e-6);
    }
}
