//! Differentiable LayerNorm, last-dim softmax and exact GELU.
//!
//! candle 0.11's fused `layer_norm` / `softmax_last_dim` have no backward (training silently
//! stops upstream of them) and its composite versions are slow on the CPU. These are `CustomOp`s
//! with fused CPU forward *and* backward kernels. On other devices, or for non-f32 / strided
//! input, the same maths is composed from differentiable candle primitives, so every function
//! works on any `Device`.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, D,
};
use std::sync::Mutex;

use rayon::prelude::*;

/// Rows below this many elements in total are processed on one thread: spawning costs more.
const PAR_MIN: usize = 1 << 14;

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let s = match storage {
        CpuStorage::F32(s) => s,
        _ => candle_core::bail!("{what}: expected f32 storage"),
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 data of CPU tensors (copies only when strided).
fn with_f32<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (g, l) in guards.iter() {
        match &**g {
            Storage::Cpu(s) => slices.push(f32_slice(s, l, "with_f32")?),
            _ => candle_core::bail!("with_f32: CPU tensors only"),
        }
    }
    f(&slices)
}

fn use_cpu_kernel(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

fn par_rows<F>(dst: &mut [f32], width: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        dst.chunks_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    }
}

// ---------------------------------------------------------------- LayerNorm

/// LayerNorm over the last dimension: (x − μ)/sqrt(σ²_biased + eps)·w + b, as `torch.nn.LayerNorm`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if use_cpu_kernel(&[x, w, b]) {
        let x = x.contiguous()?;
        x.apply_op3(w, b, LayerNormOp { eps: eps as f32 })
    } else {
        layer_norm_composite(x, w, b, eps)
    }
}

/// The reference (and non-CPU) LayerNorm, from differentiable primitives.
pub fn layer_norm_composite(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mu = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(w)?.broadcast_add(b)
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "vasomim-layer-norm"
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
        let x = f32_slice(s1, l1, "layer_norm x")?;
        let w = f32_slice(s2, l2, "layer_norm weight")?;
        let b = f32_slice(s3, l3, "layer_norm bias")?;
        let n = *l1.dims().last().unwrap_or(&1);
        if w.len() != n || b.len() != n {
            candle_core::bail!(
                "layer_norm: last dim {n} but weight {} / bias {}",
                w.len(),
                b.len()
            );
        }
        let eps = self.eps;
        let mut dst = vec![0f32; x.len()];
        par_rows(&mut dst, n, |i, out| {
            let row = &x[i * n..(i + 1) * n];
            let (mu, rstd) = moments(row, eps);
            for j in 0..n {
                out[j] = (row[j] - mu) * rstd * w[j] + b[j];
            }
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(D::Minus1)?;
        let eps = self.eps;
        let (dx, dw, db) = with_f32(&[x, w, grad], |s| {
            let (x, w, g) = (s[0], s[1], s[2]);
            let rows = x.len() / n;
            let mut dx = vec![0f32; x.len()];
            // dx rows are independent; dw/db are reduced over rows in per-thread partials.
            let chunk_rows = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
                .par_chunks_mut(chunk_rows * n)
                .enumerate()
                .map(|(c, dxc)| {
                    let mut dw = vec![0f32; n];
                    let mut db = vec![0f32; n];
                    for (r, dxr) in dxc.chunks_mut(n).enumerate() {
                        let i = c * chunk_rows + r;
                        let xr = &x[i * n..(i + 1) * n];
                        let gr = &g[i * n..(i + 1) * n];
                        let (mu, rstd) = moments(xr, eps);
                        let (mut s_gw, mut s_gwx) = (0f32, 0f32);
                        for j in 0..n {
                            let xh = (xr[j] - mu) * rstd;
                            let gw = gr[j] * w[j];
                            s_gw += gw;
                            s_gwx += gw * xh;
                            dw[j] += gr[j] * xh;
                            db[j] += gr[j];
                        }
                        let (m_gw, m_gwx) = (s_gw / n as f32, s_gwx / n as f32);
                        for j in 0..n {
                            let xh = (xr[j] - mu) * rstd;
                            dxr[j] = rstd * (gr[j] * w[j] - m_gw - xh * m_gwx);
                        }
                    }
                    (dw, db)
                })
                .collect();
            let mut dw = vec![0f32; n];
            let mut db = vec![0f32; n];
            for (pw, pb) in partials {
                for j in 0..n {
                    dw[j] += pw[j];
                    db[j] += pb[j];
                }
            }
            Ok((dx, dw, db))
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

/// Mean and 1/sqrt(biased variance + eps) of a row: two passes (no E[x²] − E[x]² cancellation),
/// each summed in 8 f32 lanes so the loop vectorises and rounding error stays ~n/8 terms deep.
#[inline]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    #[inline(always)]
    fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
        let mut acc = [0f32; 8];
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..8 {
                acc[l] += f(c[l]);
            }
        }
        acc.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
    }
    let n = row.len() as f32;
    let mu = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mu) * (v - mu)) / n;
    (mu, 1.0 / (var + eps).sqrt())
}

