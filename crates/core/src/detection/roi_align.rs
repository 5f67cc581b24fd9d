//! RoIAlign (torchvision `roi_align(..., aligned=True)`), forward and backward:
//!
//! - [`roi_taps`]: for each box and output bin, the bilinear taps (flat index into the `N·H·W`
//!   map, weight / sample count) of its sampling grid, computed on the host in f32 with
//!   torchvision's arithmetic: box·scale − 0.5, `sampling_ratio` 0 → ⌈bin size⌉ samples per bin
//!   side, samples beyond [−1, size] contribute 0, others clamped into the map.
//! - [`roi_align`]: the pooled `(K, C, oh, ow)` features. On f32 CPU tensors a fused op sums the
//!   taps per bin (forward) and scatters them back (backward) without materialising the gathered
//!   rows (which for 1000 proposals on P2 would take gigabytes); elsewhere
//!   [`roi_align_composite`]: an `index_select` of the taps' map rows, weighted, summed per bin
//!   with `index_add`, which candle differentiates on any device. Boxes carry no gradient (as in
//!   Faster R-CNN); the gradient in the map is the transposed gather, torchvision's backward.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};

use super::boxes::BoxF;
use crate::nn::kernels::host::{f32_slice, for_rows, use_cpu_kernel, with_f32};

/// The sampling taps of a set of boxes: `bins[t]` is the output row (box·bins + bin) of tap t.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoiTaps {
    /// Flat index `(n·H + y)·W + x` into the feature map of each tap.
    pub index: Vec<u32>,
    /// Bilinear weight of each tap divided by the bin's sample count.
    pub weight: Vec<f32>,
    /// Output row of each tap.
    pub bins: Vec<u32>,
}

/// Taps of RoIAlign (aligned) of `boxes` (image index, box in input pixels) on an `h × w` map
/// at `scale` (map pixels per input pixel), output `oh × ow`, `sampling_ratio` (0: adaptive).
pub fn roi_taps(
    boxes: &[(usize, BoxF)],
    (h, w): (usize, usize),
    scale: f32,
    (oh, ow): (usize, usize),
    sampling_ratio: usize,
) -> RoiTaps {
    let mut t = RoiTaps::default();
    let (hf, wf) = (h as f32, w as f32);
    for (k, &(n, b)) in boxes.iter().enumerate() {
        let (x0, y0) = (b[0] * scale - 0.5, b[1] * scale - 0.5);
        let (rw, rh) = (b[2] * scale - 0.5 - x0, b[3] * scale - 0.5 - y0);
        let (bh, bw) = (rh / oh as f32, rw / ow as f32);
        let gh = if sampling_ratio > 0 { sampling_ratio } else { (rh / oh as f32).ceil().max(0.0) as usize };
        let gw = if sampling_ratio > 0 { sampling_ratio } else { (rw / ow as f32).ceil().max(0.0) as usize };
        let count = (gh * gw).max(1) as f32;
        for ph in 0..oh {
            for pw in 0..ow {
                let bin = (k * oh * ow + ph * ow + pw) as u32;
                for iy in 0..gh {
                    let yy = y0 + ph as f32 * bh + (iy as f32 + 0.5) * bh / gh as f32;
                    for ix in 0..gw {
                        let xx = x0 + pw as f32 * bw + (ix as f32 + 0.5) * bw / gw as f32;
                        if yy < -1.0 || yy > hf || xx < -1.0 || xx > wf {
                            continue;
                        }
                        let (y, ylo, yhi) = axis(yy, h);
                        let (x, xlo, xhi) = axis(xx, w);
                        let (ly, lx) = (y - ylo as f32, x - xlo as f32);
                        let (hy, hx) = (1.0 - ly, 1.0 - lx);
                        let base = n * h * w;
                        for (yi, xi, wt) in
                            [(ylo, xlo, hy * hx), (ylo, xhi, hy * lx), (yhi, xlo, ly * hx), (yhi, xhi, ly * lx)]
                        {
                            t.index.push((base + yi * w + xi) as u32);
                            t.weight.push(wt / count);
                            t.bins.push(bin);
                        }
                    }
                }
            }
        }
    }
    t
}

/// A sample coordinate clamped into the map: (coordinate, low index, high index).
#[inline]
fn axis(v: f32, n: usize) -> (f32, usize, usize) {
    let v = v.max(0.0);
    let lo = v as usize;
    if lo >= n - 1 {
        ((n - 1) as f32, n - 1, n - 1)
    } else {
        (v, lo, lo + 1)
    }
}

