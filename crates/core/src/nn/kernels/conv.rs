//! Convolutions, forward and backward side by side (NCHW unless the name says NHWC):
//!
//! - [`conv2d`]: any kernel / stride / padding, image by image, as one op: narrow stride-1 3×3
//!   convs as a direct AVX-512 loop (forward and input gradient), the others as gemms (one per
//!   tap on the padded image for stride 1, im2col otherwise) with the bias in the gemm's output.
//! - [`dwconv3x3_nhwc`]: the depthwise 3×3 conv on channels-last tokens.
//!
//! Why not candle's own: grouped / depthwise `conv2d` runs one conv per group, and `conv2d`'s
//! input gradient goes through a direct `conv_transpose2d` loop. A whole-batch im2col (as
//! before) wrote C·k²·H·W values per image before the product (115 MB for UNeXt-S's last 3×3
//! conv on 8 images at 224²) and kept them for the backward; image by image the columns stay
//! small and the backward recomputes them. Each backward computes only the gradients of the
//! arguments that track: a frozen conv (VasoMIM's segmentor) skips dW and db, the first conv on
//! an image skips dx. Off the fused CPU path (CUDA, bf16) [`conv2d`] is candle's `conv2d`
//! (im2col + cuBLAS on CUDA; its backward patched in `vendor/candle-core`, see `VASOMIM.md`
//! there), and the depthwise conv our CUDA kernel (`cuda::segmentor`) or else a sum of nine
//! shifted, per-channel scaled views.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::host::{
    add_assign, bias_add, f32_slice, for_rows, gemm_f32, matmul_dtype, use_cpu_kernel, with_f32, zeroed, Mat, PAR_MIN,
};
use super::resample::{max_pool2x2, max_pool_grad, window_max, window_row, NO_GRAD};

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

/// Columns of the direct 3×3 conv's register tile (one AVX-512 vector).
const LANES: usize = 16;

/// Whether [`Geometry::direct`] may choose the direct kernel (benchmarks turn it off to time the
/// gemm path).
static DIRECT_ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the direct 3×3 kernel on (the default) or off, process-wide: for benchmarks.
pub fn set_direct_conv(enabled: bool) {
    DIRECT_ENABLED.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Largest C·O run by the direct 3×3 kernel; wider convs go to the gemm, whose packed tiles reuse
/// the input better. On the 2-core AVX-512 machine of docs/MODEL.md the direct kernel took
/// 0.55–0.95× the gemms' time, forward and input gradient, on every UNeXt-S conv up to 32→64
/// (C·O = 2048; `cargo run --release -p vasomim-core --example bench_conv`); at 128→64
/// (C·O = 8192) an earlier A/B found no gain, so that conv stays on the gemms.
const DIRECT_MAX_CO: usize = 4096;

/// Output channels per register tile of [`direct3x3`]: tiles of 8, then what is left in tiles
/// of 4, 3 or 1 (UNeXt's widths are multiples of 8; an input gradient has 3 channels).
fn direct_tile(left: usize) -> usize {
    match left {
        r if r >= 8 => 8,
        r if r >= 4 => 4,
        3 => 3,
        _ => 1,
    }
}

/// The weight (O, C, 3, 3) in [`direct3x3`]'s order: per tile of `ob` output channels from `o0`,
/// at `o0·C·9`, the `ob` weights of each (c, tap) side by side.
fn pack_direct(wt: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; o * c * 9];
    let mut o0 = 0;
    while o0 < o {
        let ob = direct_tile(o - o0);
        let tile = &mut out[o0 * c * 9..][..ob * c * 9];
        for j in 0..ob {
            for ci in 0..c {
                for t in 0..9 {
                    tile[(ci * 9 + t) * ob + j] = wt[((o0 + j) * c + ci) * 9 + t];
                }
            }
        }
        o0 += ob;
    }
    out
}

