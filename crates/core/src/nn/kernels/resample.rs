//! Resampling and shifting ops, forward and backward side by side:
//!
//! - [`max_pool2x2`]: `F.max_pool2d(x, 2, 2)`, optionally fused with a ReLU.
//! - [`upsample_bilinear2x`] / [`upsample_nearest2x`]: ×2 `F.interpolate` (bilinear with
//!   `align_corners = false`, nearest), optionally fused with a ReLU.
//! - [`upsample_relu_pointwise`]: bilinear ×2 → ReLU → 1×1 conv as one op (UNeXt's last
//!   layers), so the full-resolution map before the 1×1 conv is never stored.
//! - [`shift_chunks_nhwc`]: the shifted MLP's channel-chunk shift (UNeXt) on channels-last x.
//!
//! Why not candle's own: `upsample_bilinear2d` has no backward, and `max_pool2d`'s backward
//! splits the gradient between ties (PyTorch gives it to the first maximum). Off the fused CPU
//! path (CUDA, bf16) each op is a composite of differentiable candle primitives
//! (`*_composite`); the max-pool composite gives a tied window's gradient to every maximum.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use rayon::prelude::*;

use super::host::{f32_slice, for_rows, rows_new, use_cpu_kernel, with_f32, zeroed, PAR_MIN};

// --------------------------------------------------------------------- max-pool 2×2 (NCHW)

/// `F.max_pool2d(x, 2, 2)` (odd sizes floor), then ReLU when `relu`. The gradient goes to the
/// first maximum of each window in row-major order, as PyTorch's CPU kernel.
pub fn max_pool2x2(x: &Tensor, relu: bool) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        candle_core::bail!("max_pool2x2: input {h}x{w} is smaller than the window");
    }
    if use_cpu_kernel(&[x]) {
        return x.contiguous()?.apply_op1(MaxPool { relu, argmax: Mutex::new(Vec::new()) });
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
    /// Per output, the window position (0..4, row-major) its gradient goes to, or [`NO_GRAD`]
    /// (ReLU cut it): written by the forward, read by the backward.
    argmax: Mutex<Vec<u8>>,
}

pub(super) const NO_GRAD: u8 = 4;

/// Index (0..4, row-major) and value of the first maximum of a 2×2 window (NaN wins).
#[inline(always)]
pub(super) fn window_max(vals: [f32; 4]) -> (usize, f32) {
    let mut best = (0, vals[0]);
    for (i, &v) in vals.iter().enumerate().skip(1) {
        if v > best.1 || v.is_nan() {
            best = (i, v);
        }
    }
    best
}

