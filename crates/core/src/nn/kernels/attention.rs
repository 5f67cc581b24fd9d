//! Multi-head self-attention as one op, forward and backward side by side:
//!
//! - [`attention_qkv`]: softmax(scale·q·kᵀ)·v for every head, read straight from the fused qkv
//!   projection's rows and written as merged heads.
//! - [`softmax_rows`] / [`softmax_bwd_rows`]: its row softmax (scale folded in) and the softmax
//!   backward, g ← scale·y ⊙ (g − Σ g⊙y).
//!
//! candle runs the two batched matmuls as B·H small gemms, each split over threads (about half
//! the throughput of a large gemm here), and its backward zero-fills and accumulates the
//! (B, H, N, N) score and probability gradients. Here every image is one task on the rayon pool
//! with single-threaded gemms, and the backward is the textbook one: dV = Pᵀ·dY, dP = dY·Vᵀ,
//! dS = scale·P⊙(dP − rowsum(dP⊙P)), dQ = dS·K, dK = dSᵀ·Q.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use frangi::simd::{self, exp_f32};
use rayon::prelude::*;

use super::host::{f32_slice, gemm_f32, matmul, use_cpu_kernel, with_f32, zeroed, Mat};

/// Multi-head attention core straight from the fused qkv projection: `qkv` (B·N, 3D) rows →
/// (B·N, D) rows, heads read and written in place through strides: no reshape / transpose /
/// copy nodes around the head split and merge (candle zero-fills and accumulates a gradient for
/// each of them), and the backward returns d(qkv) directly. One rayon task per image; the
/// probabilities are kept from the forward pass.
pub fn attention_qkv(qkv: &Tensor, batch: usize, heads: usize, scale: f64) -> Result<Tensor> {
    let (rows, three_d) = qkv.dims2()?;
    if three_d % (3 * heads) != 0 || rows % batch != 0 {
        candle_core::bail!(
            "attention_qkv: qkv {:?} does not split into {batch} images and 3 x {heads} heads",
            qkv.dims()
        );
    }
    if use_cpu_kernel(&[qkv]) {
        qkv.contiguous()?.apply_op1(AttentionQkvOp { batch, heads, scale: scale as f32, probs: Mutex::new(None) })
    } else {
        let (n, d) = (rows / batch, three_d / 3);
        let hd = d / heads;
        let t = qkv.reshape((batch, n, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (t.get(0)?.contiguous()?, t.get(1)?.contiguous()?, t.get(2)?.contiguous()?);
        // Scores and softmax in f32 whatever the compute dtype.
        let s = matmul(&q, &k.t()?)?;
        #[cfg(feature = "cuda")]
        if super::cuda::applies(&[&s]) {
            let p = super::cuda::softmax(&s, scale)?;
            return matmul(&p, &v)?.transpose(1, 2)?.contiguous()?.reshape((rows, d));
        }
        let p = candle_nn::ops::softmax(&(s.to_dtype(DType::F32)? * scale)?, D::Minus1)?.to_dtype(v.dtype())?;
        let y = matmul(&p, &v)?;
        y.transpose(1, 2)?.contiguous()?.reshape((rows, d))
    }
}

struct AttentionQkvOp {
    batch: usize,
    heads: usize,
    scale: f32,
    /// (B·H, N, N) probabilities of the forward pass.
    probs: Mutex<Option<Vec<f32>>>,
}

impl CustomOp1 for AttentionQkvOp {
    fn name(&self) -> &'static str {
        "vasomim-attention-qkv"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(st, l, "attention_qkv")?;
        let (rows, three_d) = l.shape().dims2()?;
        let (b, h) = (self.batch, self.heads);
        let (n, d) = (rows / b, three_d / 3);
        let hd = d / h;
        let scale = self.scale;
        let mut y = zeroed(rows * d);
        let mut probs = zeroed(b * h * n * n);
        y.par_chunks_mut(n * d).zip(probs.par_chunks_mut(h * n * n)).enumerate().for_each(|(bi, (yb, pb))| {
            let x = &qkv[bi * n * three_d..(bi + 1) * n * three_d];
            for (hh, ph) in pb.chunks_mut(n * n).enumerate() {
                let (q, k, v) = (&x[hh * hd..], &x[d + hh * hd..], &x[2 * d + hh * hd..]);
                gemm_f32(n, n, hd, ph, n, false, Mat(q, three_d, 1), Mat(k, 1, three_d), 1); // S = Q·Kᵀ
                softmax_rows(ph, n, scale);
                gemm_f32(n, hd, n, &mut yb[hh * hd..], d, false, Mat(ph, n, 1), Mat(v, three_d, 1), 1);
                // Y = P·V
            }
        });
        *self.probs.lock().map_err(|_| candle_core::Error::msg("attention: poisoned cache"))? = Some(probs);
        Ok((CpuStorage::F32(y), Shape::from_dims(&[rows, d])))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (rows, three_d) = qkv.dims2()?;
        let (b, h) = (self.batch, self.heads);
        let (n, d) = (rows / b, three_d / 3);
        let hd = d / h;
        let scale = self.scale;
        let guard = self.probs.lock().map_err(|_| candle_core::Error::msg("attention: poisoned cache"))?;
        let probs = guard.as_ref().ok_or_else(|| candle_core::Error::msg("attention: backward before forward"))?;
        let dqkv = with_f32(&[qkv, grad], "attention_qkv backward", |s| {
            let (x, g) = (s[0], s[1]);
            let mut dqkv = zeroed(x.len());
            dqkv.par_chunks_mut(n * three_d).enumerate().for_each(|(bi, db)| {
                let xb = &x[bi * n * three_d..(bi + 1) * n * three_d];
                let gb = &g[bi * n * d..(bi + 1) * n * d];
                let mut ds = vec![0f32; n * n];
                for hh in 0..h {
                    let ph = &probs[(bi * h + hh) * n * n..(bi * h + hh + 1) * n * n];
                    let (q, k, v) = (&xb[hh * hd..], &xb[d + hh * hd..], &xb[2 * d + hh * hd..]);
                    let gh = &gb[hh * hd..];
                    gemm_f32(n, hd, n, &mut db[2 * d + hh * hd..], three_d, false, Mat(ph, 1, n), Mat(gh, d, 1), 1); // dV = Pᵀ·dY
                    gemm_f32(n, n, hd, &mut ds, n, false, Mat(gh, d, 1), Mat(v, 1, three_d), 1); // dP = dY·Vᵀ
                    softmax_bwd_rows(&mut ds, ph, n, scale);
                    gemm_f32(n, hd, n, &mut db[hh * hd..], three_d, false, Mat(&ds, n, 1), Mat(k, three_d, 1), 1); // dQ = dS·K
                    gemm_f32(n, hd, n, &mut db[d + hh * hd..], three_d, false, Mat(&ds, 1, n), Mat(q, three_d, 1), 1);
                    // dK = dSᵀ·Q
                }
            });
            Ok(dqkv)
        })?;
        Ok(Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?))
    }
}

frangi::multiversion! {
    /// softmax(scale·x) of each `n`-wide row of `x`, in place (scale > 0).
    pub(super) fn softmax_rows(x: &mut [f32], n: usize, scale: f32) {
        for row in x.chunks_exact_mut(n) {
            // scale > 0, so max(scale·x) = scale·max(x)
            let max = simd::max(row);
            for v in row.iter_mut() {
                *v = exp_f32((*v - max) * scale);
            }
            let inv = 1.0 / simd::sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

frangi::multiversion! {
    /// Softmax backward in place, row by row: g ← scale·y ⊙ (g − Σ g⊙y).
    pub(super) fn softmax_bwd_rows(g: &mut [f32], y: &[f32], n: usize, scale: f32) {
        for (gr, yr) in g.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
            let dot = simd::sum2(gr, yr, |a, b| a * b);
            for (gv, yv) in gr.iter_mut().zip(yr) {
                *gv = scale * yv * (*gv - dot);
            }
        }
    }
}