// ---------------------------------------------------------------- bias add

/// `y + b` with `b` broadcast over the rows of the last dimension (a Linear's bias). candle's
/// broadcast add is single-threaded and its backward reduces over the leading dims with a slow
/// strided reduction (~10 % of a training step); this kernel sums the bias gradient by rows in
/// per-thread partials.
pub fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(&[y, b]) {
        y.contiguous()?.apply_op2(b, BiasAddOp)
    } else {
        y.broadcast_add(b)
    }
}

struct BiasAddOp;

impl CustomOp2 for BiasAddOp {
    fn name(&self) -> &'static str {
        "vasomim-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "bias_add y")?;
        let b = f32_slice(s2, l2, "bias_add bias")?;
        let n = *l1.dims().last().unwrap_or(&1);
        if b.len() != n {
            candle_core::bail!("bias_add: last dim {n} but bias has {}", b.len());
        }
        let mut dst = vec![0f32; y.len()];
        par_rows(&mut dst, n, |i, out| {
            let row = &y[i * n..(i + 1) * n];
            for j in 0..n {
                out[j] = row[j] + b[j];
            }
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let db = with_f32(&[grad], |s| {
            let g = s[0];
            let rows = g.len() / n;
            let chunk_rows = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let partials: Vec<Vec<f32>> = g
                .par_chunks(chunk_rows * n)
                .map(|c| {
                    let mut acc = vec![0f32; n];
                    for r in c.chunks(n) {
                        for j in 0..n {
                            acc[j] += r[j];
                        }
                    }
                    acc
                })
                .collect();
            let mut db = vec![0f32; n];
            for p in partials {
                for j in 0..n {
                    db[j] += p[j];
                }
            }
            Ok(db)
        })?;
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

// ---------------------------------------------------------------- softmax

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    softmax_scaled(x, 1.0)
}

/// softmax(scale·x) over the last dimension. Attention folds its 1/sqrt(d) here: one pass over
/// the (B, H, N, N) scores fewer each way, and one fewer graph node for candle's backward to
/// zero-fill and accumulate.
pub fn softmax_scaled(x: &Tensor, scale: f64) -> Result<Tensor> {
    if use_cpu_kernel(&[x]) {
        x.contiguous()?.apply_op1(SoftmaxOp {
            scale: scale as f32,
        })
    } else {
        candle_nn::ops::softmax(&(x * scale)?, D::Minus1)
    }
}

struct SoftmaxOp {
    scale: f32,
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "vasomim-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax")?;
        let n = *l.dims().last().unwrap_or(&1);
        let scale = self.scale;
        let mut dst = vec![0f32; x.len()];
        par_rows(&mut dst, n, |i, out| {
            let row = &x[i * n..(i + 1) * n];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for j in 0..n {
                // scale > 0, so max(scale·x) = scale·max(x)
                let e = ((row[j] - max) * scale).exp();
                out[j] = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = y.dim(D::Minus1)?;
        let scale = self.scale;
        let dx = with_f32(&[y, grad], |s| {
            let (y, g) = (s[0], s[1]);
            let mut dx = vec![0f32; y.len()];
            // dx = scale · y ⊙ (g − Σ g⊙y)
            par_rows(&mut dx, n, |i, out| {
                let yr = &y[i * n..(i + 1) * n];
                let gr = &g[i * n..(i + 1) * n];
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for j in 0..n {
                    out[j] = scale * yr[j] * (gr[j] - dot);
                }
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

// ---------------------------------------------------------------- attention core

/// softmax(scale·q·kᵀ)·v for (B, H, N, hd) q, k, v: the attention core as one op.
///
/// candle runs the two batched matmuls as B·H small gemms, each split over threads (about half
/// the throughput of a large gemm here), and its backward zero-fills and accumulates the
/// (B, H, N, N) score and probability gradients. Here every head is one task on the rayon pool
/// with single-threaded gemms, the probabilities are kept from the forward pass, and the
/// backward is the textbook one: dV = Pᵀ·dY, dP = dY·Vᵀ, dS = scale·P⊙(dP − rowsum(dP⊙P)),
/// dQ = dS·K, dK = dSᵀ·Q.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if use_cpu_kernel(&[q, k, v]) {
        q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &v.contiguous()?,
            AttentionOp {
                scale: scale as f32,
                probs: Mutex::new(None),
            },
        )
    } else {
        softmax_scaled(&q.matmul(&k.t()?)?, scale)?.matmul(v)
    }
}

struct AttentionOp {
    scale: f32,
    /// (B·H, N, N) probabilities of the forward pass, for the backward.
    probs: Mutex<Option<Vec<f32>>>,
}

/// Row-major `dst (m×n) = [dst +] a·b` where `a` and `b` are given by (row stride, column
/// stride), single-threaded.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    assert!(
        dst.len() >= m * n
            && a.len() > (m - 1) * a_rs + (k - 1) * a_cs
            && b.len() > (k - 1) * b_rs + (n - 1) * b_cs
    );
    // SAFETY: the asserts above bound every element the strides reach; dst does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "vasomim-attention"
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
        let (q, k, v) = (
            f32_slice(s1, l1, "attention q")?,
            f32_slice(s2, l2, "attention k")?,
            f32_slice(s3, l3, "attention v")?,
        );
        let dims = l1.dims();
        if dims.len() != 4 || l2.dims() != dims || l3.dims() != dims {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} must all be (B, H, N, hd)",
                dims,
                l2.dims(),
                l3.dims()
            );
        }
        let (n, hd) = (dims[2], dims[3]);
        let heads = dims[0] * dims[1];
        let scale = self.scale;
        let mut y = vec![0f32; heads * n * hd];
        let mut probs = vec![0f32; heads * n * n];
        y.par_chunks_mut(n * hd)
            .zip(probs.par_chunks_mut(n * n))
            .enumerate()
            .for_each(|(i, (yh, ph))| {
                let (qh, kh, vh) = (
                    &q[i * n * hd..(i + 1) * n * hd],
                    &k[i * n * hd..(i + 1) * n * hd],
                    &v[i * n * hd..(i + 1) * n * hd],
                );
                mm(n, n, hd, ph, false, qh, hd, 1, kh, 1, hd); // S = Q·Kᵀ
                for row in ph.chunks_mut(n) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for x in row.iter_mut() {
                        *x = ((*x - max) * scale).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                }
                mm(n, hd, n, yh, false, ph, n, 1, vh, hd, 1); // Y = P·V
            });
        *self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::msg("attention: poisoned cache"))? = Some(probs);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, n, hd) = q.dims4()?;
        let scale = self.scale;
        let guard = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::msg("attention: poisoned cache"))?;
        let probs = guard
            .as_ref()
            .ok_or_else(|| candle_core::Error::msg("attention: backward before forward"))?;
        let (dq, dk, dv) = with_f32(&[q, k, v, grad], |s| {
            let (q, k, v, g) = (s[0], s[1], s[2], s[3]);
            let len = q.len();
            let (mut dq, mut dk, mut dv) = (vec![0f32; len], vec![0f32; len], vec![0f32; len]);
            let hs = n * hd;
            dq.par_chunks_mut(hs)
                .zip(dk.par_chunks_mut(hs))
                .zip(dv.par_chunks_mut(hs))
                .enumerate()
                .for_each(|(i, ((dqh, dkh), dvh))| {
                    let r = i * hs..(i + 1) * hs;
                    let (qh, kh, vh, gh) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &g[r]);
                    let ph = &probs[i * n * n..(i + 1) * n * n];
                    mm(n, hd, n, dvh, false, ph, 1, n, gh, hd, 1); // dV = Pᵀ·dY
                    let mut ds = vec![0f32; n * n];
                    mm(n, n, hd, &mut ds, false, gh, hd, 1, vh, 1, hd); // dP = dY·Vᵀ
                    for (dsr, pr) in ds.chunks_mut(n).zip(ph.chunks(n)) {
                        let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                        for (d, p) in dsr.iter_mut().zip(pr) {
                            *d = scale * p * (*d - dot);
                        }
                    }
                    mm(n, hd, n, dqh, false, &ds, n, 1, kh, hd, 1); // dQ = dS·K
                    mm(n, hd, n, dkh, false, &ds, 1, n, qh, hd, 1); // dK = dSᵀ·Q
                });
            Ok((dq, dk, dv))
        })?;
        let (sh, dev) = (q.shape(), q.device());
        Ok((
            Some(Tensor::from_vec(dq, sh, dev)?),
            Some(Tensor::from_vec(dk, sh, dev)?),
            Some(Tensor::from_vec(dv, sh, dev)?),
        ))
    }
}

