//! Convolutions, forward and backward side by side (NCHW unless the name says NHWC):
//!
//! - [`conv2d`]: any kernel / stride / padding, image by image as im2col + gemm with the bias
//!   in the gemm's output, as one op.
//! - [`dwconv3x3_nhwc`]: the depthwise 3×3 conv on channels-last tokens.
//!
//! Why not candle's own: grouped / depthwise `conv2d` runs one conv per group, and `conv2d`'s
//! input gradient goes through a direct `conv_transpose2d` loop. A whole-batch im2col (as
//! before) wrote C·k²·H·W values per image before the product (115 MB for UNeXt-S's last 3×3
//! conv on 8 images at 224²) and kept them for the backward; image by image the columns stay
//! small and the backward recomputes them. Each backward computes only the gradients of the
//! arguments that track: a frozen conv (VasoMIM's segmentor) skips dW and db, the first conv on
//! an image skips dx. Off the fused CPU path (CUDA, bf16) [`conv2d`] is candle's `conv2d`
//! (cuDNN / im2col on CUDA, differentiable) and the depthwise conv a sum of nine shifted,
//! per-channel scaled views.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::host::{
    add_assign, bias_add, f32_slice, for_rows, gemm_f32, matmul_dtype, use_cpu_kernel, with_f32, Mat, PAR_MIN,
};

/// `F.conv2d(x, weight, bias, stride, padding)` (groups 1, dilation 1) for x (B, C, H, W) and
/// weight (O, C, k, k).
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let (o, wc, k, k2) = weight.dims4()?;
    if wc != c || k2 != k {
        candle_core::bail!("conv2d: input has {c} channels, the weight {:?} expects {wc}", weight.dims());
    }
    if stride == 0 {
        candle_core::bail!("conv2d: stride must be at least 1");
    }
    let geo = Geometry { c, h, w, k, s: stride, p: padding };
    geo.out_hw()?;
    if !use_cpu_kernel(&[x, weight]) || bias.is_some_and(|b| !use_cpu_kernel(&[b])) {
        let dt = matmul_dtype(x.dtype());
        // As [`matmul`](super::host::matmul): bf16 on the CPU computed in f32 and rounded back.
        let cpu_bf16 = x.device().is_cpu() && dt == DType::BF16;
        let work = if cpu_bf16 { DType::F32 } else { dt };
        let (xw, ww) = (x.to_dtype(dt)?.to_dtype(work)?, weight.to_dtype(dt)?.to_dtype(work)?);
        let y = xw.conv2d(&ww, padding, stride, 1, 1)?.to_dtype(dt)?;
        return match bias {
            Some(bias) => bias_add(&y, &bias.reshape((1, o, 1, 1))?),
            None => Ok(y),
        };
    }
    // No bias: a zero one that does not track (so it gets no gradient).
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(o, DType::F32, x.device())?,
    };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias, ConvOp(geo))
}

/// One image's convolution geometry: input (C, H, W), a k×k kernel, stride s, zero padding p.
#[derive(Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
}

impl Geometry {
    fn out_hw(&self) -> Result<(usize, usize)> {
        let (k, s, p) = (self.k, self.s, self.p);
        if self.h + 2 * p < k || self.w + 2 * p < k {
            candle_core::bail!("conv2d: input {}x{} smaller than the kernel {k}", self.h, self.w);
        }
        Ok(((self.h + 2 * p - k) / s + 1, (self.w + 2 * p - k) / s + 1))
    }

    /// Rows of the column matrix: C·k·k.
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    /// A 1×1 stride-1 conv without padding reads the image itself as its columns.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }

