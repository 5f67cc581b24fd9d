//! Resampling and shifting ops, forward and backward side by side:
//!
//! - [`max_pool2x2`]: `F.max_pool2d(x, 2, 2)`, optionally fused with a ReLU.
//! - [`upsample_bilinear2x`] / [`upsample_nearest2x`]: ×2 `F.interpolate` (bilinear with
//!   `align_corners = false`, nearest), optionally fused with a ReLU.
//! - [`shift_chunks_nhwc`]: the shifted MLP's channel-chunk shift (UNeXt) on channels-last x.
//!
//! Why not candle's own: `upsample_bilinear2d` has no backward, and `max_pool2d`'s backward
//! splits the gradient between ties (PyTorch gives it to the first maximum). Off the fused CPU
//! path (CUDA, bf16) each op is a composite of differentiable candle primitives
//! (`*_composite`); the max-pool composite gives a tied window's gradient to every maximum.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::host::{f32_slice, for_rows, use_cpu_kernel, with_f32};

// --------------------------------------------------------------------- max-pool 2×2 (NCHW)

/// `F.max_pool2d(x, 2, 2)` (odd sizes floor), then ReLU when `relu`. The gradient goes to the
/// first maximum of each window in row-major order, as PyTorch's CPU kernel.
pub fn max_pool2x2(x: &Tensor, relu: bool) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        candle_core::bail!("max_pool2x2: input {h}x{w} is smaller than the window");
    }
    if use_cpu_kernel(&[x]) {
        return x.contiguous()?.apply_op1(MaxPool { relu });
    }
    let (ho, wo) = (h / 2, w / 2);
    let x = x.narrow(2, 0, 2 * ho)?.narrow(3, 0, 2 * wo)?.contiguous()?;
    let y = x.reshape((b, c, ho, 2, wo, 2))?.max(5)?.max(3)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

struct MaxPool {
    relu: bool,
}

