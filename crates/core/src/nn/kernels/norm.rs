//! Normalisations, forward and backward side by side:
//!
//! - [`layer_norm`] (and [`layer_norm_composite`], its reference and non-CPU version): over the
//!   last dimension, as `torch.nn.LayerNorm`.
//! - [`batch_norm_train`] / [`batch_norm_eval`]: per channel of (B, C, L), with the batch
//!   statistics (returned for the running update) or with given running statistics.
//!
//! candle 0.11's fused `layer_norm` has no backward (training silently stops upstream of it) and
//! its composite version is slow on the CPU; candle-nn's BatchNorm keeps its running stats as
//! trainable `Var`s.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use frangi::simd;
use rayon::prelude::*;

use super::host::{f32_slice, rows_new, rows_reduce, use_cpu_kernel, with_f32, PAR_MIN};

// ---------------------------------------------------------------- LayerNorm

/// LayerNorm over the last dimension: (x − μ)/sqrt(σ²_biased + eps)·w + b, as `torch.nn.LayerNorm`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if use_cpu_kernel(&[x, w, b]) {
        let x = x.contiguous()?;
        x.apply_op3(w, b, LayerNormOp { eps: eps as f32 })
    } else {
        #[cfg(feature = "cuda")]
        if super::cuda::applies(&[x]) {
            return super::cuda::layer_norm(x, w, b, eps);
        }
        layer_norm_composite(x, w, b, eps)
    }
}