// ---------------------------------------------------------------- GELU (erf)

/// Exact GELU, x·Φ(x) = ½x(1 + erf(x/√2)), as `torch.nn.functional.gelu` (approximate="none").
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(&[x]) {
        x.contiguous()?.apply_op1(GeluOp)
    } else {
        x.gelu_erf()
    }
}

struct GeluOp;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/sqrt(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "vasomim-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu")?;
        let mut dst = vec![0f32; x.len()];
        map_par(x, &mut dst, |v| {
            let (cdf, _) = cdf_pdf(v);
            v * cdf
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(&[x, grad], |s| {
            let (x, g) = (s[0], s[1]);
            let mut dx = vec![0f32; x.len()];
            // d/dx xΦ(x) = Φ(x) + xφ(x)
            let f = |(o, (v, gv)): (&mut f32, (&f32, &f32))| {
                let (cdf, pdf) = cdf_pdf(*v);
                *o = gv * (cdf + v * pdf);
            };
            if x.len() >= PAR_MIN {
                dx.par_chunks_mut(4096)
                    .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
                    .for_each(|(d, (xs, gs))| {
                        d.iter_mut().zip(xs.iter().zip(gs)).for_each(f);
                    });
            } else {
                dx.iter_mut().zip(x.iter().zip(g.iter())).for_each(f);
            }
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Φ(x) and φ(x) of the standard normal sharing one exp(−x²/2): Φ through erf(x/√2) with
/// Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7, the same formula as PyTorch's vectorised CPU
/// erf), all in f32 so the loop vectorises.
#[inline(always)]
fn cdf_pdf(x: f32) -> (f32, f32) {
    let e = (-0.5 * x * x).exp();
    let erf_abs = 1.0 - as_poly(x.abs() * FRAC_1_SQRT_2) * e;
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), INV_SQRT_2PI * e)
}

/// gelu(y + b) with `b` broadcast over rows: the first MLP layer's bias and activation in one
/// pass each way (the (rows, 4D) activations are the largest in a block besides attention).
pub fn bias_gelu(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(&[y, b]) {
        y.contiguous()?.apply_op2(b, BiasGeluOp)
    } else {
        gelu_erf(&y.broadcast_add(b)?)
    }
}

struct BiasGeluOp;

impl CustomOp2 for BiasGeluOp {
    fn name(&self) -> &'static str {
        "vasomim-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "bias_gelu y")?;
        let b = f32_slice(s2, l2, "bias_gelu bias")?;
        let n = *l1.dims().last().unwrap_or(&1);
        if b.len() != n {
            candle_core::bail!("bias_gelu: last dim {n} but bias has {}", b.len());
        }
        let mut dst = vec![0f32; y.len()];
        par_rows(&mut dst, n, |i, out| {
            let row = &y[i * n..(i + 1) * n];
            for j in 0..n {
                let z = row[j] + b[j];
                out[j] = z * cdf_pdf(z).0;
            }
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let (dz, db) = with_f32(&[y, b, grad], |s| {
            let (y, b, g) = (s[0], s[1], s[2]);
            let rows = y.len() / n;
            let mut dz = vec![0f32; y.len()];
            let chunk_rows = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let partials: Vec<Vec<f32>> = dz
                .par_chunks_mut(chunk_rows * n)
                .enumerate()
                .map(|(c, dzc)| {
                    let mut acc = vec![0f32; n];
                    for (r, out) in dzc.chunks_mut(n).enumerate() {
                        let i = c * chunk_rows + r;
                        let (yr, gr) = (&y[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
                        for j in 0..n {
                            let z = yr[j] + b[j];
                            let (cdf, pdf) = cdf_pdf(z);
                            let d = gr[j] * (cdf + z * pdf);
                            out[j] = d;
                            acc[j] += d;
                        }
                    }
                    acc
                })
                .collect();
            let mut db = vec![0f32; n];
            for p in partials {
                for j in 0..n {
                    db[j] += p[j];
                }
            }
            Ok((dz, db))
        })?;
        Ok((
            Some(Tensor::from_vec(dz, y.shape(), y.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

fn map_par(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    if src.len() >= PAR_MIN {
        dst.par_chunks_mut(4096)
            .zip(src.par_chunks(4096))
            .for_each(|(d, s)| {
                d.iter_mut().zip(s).for_each(|(o, &v)| *o = f(v));
            });
    } else {
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o = f(v));
    }
}

/// erf(x) with the same A&S 7.1.26 formula as the GELU kernels (|error| ≤ 1.5e-7 + rounding).
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let e = (-z * z).exp();
    let v = 1.0 - as_poly(z) * e;
    if x < 0.0 {
        -v
    } else {
        v
    }
}

/// The rational part of A&S 7.1.26: erf(z) = 1 − poly(z)·exp(−z²) for z ≥ 0.
#[inline(always)]
fn as_poly(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))))
}