    /// One image (C, H, W) → its columns (C·k·k, Ho·Wo), zero padding; row `c·k·k + ky·k + kx`
    /// matches the weight layout (O, C, k, k) flattened.
    fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let Geometry { c, h, w, k, s, p } = *self;
        let (ho, wo) = self.out_hw().expect("checked");
        let ol = ho * wo;
        cols.fill(0.0);
        for ci in 0..c {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                let (y_lo, y_hi) = valid_range(h, ho, s, ky, p);
                for kx in 0..k {
                    let (x_lo, x_hi) = valid_range(w, wo, s, kx, p);
                    let row = &mut cols[((ci * k + ky) * k + kx) * ol..][..ol];
                    for oy in y_lo..y_hi {
                        let iy = oy * s + ky - p;
                        let src = &plane[iy * w..(iy + 1) * w];
                        let d = &mut row[oy * wo..(oy + 1) * wo];
                        if s == 1 {
                            let ix0 = x_lo + kx - p;
                            d[x_lo..x_hi].copy_from_slice(&src[ix0..ix0 + (x_hi - x_lo)]);
                        } else {
                            for ox in x_lo..x_hi {
                                d[ox] = src[ox * s + kx - p];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::im2col`]: columns (C·k·k, Ho·Wo) summed back into an image
    /// (C, H, W) that it overwrites.
    fn col2im(&self, cols: &[f32], dx: &mut [f32]) {
        let Geometry { c, h, w, k, s, p } = *self;
        let (ho, wo) = self.out_hw().expect("checked");
        let ol = ho * wo;
        dx.fill(0.0);
        for ci in 0..c {
            let plane = &mut dx[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                let (y_lo, y_hi) = valid_range(h, ho, s, ky, p);
                for kx in 0..k {
                    let (x_lo, x_hi) = valid_range(w, wo, s, kx, p);
                    let row = &cols[((ci * k + ky) * k + kx) * ol..][..ol];
                    for oy in y_lo..y_hi {
                        let iy = oy * s + ky - p;
                        let d = &mut plane[iy * w..(iy + 1) * w];
                        let src = &row[oy * wo..(oy + 1) * wo];
                        for ox in x_lo..x_hi {
                            d[ox * s + kx - p] += src[ox];
                        }
                    }
                }
            }
        }
    }
}

/// `(lo, hi)`: the output positions `o` in `0..n_out` whose input `o·s + k − p` is in `0..n_in`.
fn valid_range(n_in: usize, n_out: usize, s: usize, k: usize, p: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    let hi = if n_in + p > k { ((n_in + p - k - 1) / s + 1).min(n_out) } else { 0 };
    (lo.min(hi), hi)
}

/// Images run in parallel, each gemm on the threads left over (a batch smaller than the pool).
fn gemm_threads(images: usize) -> usize {
    (candle_core::utils::get_num_threads() / images.max(1)).max(1)
}

/// Per-image scratch of a conv: the columns or the padded image, the padded output / gradient,
/// the padded input gradient, one tap's dW.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    out: Vec<f32>,
    dcols: Vec<f32>,
    tap: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

/// The conv of (x, weight, bias) as one op, image by image in one of two ways:
///
/// - *shifted* (stride 1, k > 1): the image zero-padded once, then one gemm per tap (ky, kx) on a
///   view of the padded planes shifted by ky·Wp + kx, accumulated into an output on the padded
///   width Wp (the k − 1 extra columns of each row are dropped). No k²-fold column matrix; the
///   backward is the same with the roles turned (dW per tap from the padded image and the
///   gradient on the padded width, the input gradient accumulated into shifted views).
/// - *columns* (strided convs, 1×1): im2col + one gemm (a 1×1 conv reads the image itself).
struct ConvOp(Geometry);

impl Geometry {
    fn shifted(&self) -> bool {
        self.s == 1 && self.k > 1
    }

    /// (Hp, Wp, plane): the padded size and the padded plane's length (Hp·Wp plus k − 1 zeros so
    /// that every tap's view of Ho·Wp values stays inside it).
    fn padded(&self) -> (usize, usize, usize) {
        let (hp, wp) = (self.h + 2 * self.p, self.w + 2 * self.p);
        (hp, wp, hp * wp + self.k - 1)
    }

    fn pad(&self, x: &[f32], xp: &mut [f32]) {
        let (_, wp, pl) = self.padded();
        xp.fill(0.0);
        for ci in 0..self.c {
            for y in 0..self.h {
                let src = &x[(ci * self.h + y) * self.w..][..self.w];
                xp[ci * pl + (y + self.p) * wp + self.p..][..self.w].copy_from_slice(src);
            }
        }
    }

    /// Offset of tap t = ky·k + kx in a padded plane.
    fn tap_offset(&self, t: usize) -> usize {
        (t / self.k) * self.padded().1 + t % self.k
    }

    /// y_b (O, Ho·Wo) = W · x_b + bias for one image.
    #[allow(clippy::too_many_arguments)]
    fn forward_image(
        &self,
        xb: &[f32],
        wt: &[f32],
        bias: &[f32],
        o: usize,
        yb: &mut [f32],
        sc: &mut Scratch,
        threads: usize,
    ) {
        let (ho, wo) = self.out_hw().expect("checked");
        let (ckk, kk) = (self.ckk(), self.k * self.k);
        if self.shifted() {
            let (_, wp, pl) = self.padded();
            let lp = ho * wp;
            let xp = sized(&mut sc.cols, self.c * pl);
            self.pad(xb, xp);
            let out = sized(&mut sc.out, o * lp);
            for t in 0..kk {
                let off = self.tap_offset(t);
                gemm_f32(o, lp, self.c, out, lp, t > 0, Mat(&wt[t..], ckk, kk), Mat(&xp[off..], pl, 1), threads);
            }
            for (oi, &bv) in bias.iter().enumerate().take(o) {
                for y in 0..ho {
                    let (dst, src) = (&mut yb[(oi * ho + y) * wo..][..wo], &out[oi * lp + y * wp..][..wo]);
                    dst.iter_mut().zip(src).for_each(|(d, v)| *d = v + bv);
                }
            }
            return;
        }
        let ol = ho * wo;
        let cols: &[f32] = if self.is_pointwise() {
            xb
        } else {
            let cols = sized(&mut sc.cols, ckk * ol);
            self.im2col(xb, cols);
            cols
        };
        for (row, &bv) in yb.chunks_mut(ol).zip(bias) {
            row.fill(bv);
        }
        gemm_f32(o, ol, ckk, yb, ol, true, Mat(wt, ckk, 1), Mat(cols, ol, 1), threads);
    }

    /// One image's backward: `acc` [dW | db] += this image's, `dx` (when given) = its input
    /// gradient.
    #[allow(clippy::too_many_arguments)]
    fn backward_image(
        &self,
        xb: &[f32],
        wt: &[f32],
        gb: &[f32],
        o: usize,
        need: (bool, bool),
        acc: &mut [f32],
        dx: Option<&mut [f32]>,
        sc: &mut Scratch,
        threads: usize,
    ) {
        let (need_w, need_b) = need;
        let (ho, wo) = self.out_hw().expect("checked");
        let (c, ckk, kk, ol) = (self.c, self.ckk(), self.k * self.k, ho * wo);
        if need_b {
            for (a, row) in acc[o * ckk..].iter_mut().zip(gb.chunks(ol)) {
                *a += frangi::simd::sum(row);
            }
        }
        if self.shifted() {
            let (_, wp, pl) = self.padded();
            let lp = ho * wp;
            // The gradient on the padded width, zero in the dropped columns.
            let gp = sized(&mut sc.out, o * lp);
            gp.fill(0.0);
            for oi in 0..o {
                for y in 0..ho {
                    gp[oi * lp + y * wp..][..wo].copy_from_slice(&gb[(oi * ho + y) * wo..][..wo]);
                }
            }
            if need_w {
                let xp = sized(&mut sc.cols, c * pl);
                self.pad(xb, xp);
                let tap = sized(&mut sc.tap, o * c);
                for t in 0..kk {
                    // dW[:, :, t] (O, C) = g_pad · shifted(x_pad)ᵀ
                    gemm_f32(o, c, lp, tap, c, false, Mat(gp, lp, 1), Mat(&xp[self.tap_offset(t)..], 1, pl), threads);
                    for oi in 0..o {
                        for ci in 0..c {
                            acc[oi * ckk + ci * kk + t] += tap[oi * c + ci];
                        }
                    }
                }
            }
            if let Some(dx) = dx {
                let dxp = sized(&mut sc.dcols, c * pl);
                dxp.fill(0.0);
                for t in 0..kk {
                    // shifted(dx_pad) += W[:, :, t]ᵀ · g_pad
                    let off = self.tap_offset(t);
                    gemm_f32(c, lp, o, &mut dxp[off..], pl, true, Mat(&wt[t..], kk, ckk), Mat(gp, lp, 1), threads);
                }
                for ci in 0..c {
                    for y in 0..self.h {
                        dx[(ci * self.h + y) * self.w..][..self.w]
                            .copy_from_slice(&dxp[ci * pl + (y + self.p) * wp + self.p..][..self.w]);
                    }
                }
            }
            return;
        }
        if need_w {
            let cb: &[f32] = if self.is_pointwise() {
                xb
            } else {
                let cols = sized(&mut sc.cols, ckk * ol);
                self.im2col(xb, cols);
                cols
            };
            // dW += g_b · cols_bᵀ
            gemm_f32(o, ckk, ol, &mut acc[..o * ckk], ckk, true, Mat(gb, ol, 1), Mat(cb, 1, ol), threads);
        }
        if let Some(dx) = dx {
            // dcols_b = Wᵀ · g_b, then summed back into the image.
            if self.is_pointwise() {
                gemm_f32(ckk, ol, o, dx, ol, false, Mat(wt, 1, ckk), Mat(gb, ol, 1), threads);
            } else {
                let dcols = sized(&mut sc.dcols, ckk * ol);
                gemm_f32(ckk, ol, o, dcols, ol, false, Mat(wt, 1, ckk), Mat(gb, ol, 1), threads);
                self.col2im(dcols, dx);
            }
        }
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "vasomim-conv2d"
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
        let g = self.0;
        let (x, wt, bias) = (f32_slice(s1, l1, "conv2d")?, f32_slice(s2, l2, "conv2d")?, f32_slice(s3, l3, "conv2d")?);
        let b = l1.shape().dims4()?.0;
        let o = l2.shape().dims()[0];
        let (ho, wo) = g.out_hw()?;
        let img = g.c * g.h * g.w;
        let threads = gemm_threads(b);
        let mut y = vec![0f32; b * o * ho * wo];
        y.par_chunks_mut((o * ho * wo).max(1)).enumerate().for_each_init(Scratch::default, |sc, (bi, yb)| {
            g.forward_image(&x[bi * img..(bi + 1) * img], wt, bias, o, yb, sc, threads)
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
        let g = self.0;
        let (need_x, need_w, need_b) = (x.track_op(), w.track_op(), bias.track_op());
        let b = x.dim(0)?;
        let o = w.dim(0)?;
        let (ho, wo) = g.out_hw()?;
        let (ol, ckk, img) = (ho * wo, g.ckk(), g.c * g.h * g.w);
        let threads = gemm_threads(b);
        let acc_len = if need_w || need_b { o * ckk + o } else { 0 };
        let (dx, dwb) = with_f32(&[x, w, grad], "conv2d backward", |s| {
            let (xv, wv, gv) = (s[0], s[1], s[2]);
            let mut dx = vec![0f32; if need_x { b * img } else { 0 }];
            // Images in blocks, one [dW | db] accumulator per block, summed in block order
            // (deterministic for a thread count).
            let per = b.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let blocks: Vec<(usize, &mut [f32])> = if need_x {
                dx.chunks_mut(per * img).enumerate().collect()
            } else {
                (0..b.div_ceil(per)).map(|i| (i, &mut [][..])).collect()
            };
            let partials: Vec<Vec<f32>> = blocks
                .into_par_iter()
                .map(|(blk, dxb)| {
                    let mut acc = vec![0f32; acc_len];
                    let mut sc = Scratch::default();
                    for bi in blk * per..((blk + 1) * per).min(b) {
                        let dxi = need_x.then(|| &mut dxb[(bi - blk * per) * img..][..img]);
                        let (xb, gb) = (&xv[bi * img..(bi + 1) * img], &gv[bi * o * ol..(bi + 1) * o * ol]);
                        g.backward_image(xb, wv, gb, o, (need_w, need_b), &mut acc, dxi, &mut sc, threads);
                    }
                    acc
                })
                .collect();
            let mut dwb = vec![0f32; acc_len];
            for p in partials {
                add_assign(&mut dwb, &p);
            }
            Ok((dx, dwb))
        })?;
        let dev = x.device();
        Ok((
            need_x.then(|| Tensor::from_vec(dx, x.shape(), dev)).transpose()?,
            need_w.then(|| Tensor::from_vec(dwb[..o * ckk].to_vec(), w.shape(), dev)).transpose()?,
            need_b.then(|| Tensor::from_vec(dwb[o * ckk..].to_vec(), bias.shape(), dev)).transpose()?,
        ))
    }
}

// ----------------------------------------------------------------- depthwise 3×3 (NHWC)

/// Depthwise 3×3 conv, stride 1, zero padding 1, on channels-last x (B, H, W, C) with the
/// PyTorch weight (C, 1, 3, 3) and bias (C): `nn.Conv2d(C, C, 3, 1, 1, groups=C)` applied to
/// the tokens of an (H, W) grid without transposing them.
pub fn dwconv3x3_nhwc(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, h, w, c) = x.dims4()?;
    if weight.dims() != [c, 1, 3, 3] || bias.dims() != [c] {
        candle_core::bail!("dwconv3x3: weight {:?} / bias {:?} do not fit {c} channels", weight.dims(), bias.dims());
    }
    if use_cpu_kernel(&[x, weight, bias]) {
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, DwConv);
    }
    // Σ over the taps (dy, dx) of the zero-padded input shifted by (dy, dx), times the tap's
    // per-channel weight; summed in f32 (and so are the gradients), returned in x's dtype.
    let taps = weight.to_dtype(DType::F32)?.reshape((c, 9))?.t()?.contiguous()?;
    let xp = x.to_dtype(DType::F32)?.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut y = bias.to_dtype(DType::F32)?.reshape((1, 1, 1, c))?;
    for t in 0..9 {
        let view = xp.narrow(1, t / 3, h)?.narrow(2, t % 3, w)?;
        y = y.broadcast_add(&view.broadcast_mul(&taps.get(t)?)?)?;
    }
    y.to_dtype(x.dtype())
}

struct DwConv;

/// Tap-major 3×3 depthwise weights, wt[t·C + ch] from w[ch·9 + t], so channel loops are
/// contiguous.
fn tap_major(w: &[f32], c: usize) -> Vec<f32> {
    let mut wt = vec![0f32; 9 * c];
    for ch in 0..c {
        for t in 0..9 {
            wt[t * c + ch] = w[ch * 9 + t];
        }
    }
    wt
}

/// dst[b, y, x] = bias + Σ_(dy, dx) wt[dy·3 + dx]·src[b, y + dir·(dy − 1), x + dir·(dx − 1)]
/// over the taps inside the (h, w) grid, for channels-last (B, H, W, C) data: the depthwise
/// conv with `dir` 1, the gradient of its input (mirrored taps, no bias) with `dir` −1. Taps
/// are added in the same order either way. One task per output row (b, y).
fn dw3x3_rows(
    dst: &mut [f32],
    src: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    (h, wd, c): (usize, usize, usize),
    dir: isize,
) {
    for_rows(dst, wd * c, |r, row| {
        let (bi, y) = (r / h, r % h);
        for xo in 0..wd {
            let o = &mut row[xo * c..(xo + 1) * c];
            if let Some(bias) = bias {
                o.copy_from_slice(bias);
            }
            for dy in 0..3 {
                let iy = y as isize + dir * (dy as isize - 1);
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for dx in 0..3 {
                    let ix = xo as isize + dir * (dx as isize - 1);
                    if ix < 0 || ix >= wd as isize {
                        continue;
                    }
                    let s = &src[((bi * h + iy as usize) * wd + ix as usize) * c..][..c];
                    let k = &wt[(dy * 3 + dx) * c..][..c];
                    for ((ov, &sv), &kv) in o.iter_mut().zip(s).zip(k) {
                        *ov += sv * kv;
                    }
                }
            }
        }
    });
}

impl CustomOp3 for DwConv {
    fn name(&self) -> &'static str {
        "vasomim-dwconv3x3-nhwc"
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
        let x = f32_slice(s1, l1, "dwconv3x3")?;
        let w = f32_slice(s2, l2, "dwconv3x3")?;
        let bias = f32_slice(s3, l3, "dwconv3x3")?;
        let (_, h, wd, c) = l1.shape().dims4()?;
        let mut dst = vec![0f32; x.len()];
        dw3x3_rows(&mut dst, x, &tap_major(w, c), Some(bias), (h, wd, c), 1);
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, wd, c) = x.dims4()?;
        // A frozen conv (VasoMIM's segmentor) needs dx only.
        let params = w.track_op() || bias.track_op();
        let (dx, dwb) = with_f32(&[x, w, grad], "dwconv3x3 backward", |s| {
            let (xv, wv, g) = (s[0], s[1], s[2]);
            // dx[y, x] = Σ_t w[t]·g[y − dy + 1, x − dx + 1]: the forward with mirrored taps.
            let mut dx = vec![0f32; xv.len()];
            dw3x3_rows(&mut dx, g, &tap_major(wv, c), None, (h, wd, c), -1);
            // dw[t] = Σ g[y, x]·x[y + dy − 1, x + dx − 1]; db = Σ g. Per output row, then summed.
            let row_acc = |r: usize| -> Vec<f32> {
                let (bi, y) = (r / h, r % h);
                let mut acc = vec![0f32; 10 * c];
                for xo in 0..wd {
                    let gv = &g[((bi * h + y) * wd + xo) * c..][..c];
                    for (a, &v) in acc[9 * c..].iter_mut().zip(gv) {
                        *a += v;
                    }
                    for dy in 0..3 {
                        let iy = y as isize + dy as isize - 1;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for ddx in 0..3 {
                            let ix = xo as isize + ddx as isize - 1;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            let src = &xv[((bi * h + iy as usize) * wd + ix as usize) * c..][..c];
                            let t = dy * 3 + ddx;
                            for ((a, &sv), &gg) in acc[t * c..(t + 1) * c].iter_mut().zip(src).zip(gv) {
                                *a += sv * gg;
                            }
                        }
                    }
                }
                acc
            };
            let add = |mut a: Vec<f64>, v: Vec<f32>| {
                a.iter_mut().zip(v).for_each(|(x, y)| *x += y as f64);
                a
            };
            if !params {
                return Ok((dx, None));
            }
            let total: Vec<f64> = if xv.len() >= PAR_MIN {
                (0..b * h).into_par_iter().fold(|| vec![0f64; 10 * c], |a, r| add(a, row_acc(r))).reduce(
                    || vec![0f64; 10 * c],
                    |mut a, v| {
                        a.iter_mut().zip(v).for_each(|(x, y)| *x += y);
                        a
                    },
                )
            } else {
                (0..b * h).fold(vec![0f64; 10 * c], |a, r| add(a, row_acc(r)))
            };
            let mut dw = vec![0f32; 9 * c];
            for ch in 0..c {
                for t in 0..9 {
                    dw[ch * 9 + t] = total[t * c + ch] as f32;
                }
            }
            let db: Vec<f32> = total[9 * c..].iter().map(|&v| v as f32).collect();
            Ok((dx, Some((dw, db))))
        })?;
        let dev = x.device();
        let (dw, db) = match dwb {
            Some((dw, db)) => (Some(Tensor::from_vec(dw, &[c, 1, 3, 3], dev)?), Some(Tensor::from_vec(db, &[c], dev)?)),
            None => (None, None),
        };
        let dx = x.track_op().then(|| Tensor::from_vec(dx, &[b, h, wd, c], dev)).transpose()?;
        Ok((dx, dw.filter(|_| w.track_op()), db.filter(|_| bias.track_op())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::testing::{check, rand};

    #[test]
    fn conv2d_matches_candle() {
        for (k, s, p, h, w) in
            [(3, 1, 1, 9, 7), (3, 1, 0, 6, 5), (5, 1, 2, 7, 6), (3, 2, 1, 8, 8), (3, 2, 1, 7, 5), (1, 1, 0, 4, 6)]
        {
            eprintln!("case k{k} s{s} p{p} {h}x{w}");
            let x = rand(1, &[2, 3, h, w]);
            let wt = rand(2, &[5, 3, k, k]);
            let b = rand(3, &[5]);
            check(
                &[x, wt, b],
                |t| conv2d(&t[0], &t[1], Some(&t[2]), s, p).unwrap(),
                |t| {
                    t[0].conv2d(&t[1], p, s, 1, 1).unwrap().broadcast_add(&t[2].reshape((1, 5, 1, 1)).unwrap()).unwrap()
                },
                1e-5,
            );
        }
    }

    #[test]
    fn dwconv_matches_grouped_conv() {
        let (b, h, w, c) = (2, 5, 6, 7);
        let x = rand(4, &[b, h, w, c]);
        let wt = rand(5, &[c, 1, 3, 3]);
        let bias = rand(6, &[c]);
        check(
            &[x, wt, bias],
            |t| dwconv3x3_nhwc(&t[0], &t[1], &t[2]).unwrap(),
            |t| {
                let nchw = t[0].permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
                nchw.conv2d(&t[1], 1, 1, 1, c)
                    .unwrap()
                    .broadcast_add(&t[2].reshape((1, c, 1, 1)).unwrap())
                    .unwrap()
                    .permute((0, 2, 3, 1))
                    .unwrap()
                    .contiguous()
                    .unwrap()
            },
            1e-5,
        );
    }
}