/// The reference (and non-CPU) LayerNorm, from differentiable primitives. Statistics and the
/// affine map are computed in f32 whatever the input's dtype; the result has the input's dtype.
pub fn layer_norm_composite(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mu = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(&w.to_dtype(DType::F32)?)?.broadcast_add(&b.to_dtype(DType::F32)?)?.to_dtype(dt)
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
            candle_core::bail!("layer_norm: last dim {n} but weight {} / bias {}", w.len(), b.len());
        }
        let eps = self.eps;
        let dst = rows_new(x.len(), n, |i, out| layer_norm_row(out, &x[i * n..(i + 1) * n], w, b, eps));
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(D::Minus1)?;
        let eps = self.eps;
        let (dx, dwb) = with_f32(&[x, w, grad], "layer_norm backward", |s| {
            let (x, w, g) = (s[0], s[1], s[2]);
            // dx rows are independent; dw and db (one accumulator [dw | db]) are reduced over
            // rows in per-thread partials.
            Ok(rows_reduce(x.len(), n, 2 * n, |i, dxr, acc| {
                let (dw, db) = acc.split_at_mut(n);
                let (xr, gr) = (&x[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
                layer_norm_bwd_row(dxr, xr, gr, w, dw, db, eps);
            }))
        })?;
        let dev = x.device();
        // No gradient for a frozen weight or bias (candle would store and add it regardless).
        Ok((
            x.track_op().then(|| Tensor::from_vec(dx, x.shape(), dev)).transpose()?,
            w.track_op().then(|| Tensor::from_vec(dwb[..n].to_vec(), w.shape(), dev)).transpose()?,
            b.track_op().then(|| Tensor::from_vec(dwb[n..].to_vec(), w.shape(), dev)).transpose()?,
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

frangi::multiversion! {
    /// One LayerNorm row: out = (x − μ)·rstd·w + b.
    pub(super) fn layer_norm_row(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let (mu, rstd) = moments(x, eps);
        for (o, (xv, (wv, bv))) in out.iter_mut().zip(x.iter().zip(w.iter().zip(b))) {
            *o = (xv - mu) * rstd * wv + bv;
        }
    }
}

frangi::multiversion! {
    /// One LayerNorm row backward: writes dx, adds the row's terms to dw and db.
    pub(super) fn layer_norm_bwd_row(
        dx: &mut [f32],
        x: &[f32],
        g: &[f32],
        w: &[f32],
        dw: &mut [f32],
        db: &mut [f32],
        eps: f32,
    ) {
        let n = x.len();
        let (w, g, dw, db, dx) = (&w[..n], &g[..n], &mut dw[..n], &mut db[..n], &mut dx[..n]);
        let (mu, rstd) = moments(x, eps);
        let s_gw = simd::sum2(g, w, |gv, wv| gv * wv);
        let mut s_gwx = 0f32;
        let mut acc = [0f32; 16];
        let mut j = 0;
        while j + 16 <= n {
            for l in 0..16 {
                let xh = (x[j + l] - mu) * rstd;
                acc[l] += g[j + l] * w[j + l] * xh;
            }
            j += 16;
        }
        while j < n {
            s_gwx += g[j] * w[j] * ((x[j] - mu) * rstd);
            j += 1;
        }
        let s_gwx = acc.iter().sum::<f32>() + s_gwx;
        for j in 0..n {
            let xh = (x[j] - mu) * rstd;
            dw[j] += g[j] * xh;
            db[j] += g[j];
        }
        let (m_gw, m_gwx) = (s_gw / n as f32, s_gwx / n as f32);
        for j in 0..n {
            let xh = (x[j] - mu) * rstd;
            dx[j] = rstd * (g[j] * w[j] - m_gw - xh * m_gwx);
        }
    }
}

// ---------------------------------------------------------------- BatchNorm

/// Per-channel statistics of a batch norm, in f64.
#[derive(Clone, Debug)]
pub struct BnStats {
    pub mean: Vec<f64>,
    /// Biased.
    pub var: Vec<f64>,
    pub invstd: Vec<f64>,
}

/// Train-mode batch norm of x (B, C, L) with weight and bias (C): normalised with the batch
/// mean and biased variance, which are returned for the running-stat update. Gradients flow to
/// x, weight and bias.
pub fn batch_norm_train(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<(Tensor, BnStats)> {
    if !use_cpu_kernel(&[x, w, b]) {
        #[cfg(feature = "cuda")]
        if super::cuda::applies(&[x]) {
            return super::cuda::segmentor::batch_norm_train(x, w, b, eps);
        }
        return batch_norm_composite(x, w, b, eps, None);
    }
    let stash = Arc::new(Mutex::new(None));
    let y = x.contiguous()?.apply_op3(w, b, BnOp { eps, fixed: None, stash: stash.clone() })?;
    let stats = stash.lock().expect("stats").clone().expect("batch_norm forward records its statistics");
    Ok((y, stats))
}

/// Eval-mode batch norm of x (B, C, L): normalised with the running `mean` and `var` (C).
/// Gradients flow to x, weight and bias.
pub fn batch_norm_eval(x: &Tensor, w: &Tensor, b: &Tensor, mean: &[f32], var: &[f32], eps: f64) -> Result<Tensor> {
    let c = x.dim(1)?;
    if mean.len() != c || var.len() != c {
        candle_core::bail!("batch_norm: running stats of {} / {} values for {c} channels", mean.len(), var.len());
    }
    let stats = BnStats {
        mean: mean.iter().map(|&v| v as f64).collect(),
        var: var.iter().map(|&v| v as f64).collect(),
        invstd: var.iter().map(|&v| 1.0 / (v as f64 + eps).sqrt()).collect(),
    };
    if !use_cpu_kernel(&[x, w, b]) {
        #[cfg(feature = "cuda")]
        if super::cuda::applies(&[x]) {
            return super::cuda::segmentor::batch_norm_eval(x, w, b, eps, &stats);
        }
        return Ok(batch_norm_composite(x, w, b, eps, Some((mean, var)))?.0);
    }
    x.contiguous()?.apply_op3(w, b, BnOp { eps, fixed: Some(stats), stash: Arc::new(Mutex::new(None)) })
}

/// Batch norm of x (B, C, L) from differentiable primitives (CUDA, bf16), in f32 whatever the
/// input's dtype: with the running (`mean`, `var`) given, else with the batch statistics, which
/// are returned (copied to the host for the running update).
fn batch_norm_composite(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    running: Option<(&[f32], &[f32])>,
) -> Result<(Tensor, BnStats)> {
    let (dt, c) = (x.dtype(), x.dim(1)?);
    let x = x.to_dtype(DType::F32)?;
    let (mean, var) = match running {
        Some((m, v)) => (Tensor::from_slice(m, (1, c, 1), x.device())?, Tensor::from_slice(v, (1, c, 1), x.device())?),
        None => {
            let mean = x.mean_keepdim(2)?.mean_keepdim(0)?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
            (mean, var)
        }
    };
    let scale = (var.affine(1.0, eps)?.sqrt()?.recip()? * w.to_dtype(DType::F32)?.reshape((1, c, 1))?)?;
    let y =
        x.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(&b.to_dtype(DType::F32)?.reshape((1, c, 1))?)?;
    let host = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.detach().flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    };
    let (mean, var) = (host(&mean)?, host(&var)?);
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    Ok((y.to_dtype(dt)?, BnStats { mean, var, invstd }))
}

/// x (B, C, L), weight (C), bias (C). `fixed`: eval-mode stats; else batch stats, recorded in
/// `stash` for the running update and the backward.
struct BnOp {
    eps: f64,
    fixed: Option<BnStats>,
    stash: Arc<Mutex<Option<BnStats>>>,
}

/// Per channel Σ over b of `f(ci, offset of row (b, ci))` for (B, C, L) data, parallel over
/// channels when `len` (the data's size) is large.
fn channel_sums(len: usize, b: usize, c: usize, l: usize, f: impl Fn(usize, usize) -> f64 + Sync) -> Vec<f64> {
    let one = |ci: usize| -> f64 { (0..b).map(|bi| f(ci, (bi * c + ci) * l)).sum() };
    if len >= PAR_MIN {
        (0..c).into_par_iter().map(one).collect()
    } else {
        (0..c).map(one).collect()
    }
}

/// Σ f(a_i, b_i) of two rows in 8 f32 lanes (vectorises), the lanes and the tail summed in f64.
#[inline]
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let mut ai = a.chunks_exact(8);
    let mut bi = b.chunks_exact(8);
    for (ac, bc) in (&mut ai).zip(&mut bi) {
        for j in 0..8 {
            acc[j] += f(ac[j], bc[j]);
        }
    }
    let tail: f64 = ai.remainder().iter().zip(bi.remainder()).map(|(&u, &v)| f(u, v) as f64).sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "vasomim-batch-norm"
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
        let x = f32_slice(s1, l1, "batch_norm")?;
        let w = f32_slice(s2, l2, "batch_norm")?;
        let bb = f32_slice(s3, l3, "batch_norm")?;
        let (b, c, l) = l1.shape().dims3()?;
        let stats = match &self.fixed {
            Some(s) => s.clone(),
            None => {
                let n = (b * l) as f64;
                let row = |o: usize| &x[o..o + l];
                let mean: Vec<f64> = channel_sums(x.len(), b, c, l, |_, o| lane_sum2(row(o), row(o), |v, _| v))
                    .into_iter()
                    .map(|s| s / n)
                    .collect();
                let var: Vec<f64> = channel_sums(x.len(), b, c, l, |ci, o| {
                    let m = mean[ci] as f32;
                    lane_sum2(row(o), row(o), |v, _| (v - m) * (v - m))
                })
                .into_iter()
                .map(|s| s / n)
                .collect();
                let invstd = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
                let s = BnStats { mean, var, invstd };
                *self.stash.lock().expect("stats") = Some(s.clone());
                s
            }
        };
        let scale: Vec<f32> = (0..c).map(|i| (w[i] as f64 * stats.invstd[i]) as f32).collect();
        let shift: Vec<f32> =
            (0..c).map(|i| (bb[i] as f64 - stats.mean[i] * w[i] as f64 * stats.invstd[i]) as f32).collect();
        let dst = rows_new(x.len(), l, |i, row| {
            let (a, s) = (scale[i % c], shift[i % c]);
            let src = &x[i * l..(i + 1) * l];
            row.iter_mut().zip(src).for_each(|(d, &v)| *d = v * a + s);
        });
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
        let (b, c, l) = x.dims3()?;
        let stats = match &self.fixed {
            Some(s) => s.clone(),
            None => self
                .stash
                .lock()
                .expect("stats")
                .clone()
                .ok_or_else(|| candle_core::Error::msg("batch_norm backward before forward"))?,
        };
        let train = self.fixed.is_none();
        let params = w.track_op() || bias.track_op();
        let n = (b * l) as f64;
        let (dx, dw, db) = with_f32(&[x, w, grad], "batch_norm backward", |s| {
            let (x, wv, g) = (s[0], s[1], s[2]);
            // The channel sums feed dW, db and (train mode) dx; a frozen eval-mode BatchNorm
            // (VasoMIM's segmentor) needs neither.
            let (sg, sgx) = if train || params {
                let sg = channel_sums(g.len(), b, c, l, |_, o| lane_sum2(&g[o..o + l], &g[o..o + l], |v, _| v));
                // Σ g·(x − μ) per channel: rows of g and x side by side.
                let sgx = channel_sums(g.len(), b, c, l, |ci, o| {
                    let m = stats.mean[ci] as f32;
                    lane_sum2(&g[o..o + l], &x[o..o + l], |gv, xv| gv * (xv - m))
                });
                (sg, sgx)
            } else {
                (vec![0f64; c], vec![0f64; c])
            };
            let dw: Vec<f32> = (0..c).map(|i| (sgx[i] * stats.invstd[i]) as f32).collect();
            let db: Vec<f32> = sg.iter().map(|&v| v as f32).collect();
            // dx = a·g + k·(x − μ) + d per channel.
            let mut ka = vec![0f32; c];
            let mut kk = vec![0f32; c];
            let mut kd = vec![0f32; c];
            for i in 0..c {
                let a = wv[i] as f64 * stats.invstd[i];
                ka[i] = a as f32;
                if train {
                    kk[i] = (-a * stats.invstd[i] * stats.invstd[i] * sgx[i] / n) as f32;
                    kd[i] = (-a * sg[i] / n) as f32;
                }
            }
            let dx = rows_new(x.len(), l, |r, row| {
                let ci = r % c;
                let (a, k, d, m) = (ka[ci], kk[ci], kd[ci], stats.mean[ci] as f32);
                let (gr, xr) = (&g[r * l..(r + 1) * l], &x[r * l..(r + 1) * l]);
                for ((o, &gv), &xv) in row.iter_mut().zip(gr).zip(xr) {
                    *o = a * gv + k * (xv - m) + d;
                }
            });
            Ok((dx, dw, db))
        })?;
        let dev = x.device();
        Ok((
            x.track_op().then(|| Tensor::from_vec(dx, (b, c, l), dev)).transpose()?,
            w.track_op().then(|| Tensor::from_vec(dw, c, dev)?.reshape(w.shape())).transpose()?,
            bias.track_op().then(|| Tensor::from_vec(db, c, dev)?.reshape(bias.shape())).transpose()?,
        ))
    }
}