/// RoIAlign (aligned) of `boxes` on `features` `(N, C, H, W)` at `scale`: `(K, C, oh, ow)`.
pub fn roi_align(
    features: &Tensor,
    boxes: &[(usize, BoxF)],
    scale: f32,
    out: (usize, usize),
    sampling_ratio: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = features.dims4()?;
    if let Some(&(i, _)) = boxes.iter().find(|(i, _)| *i >= n) {
        candle_core::bail!("roi_align: box of image {i}, but the batch has {n} images");
    }
    if !use_cpu_kernel(&[features]) || boxes.is_empty() {
        return roi_align_composite(features, boxes, scale, out, sampling_ratio);
    }
    let taps = roi_taps(boxes, (h, w), scale, out, sampling_ratio);
    let op = RoiAlignOp { taps, k: boxes.len(), bins: out.0 * out.1, dims: (n, c, h, w) };
    features.contiguous()?.apply_op1(op)?.reshape((boxes.len(), c, out.0, out.1))
}

/// The fused CPU RoIAlign over precomputed taps (taps are in box-major, bin-major order).
struct RoiAlignOp {
    taps: RoiTaps,
    k: usize,
    bins: usize,
    dims: (usize, usize, usize, usize),
}

impl RoiAlignOp {
    /// First tap of each box, and the end.
    fn starts(&self) -> Vec<usize> {
        let mut s = vec![0; self.k + 1];
        for &b in &self.taps.bins {
            s[b as usize / self.bins + 1] += 1;
        }
        for i in 0..self.k {
            s[i + 1] += s[i];
        }
        s
    }
}

/// NCHW → rows of channels (N·H·W, C).
fn to_rows(x: &[f32], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut r = vec![0f32; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                r[(i * h * w + p) * c + ch] = x[(i * c + ch) * h * w + p];
            }
        }
    }
    r
}

impl CustomOp1 for RoiAlignOp {
    fn name(&self) -> &'static str {
        "vasomim-roi-align"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "roi_align")?;
        let c = self.dims.1;
        let rows = to_rows(x, self.dims);
        let starts = self.starts();
        // One block of (bins, C) per box, filled in parallel; then to (K, C, bins).
        let mut acc = vec![0f32; self.k * self.bins * c];
        for_rows(&mut acc, self.bins * c, |k, blk| {
            for t in starts[k]..starts[k + 1] {
                let j = self.taps.bins[t] as usize % self.bins;
                let (wt, src) = (self.taps.weight[t], self.taps.index[t] as usize * c);
                for (o, v) in blk[j * c..(j + 1) * c].iter_mut().zip(&rows[src..src + c]) {
                    *o += wt * v;
                }
            }
        });
        let mut out = vec![0f32; acc.len()];
        for k in 0..self.k {
            for j in 0..self.bins {
                for ch in 0..c {
                    out[(k * c + ch) * self.bins + j] = acc[(k * self.bins + j) * c + ch];
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.k, c, self.bins))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = self.dims;
        let dx = with_f32(&[grad], "roi_align backward", |g| {
            let g = g[0];
            let mut rows = vec![0f32; n * h * w * c];
            for (t, &b) in self.taps.bins.iter().enumerate() {
                let (k, j) = (b as usize / self.bins, b as usize % self.bins);
                let (wt, dst) = (self.taps.weight[t], self.taps.index[t] as usize * c);
                for (ch, d) in rows[dst..dst + c].iter_mut().enumerate() {
                    *d += wt * g[(k * c + ch) * self.bins + j];
                }
            }
            let mut dx = vec![0f32; rows.len()];
            for i in 0..n {
                for p in 0..h * w {
                    for ch in 0..c {
                        dx[(i * c + ch) * h * w + p] = rows[(i * h * w + p) * c + ch];
                    }
                }
            }
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, (n, c, h, w), arg.device())?))
    }
}

/// [`roi_align`] as candle ops (any device and float type; the CPU f32 path is fused).
pub fn roi_align_composite(
    features: &Tensor,
    boxes: &[(usize, BoxF)],
    scale: f32,
    out: (usize, usize),
    sampling_ratio: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = features.dims4()?;
    if let Some(&(i, _)) = boxes.iter().find(|(i, _)| *i >= n) {
        candle_core::bail!("roi_align: box of image {i}, but the batch has {n} images");
    }
    let (k, bins) = (boxes.len(), out.0 * out.1);
    let dev = features.device();
    if k == 0 {
        return Tensor::zeros((0, c, out.0, out.1), features.dtype(), dev);
    }
    let taps = roi_taps(boxes, (h, w), scale, out, sampling_ratio);
    let rows = features.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
    let pooled = Tensor::zeros((k * bins, c), features.dtype(), dev)?;
    let pooled = if taps.index.is_empty() {
        pooled
    } else {
        let t = taps.index.len();
        let index = Tensor::from_vec(taps.index, t, dev)?;
        let weight = Tensor::from_vec(taps.weight, (t, 1), &Device::Cpu)?.to_dtype(features.dtype())?.to_device(dev)?;
        let bins_t = Tensor::from_vec(taps.bins, t, dev)?;
        let gathered = rows.index_select(&index, 0)?.broadcast_mul(&weight)?;
        pooled.index_add(&bins_t, &gathered, 0)?
    };
    pooled.reshape((k, out.0, out.1, c))?.permute((0, 3, 1, 2))?.contiguous()
}