/// The 2×2 windows of output row `oy` of a (h, w) plane: `f(ox, window)`, the two input rows
/// read side by side.
#[inline(always)]
pub(super) fn window_row(plane: &[f32], w: usize, oy: usize, mut f: impl FnMut(usize, [f32; 4])) {
    let (r0, r1) = (&plane[2 * oy * w..][..w], &plane[(2 * oy + 1) * w..][..w]);
    for (ox, (a, b)) in r0.chunks_exact(2).zip(r1.chunks_exact(2)).enumerate() {
        f(ox, [a[0], a[1], b[0], b[1]]);
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "vasomim-max-pool2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "max_pool2x2")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let mut dst = zeroed(b * c * ho * wo);
        let mut arg = vec![0u8; dst.len()];
        let n = (ho * wo).max(1);
        let run = |(i, (out, am)): (usize, (&mut [f32], &mut [u8]))| {
            let plane = &x[i * h * w..(i + 1) * h * w];
            for (oy, (row, arow)) in out.chunks_exact_mut(wo).zip(am.chunks_exact_mut(wo)).enumerate() {
                window_row(plane, w, oy, |ox, win| {
                    let (k, v) = window_max(win);
                    let cut = self.relu && v <= 0.0;
                    row[ox] = if self.relu { v.max(0.0) } else { v };
                    arow[ox] = if cut { NO_GRAD } else { k as u8 };
                });
            }
        };
        if x.len() >= PAR_MIN {
            dst.par_chunks_mut(n).zip(arg.par_chunks_mut(n)).enumerate().for_each(run);
        } else {
            dst.chunks_mut(n).zip(arg.chunks_mut(n)).enumerate().for_each(run);
        }
        *self.argmax.lock().map_err(|_| candle_core::Error::msg("max_pool2x2: poisoned"))? = arg;
        Ok((CpuStorage::F32(dst), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let am = self.argmax.lock().map_err(|_| candle_core::Error::msg("max_pool2x2: poisoned"))?;
        if am.len() != b * c * ho * wo {
            candle_core::bail!("max_pool2x2: backward before forward");
        }
        let dx = with_f32(&[grad], "max_pool2x2 backward", |s| Ok(max_pool_grad(s[0], &am, (b * c, h, w))))?;
        Ok(Some(Tensor::from_vec(dx, &[b, c, h, w], arg.device())?))
    }
}

/// The input gradient of a 2×2 max-pool over `planes` (h, w) planes: each output's gradient `g`
/// at the window position `am` recorded (none for [`NO_GRAD`]), zeros elsewhere.
pub(super) fn max_pool_grad(g: &[f32], am: &[u8], (planes, h, w): (usize, usize, usize)) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let dx = rows_new(planes * h * w, h * w, |i, d| {
        let (gp, ap) = (&g[i * ho * wo..(i + 1) * ho * wo], &am[i * ho * wo..(i + 1) * ho * wo]);
        for oy in 0..ho {
            let (d0, d1) = d[2 * oy * w..(2 * oy + 2) * w].split_at_mut(w);
            let (grow, arow) = (&gp[oy * wo..(oy + 1) * wo], &ap[oy * wo..(oy + 1) * wo]);
            for (ox, (&gv, &k)) in grow.iter().zip(arow).enumerate() {
                match k {
                    0 => d0[2 * ox] = gv,
                    1 => d0[2 * ox + 1] = gv,
                    2 => d1[2 * ox] = gv,
                    3 => d1[2 * ox + 1] = gv,
                    _ => {}
                }
            }
        }
    });
    dx
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
        let mut dst = zeroed(b * c * ho * wo);
        // Separable: each input row resampled along x once (h rows of wo), then every output row
        // is a0·row(y0) + a1·row(y1), contiguous. Same arithmetic as the 2-D formula
        // a0·(b0·x00 + b1·x01) + a1·(b0·x10 + b1·x11).
        for_rows(&mut dst, ho * wo, |i, out| {
            let plane = &x[i * h * w..(i + 1) * h * w];
            let mut hr = vec![0f32; h * wo];
            for (r, row) in plane.chunks_exact(w).zip(hr.chunks_exact_mut(wo)) {
                for (o, &(x0, x1, b0, b1)) in row.iter_mut().zip(&xt) {
                    *o = b0 * r[x0] + b1 * r[x1];
                }
            }
            for (oy, row) in out.chunks_exact_mut(wo).enumerate() {
                let (y0, y1, a0, a1) = self.taps(oy, h);
                let (h0, h1) = (&hr[y0 * wo..][..wo], &hr[y1 * wo..][..wo]);
                for ((o, &u), &v) in row.iter_mut().zip(h0).zip(h1) {
                    let y = a0 * u + a1 * v;
                    *o = if self.relu { y.max(0.0) } else { y };
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
            let mut dx = zeroed(b * c * h * w);
            // The adjoint of the separable forward: output rows into h rows of wo (y taps), then
            // each of those into its input row (x taps).
            for_rows(&mut dx, h * w, |i, d| {
                let gp = &g[i * ho * wo..(i + 1) * ho * wo];
                let yp = &y[i * ho * wo..(i + 1) * ho * wo];
                let mut hg = vec![0f32; h * wo];
                for oy in 0..ho {
                    let (y0, y1, a0, a1) = self.taps(oy, h);
                    let (grow, yrow) = (&gp[oy * wo..][..wo], &yp[oy * wo..][..wo]);
                    for (k, (&gv, &yv)) in grow.iter().zip(yrow).enumerate() {
                        // ReLU'(0) = 0, as PyTorch's threshold backward.
                        let gv = if self.relu && yv <= 0.0 { 0.0 } else { gv };
                        hg[y0 * wo + k] += a0 * gv;
                        hg[y1 * wo + k] += a1 * gv;
                    }
                }
                for (drow, hrow) in d.chunks_exact_mut(w).zip(hg.chunks_exact(wo)) {
                    for (&gv, &(x0, x1, b0, b1)) in hrow.iter().zip(&xt) {
                        drow[x0] += b0 * gv;
                        drow[x1] += b1 * gv;
                    }
                }
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, &[b, c, h, w], arg.device())?))
    }
}

// ------------------------------------------- bilinear ×2 → ReLU → 1×1 conv (NCHW), fused

/// `conv2d(relu(upsample_bilinear2x(x)), weight, bias)` for x (B, C, H, W), a 1×1 weight
/// (O, C, 1, 1) and bias (O): y (B, O, 2H, 2W). The upsampled map (C channels at the output
/// size) exists a row at a time, in the forward and again in the backward, which recomputes it.
pub fn upsample_relu_pointwise(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (o, wc, k1, k2) = weight.dims4()?;
    if wc != c || k1 != 1 || k2 != 1 || bias.dims() != [o] {
        candle_core::bail!(
            "upsample_relu_pointwise: weight {:?} / bias {:?} do not fit {c} input channels",
            weight.dims(),
            bias.dims()
        );
    }
    if use_cpu_kernel(&[x, weight, bias]) {
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, UpReluPointwise);
    }
    super::conv::conv2d(&upsample_bilinear2x(x, true)?, weight, Some(bias), 1, 0)
}

struct UpReluPointwise;

/// One image's upsampling, row by row: the input rows resampled along x once (`hr`, C × H rows
/// of Wo), then output row `oy` of every channel into `row` (C × Wo) before the ReLU, with the
/// same arithmetic as [`Upsample`].
struct UpRows {
    c: usize,
    h: usize,
    wo: usize,
    hr: Vec<f32>,
}

impl UpRows {
    fn new(x: &[f32], (c, h, w): (usize, usize, usize)) -> Self {
        let wo = 2 * w;
        let xt: Vec<_> = (0..wo).map(|o| bilinear_taps(o, w)).collect();
        let mut hr = vec![0f32; c * h * wo];
        for (r, row) in x.chunks_exact(w).zip(hr.chunks_exact_mut(wo)) {
            for (o, &(x0, x1, b0, b1)) in row.iter_mut().zip(&xt) {
                *o = b0 * r[x0] + b1 * r[x1];
            }
        }
        UpRows { c, h, wo, hr }
    }

    fn row(&self, oy: usize, row: &mut [f32]) {
        let (y0, y1, a0, a1) = bilinear_taps(oy, self.h);
        for (ci, out) in row.chunks_exact_mut(self.wo).enumerate().take(self.c) {
            let plane = &self.hr[ci * self.h * self.wo..];
            let (u, v) = (&plane[y0 * self.wo..][..self.wo], &plane[y1 * self.wo..][..self.wo]);
            for ((d, &a), &b) in out.iter_mut().zip(u).zip(v) {
                *d = a0 * a + a1 * b;
            }
        }
    }
}

impl CustomOp3 for UpReluPointwise {
    fn name(&self) -> &'static str {
        "vasomim-upsample-relu-pointwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let what = "upsample_relu_pointwise";
        let (x, wt, bias) = (f32_slice(s1, l1, what)?, f32_slice(s2, l2, what)?, f32_slice(s3, l3, what)?);
        let (b, c, h, w) = l1.shape().dims4()?;
        let o = bias.len();
        let (ho, wo) = (2 * h, 2 * w);
        let mut y = vec![0f32; b * o * ho * wo];
        y.par_chunks_mut((o * ho * wo).max(1)).enumerate().for_each(|(bi, yb)| {
            let up = UpRows::new(&x[bi * c * h * w..(bi + 1) * c * h * w], (c, h, w));
            let mut row = vec![0f32; c * wo];
            for oy in 0..ho {
                up.row(oy, &mut row);
                row.iter_mut().for_each(|v| *v = v.max(0.0));
                for (oi, &bv) in bias.iter().enumerate() {
                    let out = &mut yb[(oi * ho + oy) * wo..][..wo];
                    out.fill(bv);
                    for (ci, r) in row.chunks_exact(wo).enumerate() {
                        let wv = wt[oi * c + ci];
                        out.iter_mut().zip(r).for_each(|(d, &v)| *d += wv * v);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, o, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, h, wd) = x.dims4()?;
        let o = bias.dim(0)?;
        let (ho, wo) = (2 * h, 2 * wd);
        let (need_x, need_p) = (x.track_op(), w.track_op() || bias.track_op());
        let xt: Vec<_> = (0..wo).map(|q| bilinear_taps(q, wd)).collect();
        let (dx, partials) = with_f32(&[x, w, grad], "upsample_relu_pointwise backward", |s| {
            let (xv, wv, gv) = (s[0], s[1], s[2]);
            let img = c * h * wd;
            let mut dx = zeroed(if need_x { b * img } else { 0 });
            let mut slots: Vec<&mut [f32]> =
                if need_x { dx.chunks_mut(img).collect() } else { (0..b).map(|_| &mut [][..]).collect() };
            // Per image: [dW | db] in f64 (sums over 4·H·W pixels), and dx.
            let partials: Vec<Vec<f64>> = slots
                .par_iter_mut()
                .enumerate()
                .map(|(bi, dxb)| {
                    let up = UpRows::new(&xv[bi * img..(bi + 1) * img], (c, h, wd));
                    let g = &gv[bi * o * ho * wo..(bi + 1) * o * ho * wo];
                    let mut acc = vec![0f64; if need_p { o * c + o } else { 0 }];
                    let mut row = vec![0f32; c * wo];
                    let mut gr = vec![0f32; wo];
                    // The gradient on the x-resampled rows (adjoint of the y taps), per channel.
                    let mut hg = vec![0f32; if need_x { c * h * wo } else { 0 }];
                    for oy in 0..ho {
                        up.row(oy, &mut row);
                        let (y0, y1, a0, a1) = bilinear_taps(oy, h);
                        for (ci, u) in row.chunks_exact(wo).enumerate() {
                            if need_p {
                                for oi in 0..o {
                                    let grow = &g[(oi * ho + oy) * wo..][..wo];
                                    let dot: f32 = u.iter().zip(grow).map(|(&v, &gg)| v.max(0.0) * gg).sum();
                                    acc[oi * c + ci] += dot as f64;
                                }
                            }
                            if need_x {
                                gr.fill(0.0);
                                for oi in 0..o {
                                    let (wv, grow) = (wv[oi * c + ci], &g[(oi * ho + oy) * wo..][..wo]);
                                    gr.iter_mut().zip(grow).for_each(|(d, &gg)| *d += wv * gg);
                                }
                                let plane = &mut hg[ci * h * wo..][..h * wo];
                                for (k, (&gg, &v)) in gr.iter().zip(u).enumerate() {
                                    // ReLU'(0) = 0, as PyTorch's threshold backward.
                                    let gg = if v > 0.0 { gg } else { 0.0 };
                                    plane[y0 * wo + k] += a0 * gg;
                                    plane[y1 * wo + k] += a1 * gg;
                                }
                            }
                        }
                        if need_p {
                            for oi in 0..o {
                                acc[o * c + oi] += frangi::simd::sum(&g[(oi * ho + oy) * wo..][..wo]) as f64;
                            }
                        }
                    }
                    for (drow, hrow) in dxb.chunks_exact_mut(wd).zip(hg.chunks_exact(wo)) {
                        for (&gg, &(x0, x1, b0, b1)) in hrow.iter().zip(&xt) {
                            drow[x0] += b0 * gg;
                            drow[x1] += b1 * gg;
                        }
                    }
                    acc
                })
                .collect();
            Ok((dx, partials))
        })?;
        let dev = x.device();
        let dx = need_x.then(|| Tensor::from_vec(dx, x.shape(), dev)).transpose()?;
        if !need_p {
            return Ok((dx, None, None));
        }
        // Images summed in order (deterministic).
        let mut total = vec![0f64; o * c + o];
        for p in partials {
            total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
        }
        let f: Vec<f32> = total.iter().map(|&v| v as f32).collect();
        let dw = w.track_op().then(|| Tensor::from_vec(f[..o * c].to_vec(), w.shape(), dev)).transpose()?;
        let db = bias.track_op().then(|| Tensor::from_vec(f[o * c..].to_vec(), bias.shape(), dev)).transpose()?;
        Ok((dx, dw, db))
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
        rows_new(x.len(), w * c, |r, row| {
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
        })
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
    use crate::nn::kernels::host::force_composite;
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
    fn upsample_relu_pointwise_matches_the_three_ops() {
        // Odd sizes, several output channels, and UNeXt's 8 → 1.
        for (c, o, h, w) in [(3, 2, 5, 4), (8, 1, 6, 7)] {
            let x = rand(10, &[2, c, h, w]);
            let wt = rand(11, &[o, c, 1, 1]);
            let bias = rand(12, &[o]);
            check(
                &[x, wt, bias],
                |t| upsample_relu_pointwise(&t[0], &t[1], &t[2]).unwrap(),
                // The composite of candle ops (bilinear from shifted views, candle's conv2d).
                |t| {
                    force_composite(true);
                    let y = upsample_relu_pointwise(&t[0], &t[1], &t[2]).unwrap();
                    force_composite(false);
                    y
                },
                1e-5,
            );
        }
        let err = upsample_relu_pointwise(&rand(1, &[1, 8, 2, 2]), &rand(2, &[1, 4, 1, 1]), &rand(3, &[1]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight [1, 4, 1, 1] / bias [1] do not fit 8 input channels"), "{err}");
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