/// A stride-1 3×3 conv of one image as a direct loop: y (O, Ho, Wo) from the padded planes xp
/// (C planes of `pl` values with row stride `wp`, then at least `wp + LANES` spare values), the
/// weight packed by [`pack_direct`] and the bias (O); `d` = [O, C, Ho, Wo, Wp, pl]. For the
/// narrow convs of UNeXt's full-resolution stages, where a gemm per tap (K = C) streams the whole
/// output through memory nine times. AVX-512 only ([`Geometry::direct`] checks the CPU).
fn direct3x3(y: &mut [f32], xp: &[f32], wk: &[f32], bias: &[f32], d: [usize; 6]) {
    let [o, c, ho, wo, wp, pl] = d;
    if o == 0 || c == 0 || ho == 0 || wo == 0 {
        y.fill(0.0);
        return;
    }
    let last_x0 = (wo - 1) / LANES * LANES;
    assert!(
        y.len() >= o * ho * wo
            && wk.len() >= o * c * 9
            && bias.len() >= o
            && xp.len() >= (c - 1) * pl + (ho + 1) * wp + last_x0 + 2 + LANES
            && wo + 2 <= wp,
        "direct3x3: buffers too small"
    );
    #[cfg(target_arch = "x86_64")]
    if frangi::simd::level() == 2 {
        let mut o0 = 0;
        while o0 < o {
            let ob = direct_tile(o - o0);
            let (w, bv) = (&wk[o0 * c * 9..], &bias[o0..]);
            let yt = &mut y[o0 * ho * wo..];
            // SAFETY: AVX-512 is present (level 2) and the assert above bounds every access.
            unsafe {
                match ob {
                    8 => avx512::tile::<8>(yt, xp, w, bv, d),
                    4 => avx512::tile::<4>(yt, xp, w, bv, d),
                    3 => avx512::tile::<3>(yt, xp, w, bv, d),
                    _ => avx512::tile::<1>(yt, xp, w, bv, d),
                }
            }
            o0 += ob;
        }
        return;
    }
    unreachable!("direct3x3 needs AVX-512");
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// OB output channels: per output row and LANES columns, OB accumulators in registers, the
    /// taps added in (c, ky, kx) order as fused multiply-adds onto the bias.
    ///
    /// # Safety
    /// AVX-512F must be present; the buffers must hold what [`super::direct3x3`] asserts.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn tile<const OB: usize>(y: &mut [f32], xp: &[f32], wk: &[f32], bias: &[f32], d: [usize; 6]) {
        let [_, c, ho, wo, wp, pl] = d;
        let (y, xp, wk) = (y.as_mut_ptr(), xp.as_ptr(), wk.as_ptr());
        let mut b0 = [_mm512_setzero_ps(); OB];
        for (j, b) in b0.iter_mut().enumerate() {
            *b = _mm512_set1_ps(bias[j]);
        }
        for oy in 0..ho {
            for x0 in (0..wo).step_by(LANES) {
                let mut acc = b0;
                for ci in 0..c {
                    let src = xp.add(ci * pl + oy * wp + x0);
                    let wc = wk.add(ci * 9 * OB);
                    for t in 0..9 {
                        let s = _mm512_loadu_ps(src.add(t / 3 * wp + t % 3));
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(*wc.add(t * OB + j)), s, *a);
                        }
                    }
                }
                let n = (wo - x0).min(LANES);
                let mask: __mmask16 = if n == LANES { !0 } else { (1u16 << n) - 1 };
                for (j, a) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(y.add((j * ho + oy) * wo + x0), mask, *a);
                }
            }
        }
    }
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

    /// A narrow stride-1 3×3 conv on one thread runs as [`direct3x3`] (forward and input
    /// gradient); the rest as gemms.
    fn direct(&self, o: usize, threads: usize) -> bool {
        self.k == 3
            && self.s == 1
            && self.p <= 2
            && threads == 1
            && self.c * o <= DIRECT_MAX_CO
            && frangi::simd::level() == 2
            && DIRECT_ENABLED.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The weight of a [`Self::direct`] conv's input gradient, packed: transposed to (C, O) and
    /// flipped in both axes.
    fn direct_grad_weight(&self, wt: &[f32], o: usize) -> Vec<f32> {
        let c = self.c;
        let mut wf = vec![0f32; c * o * 9];
        for oi in 0..o {
            for ci in 0..c {
                for tap in 0..9 {
                    wf[(ci * o + oi) * 9 + 8 - tap] = wt[(oi * c + ci) * 9 + tap];
                }
            }
        }
        pack_direct(&wf, c, o)
    }

    /// The input gradient of a [`Self::direct`] conv: the direct conv of the gradient padded by
    /// 2 − p with [`Self::direct_grad_weight`], into `dx` (C, H, W), which it overwrites.
    fn direct_input_grad(&self, gb: &[f32], wf: &[f32], o: usize, dx: &mut [f32], sc: &mut Scratch) {
        self.direct_input_grad_with(wf, o, dx, sc, |t, gp| t.pad(gb, gp));
    }

    /// [`Self::direct_input_grad`] with the padded gradient written by `fill(t, gp)`: `t` the
    /// gradient's padded geometry, `gp` its buffer (any contents on entry; `fill` writes all of
    /// it, zeros included).
    fn direct_input_grad_with(
        &self,
        wf: &[f32],
        o: usize,
        dx: &mut [f32],
        sc: &mut Scratch,
        fill: impl FnOnce(&Geometry, &mut [f32]),
    ) {
        let (ho, wo) = self.out_hw().expect("checked");
        let t = Geometry { c: o, h: ho, w: wo, k: 3, s: 1, p: 2 - self.p };
        let (_, wp, pl) = t.padded();
        let gp = sized(&mut sc.out, o * pl + wp + LANES);
        fill(&t, gp);
        let zero = sized(&mut sc.dcols, self.c);
        zero.fill(0.0);
        direct3x3(dx, gp, wf, zero, [self.c, o, self.h, self.w, wp, pl]);
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
        packed: Option<&[f32]>,
        bias: &[f32],
        o: usize,
        yb: &mut [f32],
        sc: &mut Scratch,
        threads: usize,
    ) {
        let (ho, wo) = self.out_hw().expect("checked");
        let (ckk, kk) = (self.ckk(), self.k * self.k);
        if let Some(wk) = packed {
            let (_, wp, pl) = self.padded();
            let xp = sized(&mut sc.cols, self.c * pl + wp + LANES);
            self.pad(xb, xp);
            direct3x3(yb, xp, wk, bias, [o, self.c, ho, wo, wp, pl]);
            return;
        }
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
    /// gradient (through [`Self::direct_input_grad`] with `flipped`, the packed gradient weight,
    /// when given).
    #[allow(clippy::too_many_arguments)]
    fn backward_image(
        &self,
        xb: &[f32],
        wt: &[f32],
        flipped: Option<&[f32]>,
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
        let dx = match (dx, flipped) {
            (Some(dx), Some(wf)) => {
                self.direct_input_grad(gb, wf, o, dx, sc);
                None
            }
            (dx, _) => dx,
        };
        if self.shifted() {
            if !need_w && dx.is_none() {
                return;
            }
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
        let packed = g.direct(o, threads).then(|| pack_direct(wt, o, g.c));
        let mut y = zeroed(b * o * ho * wo);
        y.par_chunks_mut((o * ho * wo).max(1)).enumerate().for_each_init(Scratch::default, |sc, (bi, yb)| {
            g.forward_image(&x[bi * img..(bi + 1) * img], wt, packed.as_deref(), bias, o, yb, sc, threads)
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
            let flipped = (need_x && g.direct(o, threads)).then(|| g.direct_grad_weight(wv, o));
            let mut dx = zeroed(if need_x { b * img } else { 0 });
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
                        g.backward_image(
                            xb,
                            wv,
                            flipped.as_deref(),
                            gb,
                            o,
                            (need_w, need_b),
                            &mut acc,
                            dxi,
                            &mut sc,
                            threads,
                        );
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

// --------------------------------------------------- 3×3 conv → max-pool 2×2 → ReLU, fused

/// `max_pool2x2(conv2d(x, weight, bias, 1, 1), relu = true)` for a 3×3 weight (O, C, 3, 3):
/// UNeXt-S's encoder stages with the BatchNorm folded in (eval mode). Where the conv runs as the
/// direct kernel, the forward is one op that convolves two rows at a time and pools them, so the
/// full-resolution conv output is never stored; the backward rebuilds its gradient from the
/// pooling's argmax and goes through the conv's backward. Elsewhere, the two ops.
pub fn conv3x3_max_pool_relu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let o = weight.dim(0)?;
    let geo = Geometry { c, h, w, k: 3, s: 1, p: 1 };
    let fused = weight.dims() == [o, c, 3, 3]
        && bias.dims() == [o]
        && h >= 2
        && w >= 2
        && use_cpu_kernel(&[x, weight, bias])
        && geo.direct(o, gemm_threads(b));
    if fused {
        let op = ConvPoolOp { geo, argmax: std::sync::Mutex::new(Vec::new()) };
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op);
    }
    max_pool2x2(&conv2d(x, weight, Some(bias), 1, 1)?, true)
}

struct ConvPoolOp {
    geo: Geometry,
    /// Per output, the window position its gradient goes to ([`NO_GRAD`]: the ReLU cut it).
    argmax: std::sync::Mutex<Vec<u8>>,
}

impl CustomOp3 for ConvPoolOp {
    fn name(&self) -> &'static str {
        "vasomim-conv3x3-max-pool-relu"
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
        let g = self.geo;
        let what = "conv3x3_max_pool_relu";
        let (x, wt, bias) = (f32_slice(s1, l1, what)?, f32_slice(s2, l2, what)?, f32_slice(s3, l3, what)?);
        let b = l1.shape().dims4()?.0;
        let o = bias.len();
        let (w, img) = (g.w, g.c * g.h * g.w);
        let (ho, wo) = (g.h / 2, g.w / 2);
        let wk = pack_direct(wt, o, g.c);
        let (_, wp, pl) = g.padded();
        let mut y = zeroed(b * o * ho * wo);
        let mut arg = vec![0u8; y.len()];
        let n = (o * ho * wo).max(1);
        y.par_chunks_mut(n).zip(arg.par_chunks_mut(n)).enumerate().for_each_init(
            Scratch::default,
            |sc, (bi, (yb, ab))| {
                let xp = sized(&mut sc.cols, g.c * pl + wp + LANES);
                g.pad(&x[bi * img..(bi + 1) * img], xp);
                let rows = sized(&mut sc.out, o * 2 * w);
                for py in 0..ho {
                    // Conv output rows 2·py and 2·py + 1, then their 2×2 windows.
                    direct3x3(rows, &xp[2 * py * wp..], &wk, bias, [o, g.c, 2, w, wp, pl]);
                    for oi in 0..o {
                        let (out, am) = (&mut yb[(oi * ho + py) * wo..][..wo], &mut ab[(oi * ho + py) * wo..][..wo]);
                        window_row(&rows[oi * 2 * w..][..2 * w], w, 0, |ox, win| {
                            let (k, v) = window_max(win);
                            out[ox] = v.max(0.0);
                            am[ox] = if v <= 0.0 { NO_GRAD } else { k as u8 };
                        });
                    }
                }
            },
        );
        *self.argmax.lock().map_err(|_| candle_core::Error::msg("conv3x3_max_pool_relu: poisoned"))? = arg;
        Ok((CpuStorage::F32(y), Shape::from((b, o, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geo;
        let (b, o) = (x.dim(0)?, w.dim(0)?);
        let (ho, wo) = (g.h / 2, g.w / 2);
        let am = self.argmax.lock().map_err(|_| candle_core::Error::msg("conv3x3_max_pool_relu: poisoned"))?;
        if am.len() != b * o * ho * wo {
            candle_core::bail!("conv3x3_max_pool_relu: backward before forward");
        }
        if w.track_op() || bias.track_op() {
            // Weight gradients too: the conv's gradient at full resolution, then the conv's backward.
            let gconv = with_f32(&[grad], "conv3x3_max_pool_relu backward", |s| {
                Ok(max_pool_grad(s[0], &am, (b * o, g.h, g.w)))
            })?;
            let gconv = Tensor::from_vec(gconv, (b, o, g.h, g.w), x.device())?;
            return ConvOp(g).bwd(x, w, bias, res, &gconv);
        }
        if !x.track_op() {
            return Ok((None, None, None));
        }
        // The input gradient only (a frozen conv): each pooled gradient goes straight to its
        // argmax in the padded buffer the direct input-gradient conv reads.
        let img = g.c * g.h * g.w;
        let dx = with_f32(&[w, grad], "conv3x3_max_pool_relu backward", |s| {
            let (wv, gv) = (s[0], s[1]);
            let flipped = g.direct_grad_weight(wv, o);
            let mut dx = zeroed(b * img);
            dx.par_chunks_mut(img.max(1)).enumerate().for_each_init(Scratch::default, |sc, (bi, dxb)| {
                g.direct_input_grad_with(&flipped, o, dxb, sc, |t, gp| {
                    let (_, wp, pl) = t.padded();
                    gp.fill(0.0);
                    for oi in 0..o {
                        let at = (bi * o + oi) * ho * wo;
                        let (gs, ams) = (&gv[at..at + ho * wo], &am[at..at + ho * wo]);
                        let plane = &mut gp[oi * pl..];
                        for (i, (&gg, &k)) in gs.iter().zip(ams).enumerate() {
                            if k != NO_GRAD {
                                let (y, x) = (2 * (i / wo) + k as usize / 2, 2 * (i % wo) + k as usize % 2);
                                plane[(y + t.p) * wp + x + t.p] = gg;
                            }
                        }
                    }
                });
            });
            Ok(dx)
        })?;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), None, None))
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
    #[cfg(feature = "cuda")]
    if super::cuda::applies(&[x]) {
        return super::cuda::segmentor::dwconv3x3_nhwc(x, weight, bias);
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
        let mut dst = zeroed(x.len());
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
            let mut dx = zeroed(xv.len());
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

    /// The direct 3×3 path against candle: output tiles of 8 + 3 and of 4 + 1, widths with a
    /// partial 16-lane tail, odd heights, paddings 0 to 2, and 3- or 1-channel input gradients.
    /// The batch is large enough that each image runs on one thread (the direct path's
    /// condition); on a CPU without AVX-512 this checks the gemm path instead.
    #[test]
    fn direct_conv_matches_candle() {
        let b = 2 * candle_core::utils::get_num_threads().max(1);
        for (c, o, h, w, p) in
            [(3, 11, 9, 21, 1), (5, 8, 7, 16, 0), (2, 5, 6, 35, 2), (8, 3, 5, 17, 1), (4, 1, 3, 40, 1)]
        {
            eprintln!("case c{c} o{o} {h}x{w} p{p}");
            let x = rand(11, &[b, c, h, w]);
            let wt = rand(12, &[o, c, 3, 3]);
            let bias = rand(13, &[o]);
            check(
                &[x, wt, bias],
                |t| conv2d(&t[0], &t[1], Some(&t[2]), 1, p).unwrap(),
                |t| {
                    t[0].conv2d(&t[1], p, 1, 1, 1).unwrap().broadcast_add(&t[2].reshape((1, o, 1, 1)).unwrap()).unwrap()
                },
                // dW sums b·H·W ≈ 10³ products of O(1) values.
                5e-5,
            );
        }
    }

    /// The fused conv → max-pool → ReLU against the two ops, forward and every gradient, on even
    /// and odd sizes (the batch makes each image run on one thread, the fused path's condition).
    #[test]
    fn conv_max_pool_relu_matches_the_two_ops() {
        let b = 2 * candle_core::utils::get_num_threads().max(1);
        for (c, o, h, w) in [(3, 8, 8, 34), (5, 3, 7, 9)] {
            eprintln!("case c{c} o{o} {h}x{w}");
            let x = rand(31, &[b, c, h, w]);
            let wt = rand(32, &[o, c, 3, 3]);
            let bias = rand(33, &[o]);
            check(
                &[x, wt, bias],
                |t| conv3x3_max_pool_relu(&t[0], &t[1], &t[2]).unwrap(),
                |t| max_pool2x2(&conv2d(&t[0], &t[1], Some(&t[2]), 1, 1).unwrap(), true).unwrap(),
                5e-5,
            );
        }
    }

    /// A frozen weight (VasoMIM's segmentor): the input-gradient-only backward, which scatters the
    /// pooled gradient straight into the padded buffer, against the two ops; no weight gradient.
    #[test]
    fn frozen_conv_max_pool_relu_input_gradient_matches_the_two_ops() {
        let b = 2 * candle_core::utils::get_num_threads().max(1);
        for (c, o, h, w) in [(3, 8, 8, 34), (5, 3, 7, 9)] {
            let x = candle_core::Var::from_tensor(&rand(34, &[b, c, h, w])).unwrap();
            let (wt, bias) = (rand(35, &[o, c, 3, 3]), rand(36, &[o]));
            let r = rand(37, &[b, o, h / 2, w / 2]);
            let grad = |y: Tensor| {
                let gs = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                assert!(gs.get(&wt).is_none() && gs.get(&bias).is_none(), "a frozen weight got a gradient");
                gs.get(x.as_tensor()).unwrap().clone()
            };
            let ours = grad(conv3x3_max_pool_relu(x.as_tensor(), &wt, &bias).unwrap());
            let theirs = grad(max_pool2x2(&conv2d(x.as_tensor(), &wt, Some(&bias), 1, 1).unwrap(), true).unwrap());
            let d = crate::nn::kernels::testing::max_diff(&ours, &theirs);
            assert!(d <= 1e-5, "c{c} o{o} {h}x{w}: input gradient differs by {d}");
        }
    }

    /// One image through the direct kernel and through the per-tap gemms: the same values (to
    /// rounding), forward and input gradient.
    #[test]
    fn direct_and_gemm_paths_agree() {
        if frangi::simd::level() < 2 {
            eprintln!("skipped: the direct 3×3 kernel needs AVX-512");
            return;
        }
        let (c, o, h, w) = (6, 13, 11, 37);
        let g = Geometry { c, h, w, k: 3, s: 1, p: 1 };
        assert!(g.direct(o, 1));
        let data = |seed, n| rand(seed, &[n]).to_vec1::<f32>().unwrap();
        let (x, wt, bias, gy) = (data(21, c * h * w), data(22, o * c * 9), data(23, o), data(24, o * h * w));
        let packed = pack_direct(&wt, o, c);
        let (mut y_direct, mut y_gemm) = (vec![0f32; o * h * w], vec![0f32; o * h * w]);
        g.forward_image(&x, &wt, Some(&packed), &bias, o, &mut y_direct, &mut Scratch::default(), 1);
        g.forward_image(&x, &wt, None, &bias, o, &mut y_gemm, &mut Scratch::default(), 1);
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(u, v)| (u - v).abs()).fold(0f32, f32::max);
        assert!(diff(&y_direct, &y_gemm) < 1e-5, "forward differs by {}", diff(&y_direct, &y_gemm));
        let flipped = g.direct_grad_weight(&wt, o);
        let (mut dx_direct, mut dx_gemm) = (vec![7f32; c * h * w], vec![7f32; c * h * w]);
        let mut acc = [];
        g.backward_image(
            &x,
            &wt,
            Some(&flipped),
            &gy,
            o,
            (false, false),
            &mut acc,
            Some(&mut dx_direct),
            &mut Scratch::default(),
            1,
        );
        g.backward_image(
            &x,
            &wt,
            None,
            &gy,
            o,
            (false, false),
            &mut acc,
            Some(&mut dx_gemm),
            &mut Scratch::default(),
            1,
        );
        assert!(diff(&dx_direct, &dx_gemm) < 1e-5, "input gradient differs by {}", diff(&dx_direct, &dx_gemm));
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