/// Index (0..4, row-major) and value of the first maximum of the window at (oy, ox).
#[inline]
fn window_max(plane: &[f32], w: usize, oy: usize, ox: usize) -> (usize, f32) {
    let base = 2 * oy * w + 2 * ox;
    let vals = [plane[base], plane[base + 1], plane[base + w], plane[base + w + 1]];
    let mut best = (0, vals[0]);
    for (i, &v) in vals.iter().enumerate().skip(1) {
        if v > best.1 || v.is_nan() {
            best = (i, v);
        }
    }
    best
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "vasomim-max-pool2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "max_pool2x2")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let mut dst = vec![0f32; b * c * ho * wo];
        for_rows(&mut dst, ho * wo, |i, out| {
            let plane = &x[i * h * w..(i + 1) * h * w];
            for oy in 0..ho {
                for ox in 0..wo {
                    let v = window_max(plane, w, oy, ox).1;
                    out[oy * wo + ox] = if self.relu { v.max(0.0) } else { v };
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let dx = with_f32(&[arg, grad], "max_pool2x2 backward", |s| {
            let (x, g) = (s[0], s[1]);
            let mut dx = vec![0f32; x.len()];
            for_rows(&mut dx, h * w, |i, d| {
                let plane = &x[i * h * w..(i + 1) * h * w];
                let gp = &g[i * ho * wo..(i + 1) * ho * wo];
                for oy in 0..ho {
                    for ox in 0..wo {
                        let (k, v) = window_max(plane, w, oy, ox);
                        if self.relu && v <= 0.0 {
                            continue;
                        }
                        d[(2 * oy + k / 2) * w + 2 * ox + k % 2] = gp[oy * wo + ox];
                    }
                }
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, &[b, c, h, w], arg.device())?))
    }
}

// ----------------------------------------------------------------- ×2 upsampling (NCHW)

/// Source taps of output position `o` for bilinear ×2, `align_corners = false`
/// (PyTorch: src = max(0, (o + ½)/2 − ½), i1 = min(i0 + 1, n − 1)).
#[inline]
fn bilinear_taps(o: usize, n: usize) -> (usize, usize, f32, f32) {
    let src = ((o as f32 + 0.5) * 0.5 - 0.5).max(0.0);
    let i0 = src as usize;
    let i1 = (i0 + 1).min(n - 1);
    let l1 = src - i0 as f32;
    (i0, i1, 1.0 - l1, l1)
}

/// `F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)`, then ReLU when
/// `relu`; differentiable (candle's `upsample_bilinear2d` has no backward).
pub fn upsample_bilinear2x(x: &Tensor, relu: bool) -> Result<Tensor> {
    if use_cpu_kernel(&[x]) {
        return x.contiguous()?.apply_op1(Upsample { bilinear: true, relu });
    }
    x.dims4()?;
    let y = bilinear2x_axis(&bilinear2x_axis(x, 2)?, 3)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// Bilinear ×2 (`align_corners = false`) along one axis: output 2i is ¼·x[i−1] + ¾·x[i] and
/// 2i+1 is ¾·x[i] + ¼·x[i+1], the border value repeated outside.
fn bilinear2x_axis(x: &Tensor, axis: usize) -> Result<Tensor> {
    let n = x.dim(axis)?;
    let (prev, next) = if n == 1 {
        (x.clone(), x.clone())
    } else {
        (
            Tensor::cat(&[&x.narrow(axis, 0, 1)?, &x.narrow(axis, 0, n - 1)?], axis)?,
            Tensor::cat(&[&x.narrow(axis, 1, n - 1)?, &x.narrow(axis, n - 1, 1)?], axis)?,
        )
    };
    let x34 = x.affine(0.75, 0.0)?;
    let even = (&x34 + prev.affine(0.25, 0.0)?)?;
    let odd = (&x34 + next.affine(0.25, 0.0)?)?;
    interleave(&even, &odd, axis)
}

/// `a` and `b` interleaved along `axis` (a₀ b₀ a₁ b₁ …).
fn interleave(a: &Tensor, b: &Tensor, axis: usize) -> Result<Tensor> {
    let mut dims = a.dims().to_vec();
    dims[axis] *= 2;
    Tensor::stack(&[a, b], axis + 1)?.reshape(dims)
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")`, then ReLU when `relu`.
pub fn upsample_nearest2x(x: &Tensor, relu: bool) -> Result<Tensor> {
    if use_cpu_kernel(&[x]) {
        return x.contiguous()?.apply_op1(Upsample { bilinear: false, relu });
    }
    x.dims4()?;
    let y = interleave(x, x, 2)?;
    let y = interleave(&y, &y, 3)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

struct Upsample {
    bilinear: bool,
    relu: bool,
}

impl Upsample {
    fn taps(&self, o: usize, n: usize) -> (usize, usize, f32, f32) {
        if self.bilinear {
            bilinear_taps(o, n)
        } else {
            (o / 2, o / 2, 1.0, 0.0)
        }
    }
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        if self.bilinear {
            "vasomim-upsample-bilinear2x"
        } else {
            "vasomim-upsample-nearest2x"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "upsample2x")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = (2 * h, 2 * w);
        let xt: Vec<_> = (0..wo).map(|o| self.taps(o, w)).collect();
        let mut dst = vec![0f32; b * c * ho * wo];
        for_rows(&mut dst, ho * wo, |i, out| {
            let plane = &x[i * h * w..(i + 1) * h * w];
            for oy in 0..ho {
                let (y0, y1, a0, a1) = self.taps(oy, h);
                let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
                let row = &mut out[oy * wo..(oy + 1) * wo];
                for (o, &(x0, x1, b0, b1)) in row.iter_mut().zip(&xt) {
                    let v = a0 * (b0 * r0[x0] + b1 * r0[x1]) + a1 * (b0 * r1[x0] + b1 * r1[x1]);
                    *o = if self.relu { v.max(0.0) } else { v };
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let (ho, wo) = (2 * h, 2 * w);
        let xt: Vec<_> = (0..wo).map(|o| self.taps(o, w)).collect();
        let dx = with_f32(&[res, grad], "upsample2x backward", |s| {
            let (y, g) = (s[0], s[1]);
            let mut dx = vec![0f32; b * c * h * w];
            for_rows(&mut dx, h * w, |i, d| {
                let gp = &g[i * ho * wo..(i + 1) * ho * wo];
                let yp = &y[i * ho * wo..(i + 1) * ho * wo];
                for oy in 0..ho {
                    let (y0, y1, a0, a1) = self.taps(oy, h);
                    for (ox, &(x0, x1, b0, b1)) in xt.iter().enumerate() {
                        let k = oy * wo + ox;
                        // ReLU'(0) = 0, as PyTorch's threshold backward.
                        if self.relu && yp[k] <= 0.0 {
                            continue;
                        }
                        let gv = gp[k];
                        d[y0 * w + x0] += a0 * b0 * gv;
                        d[y0 * w + x1] += a0 * b1 * gv;
                        d[y1 * w + x0] += a1 * b0 * gv;
                        d[y1 * w + x1] += a1 * b1 * gv;
                    }
                }
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, &[b, c, h, w], arg.device())?))
    }
}

// ------------------------------------------------------------ shifted-MLP shift (NHWC)

/// The shifted MLP's shift on channels-last x (B, H, W, C): the channels are split as
/// `torch.chunk(x, 5, dim=C)` does (chunks of ⌈C/5⌉, the last smaller) and chunk k moves by
/// k − 2 along H (`axis` 1) or W (`axis` 2), zeros filling in. This equals UNeXt's zero-pad 2 →
/// `torch.roll` → crop, as no value rolls around the padded border into the crop.
pub fn shift_chunks_nhwc(x: &Tensor, axis: usize) -> Result<Tensor> {
    if axis != 1 && axis != 2 {
        candle_core::bail!("shift: axis must be 1 (H) or 2 (W), got {axis}");
    }
    let c = x.dims4()?.3;
    let chunk = c.div_ceil(5).max(1);
    if use_cpu_kernel(&[x]) {
        return x.contiguous()?.apply_op1(Shift { axis, chunk, sign: 1 });
    }
    let n = x.dim(axis)?;
    let parts = (0..c)
        .step_by(chunk)
        .enumerate()
        .map(|(k, start)| {
            let part = x.narrow(3, start, chunk.min(c - start))?;
            let s = k as isize - 2;
            // out[i] = part[i − s] along the axis, zeros where i − s falls outside.
            if s.unsigned_abs() >= n {
                part.zeros_like()
            } else if s >= 0 {
                part.narrow(axis, 0, n - s as usize)?.pad_with_zeros(axis, s as usize, 0)
            } else {
                part.narrow(axis, (-s) as usize, n - (-s) as usize)?.pad_with_zeros(axis, 0, (-s) as usize)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 3)
}

struct Shift {
    axis: usize,
    chunk: usize,
    /// 1 forward, −1 for the backward (the adjoint shifts the other way).
    sign: isize,
}

impl Shift {
    fn run(&self, x: &[f32], dims: (usize, usize, usize, usize)) -> Vec<f32> {
        let (_, h, w, c) = dims;
        let mut dst = vec![0f32; x.len()];
        for_rows(&mut dst, w * c, |r, row| {
            let (bi, y) = (r / h, r % h);
            for xo in 0..w {
                let o = &mut row[xo * c..(xo + 1) * c];
                for (k, start) in (0..c).step_by(self.chunk).enumerate() {
                    let end = (start + self.chunk).min(c);
                    let s = self.sign * (k as isize - 2);
                    let (sy, sx) =
                        if self.axis == 1 { (y as isize - s, xo as isize) } else { (y as isize, xo as isize - s) };
                    if sy < 0 || sy >= h as isize || sx < 0 || sx >= w as isize {
                        continue;
                    }
                    let src = ((bi * h + sy as usize) * w + sx as usize) * c;
                    o[start..end].copy_from_slice(&x[src + start..src + end]);
                }
            }
        });
        dst
    }
}

impl CustomOp1 for Shift {
    fn name(&self) -> &'static str {
        "vasomim-shift-chunks"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "shift")?;
        let dst = self.run(x, l.shape().dims4()?);
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = Shift { axis: self.axis, chunk: self.chunk, sign: -self.sign };
        let dims = arg.dims4()?;
        let dx = with_f32(&[grad], "shift backward", |g| Ok(back.run(g[0], dims)))?;
        Ok(Some(Tensor::from_vec(dx, arg.dims(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::testing::{check, max_diff, rand};

    #[test]
    fn bilinear_matches_candle_forward_and_nearest_backward() {
        let x = rand(7, &[2, 3, 5, 4]);
        let ours = upsample_bilinear2x(&x, false).unwrap();
        let theirs = x.upsample_bilinear2d(10, 8, false).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
        let relu = upsample_bilinear2x(&x, true).unwrap();
        assert!(max_diff(&relu, &theirs.relu().unwrap()) < 1e-6);
        check(
            &[x],
            |t| upsample_nearest2x(&t[0], true).unwrap(),
            |t| t[0].upsample_nearest2d(10, 8).unwrap().relu().unwrap(),
            1e-6,
        );
    }

    #[test]
    fn max_pool_matches_candle() {
        for (h, w) in [(6, 8), (6, 7)] {
            eprintln!("case {h}x{w}");
            let x = rand(8, &[2, 3, h, w]);
            check(
                &[x],
                |t| max_pool2x2(&t[0], true).unwrap(),
                |t| {
                    // max over explicit 2×2 windows (no ties in random data)
                    let (b, c, h, w) = t[0].dims4().unwrap();
                    t[0].narrow(2, 0, h / 2 * 2)
                        .unwrap()
                        .narrow(3, 0, w / 2 * 2)
                        .unwrap()
                        .reshape((b, c, h / 2, 2, w / 2, 2))
                        .unwrap()
                        .max(5)
                        .unwrap()
                        .max(3)
                        .unwrap()
                        .relu()
                        .unwrap()
                },
                1e-6,
            );
        }
    }

    #[test]
    fn shift_matches_pad_roll_crop() {
        // 13 channels: torch.chunk gives 3,3,3,3,1.
        let (b, h, w, c) = (2, 4, 5, 13);
        let x = rand(9, &[b, h, w, c]);
        for axis in [1, 2] {
            let ours = shift_chunks_nhwc(&x, axis).unwrap();
            let mut parts = Vec::new();
            for (k, start) in (0..c).step_by(3).enumerate() {
                let len = 3.min(c - start);
                let chunk = x.narrow(3, start, len).unwrap();
                let n = x.dim(axis).unwrap();
                let padded = chunk.pad_with_zeros(axis, 2, 2).unwrap();
                // roll by s = k − 2: out[i] = in[i − s]
                let s = (k as isize - 2).rem_euclid((n + 4) as isize) as usize;
                let rolled = padded.roll(s as i32, axis).unwrap();
                parts.push(rolled.narrow(axis, 2, n).unwrap());
            }
            let theirs = Tensor::cat(&parts, 3).unwrap();
            assert!(max_diff(&ours, &theirs) == 0.0, "axis {axis}");
        }
    }
}
