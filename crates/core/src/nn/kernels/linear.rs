//! Linear layers as single ops, forward and backward side by side:
//!
//! - [`linear`] with an [`Epilogue`]: `epilogue(x·Wᵀ + b)`, the bias and an optional exact GELU
//!   fused after the gemm.
//! - [`bias_add_residual`]: `y + b + r`, a Linear's bias add fused with the residual connection
//!   that follows it (the projection after attention and fc2 of the MLP).
//!
//! Compared with candle's matmul + broadcast add (and the transpose node on W), the backward
//! skips the zero-filled and accumulated gradient of the (rows, out) product and the strided copy
//! of Wᵀ's gradient; candle's broadcast add is single-threaded and its backward reduces over the
//! leading dims with a slow strided reduction. Bias gradients here are column sums in per-thread
//! partials.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{gelu_bwd_rows, gelu_erf, gelu_slice};
use super::host::{
    add_assign, bias_add, f32_slice, for_rows, gemm_new, matmul, matmul_dtype, rows_new, use_cpu_kernel, with_f32, Mat,
};

/// The matrix products of a Linear use all of candle's threads, as candle's own matmul does.
fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// What a [`linear`] applies after x·Wᵀ + b.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact GELU ([`gelu_erf`]).
    Gelu,
}

/// `epilogue(x·Wᵀ + b)` for x (rows, in), W (out, in) (PyTorch's layout), b (out): a Linear as
/// one op. Its backward computes dx = dz·W, dW = dzᵀ·x, db = Σ_rows dz directly.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    if use_cpu_kernel(&[x, w, b]) && x.rank() == 2 && w.rank() == 2 {
        x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp { epilogue, pre: Mutex::new(None) })
    } else {
        let dt = matmul_dtype(x.dtype());
        let z = matmul(&x.to_dtype(dt)?, &w.to_dtype(dt)?.t()?)?;
        match epilogue {
            Epilogue::None => bias_add(&z, b),
            #[cfg(feature = "cuda")]
            Epilogue::Gelu if super::cuda::applies(&[&z]) && b.rank() == 1 => super::cuda::bias_gelu(&z, b),
            Epilogue::Gelu => gelu_erf(&bias_add(&z, b)?),
        }
    }
}

struct LinearOp {
    epilogue: Epilogue,
    /// x·Wᵀ + b before the GELU, for the backward (GELU only).
    pre: Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "vasomim-linear"
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
        let x = f32_slice(s1, l1, "linear x")?;
        let w = f32_slice(s2, l2, "linear weight")?;
        let b = f32_slice(s3, l3, "linear bias")?;
        let (rows, k) = l1.shape().dims2()?;
        let (out, k2) = l2.shape().dims2()?;
        if k2 != k || b.len() != out {
            candle_core::bail!("linear: x {:?}, weight {:?}, bias {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        // z = x·Wᵀ, then + b (not as the gemm's starting value: the same rounding as matmul + bias add).
        let mut z = gemm_new(rows, out, k, Mat(x, k, 1), Mat(w, 1, k), threads());
        for_rows(&mut z, out, |_, r| add_assign(r, b));
        let y = match self.epilogue {
            Epilogue::None => z,
            Epilogue::Gelu => {
                let y = rows_new(z.len(), out, |i, r| gelu_slice(r, &z[i * out..(i + 1) * out]));
                *self.pre.lock().map_err(|_| candle_core::Error::msg("linear: poisoned cache"))? = Some(z);
                y
            }
        };
        Ok((CpuStorage::F32(y), Shape::from_dims(&[rows, out])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, k) = x.dims2()?;
        let out = w.dim(0)?;
        let (x_t, w_t, b_t) = (x.track_op(), w.track_op(), b.track_op());
        let guard = self.pre.lock().map_err(|_| candle_core::Error::msg("linear: poisoned cache"))?;
        let (dx, dw, db) = with_f32(&[x, w, grad], "linear backward", |s| {
            let (x, w, g) = (s[0], s[1], s[2]);
            // dz = g (no epilogue) or g ⊙ gelu'(z); db = Σ_rows dz in per-thread partials.
            let gelu_dz;
            let (dz, db): (&[f32], Vec<f32>) = match self.epilogue {
                Epilogue::None => (g, column_sums(g, out)),
                Epilogue::Gelu => {
                    let z = guard.as_ref().ok_or_else(|| candle_core::Error::msg("linear: backward before forward"))?;
                    let (d, db) = gelu_bwd_rows(z, g, out);
                    gelu_dz = d;
                    (&gelu_dz[..], db)
                }
            };
            let (dx, dw) = product_grads(x, w, dz, (rows, k, out), x_t, w_t);
            Ok((dx, dw, b_t.then_some(db)))
        })?;
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), dev)).transpose()?,
            dw.map(|v| Tensor::from_vec(v, w.shape(), dev)).transpose()?,
            db.map(|v| Tensor::from_vec(v, b.shape(), dev)).transpose()?,
        ))
    }
}

/// The gradients of z = x·Wᵀ for x (rows, k), W (out, k) and dz (rows, out): dx = dz·W and
/// dW = dzᵀ·x, each only when its argument tracks (a frozen layer: dx only; the first layer on
/// an image: dW only).
fn product_grads(
    x: &[f32],
    w: &[f32],
    dz: &[f32],
    (rows, k, out): (usize, usize, usize),
    x_t: bool,
    w_t: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let dx = x_t.then(|| gemm_new(rows, k, out, Mat(dz, out, 1), Mat(w, k, 1), threads())); // dz·W
    let dw = w_t.then(|| gemm_new(out, k, rows, Mat(dz, 1, out), Mat(x, k, 1), threads())); // dzᵀ·x
    (dx, dw)
}

// ---------------------------------------------------------------- x·Wᵀ

/// `x·Wᵀ` for x (rows, in) and W (out, in): the product of a Linear whose bias is added later
/// with something else (the residual Linears: [`bias_add_residual`]). On the CPU its backward
/// computes dx = dz·W and dW = dzᵀ·x as a Linear's does; candle's matmul of the transposed
/// weight got dW through a transposed product and a copy of every weight gradient.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(&[x, w]) && x.rank() == 2 && w.rank() == 2 {
        x.contiguous()?.apply_op2(&w.contiguous()?, MatmulTOp)
    } else {
        let dt = matmul_dtype(x.dtype());
        matmul(&x.to_dtype(dt)?, &w.to_dtype(dt)?.t()?)
    }
}

struct MatmulTOp;

impl CustomOp2 for MatmulTOp {
    fn name(&self) -> &'static str {
        "vasomim-matmul-t"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "matmul_t x")?;
        let w = f32_slice(s2, l2, "matmul_t weight")?;
        let ((rows, k), (out, k2)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if k2 != k {
            candle_core::bail!("matmul_t: x {:?}, weight {:?}", l1.dims(), l2.dims());
        }
        let z = gemm_new(rows, out, k, Mat(x, k, 1), Mat(w, 1, k), threads());
        Ok((CpuStorage::F32(z), Shape::from_dims(&[rows, out])))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ((rows, k), out) = (x.dims2()?, w.dim(0)?);
        let (dx, dw) = with_f32(&[x, w, grad], "matmul_t backward", |s| {
            Ok(product_grads(s[0], s[1], s[2], (rows, k, out), x.track_op(), w.track_op()))
        })?;
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), dev)).transpose()?,
            dw.map(|v| Tensor::from_vec(v, w.shape(), dev)).transpose()?,
        ))
    }
}

/// Σ over the rows of a row-major (rows, n) array: the gradient of a bias. Per-thread partial
/// sums over contiguous row blocks, then added in block order (deterministic for a thread
/// count), as [`rows_reduce`](super::host::rows_reduce) does for kernels that also write rows.
fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let rows = g.len() / n;
    let block = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let partials: Vec<Vec<f32>> = g
        .par_chunks(block * n)
        .map(|c| {
            let mut acc = vec![0f32; n];
            for r in c.chunks(n) {
                add_assign(&mut acc, r);
            }
            acc
        })
        .collect();
    let mut sum = vec![0f32; n];
    for p in partials {
        add_assign(&mut sum, &p);
    }
    sum
}

// ---------------------------------------------------------------- bias + residual

/// `y + b + r` with `b` broadcast over the rows of the last dimension.
pub fn bias_add_residual(y: &Tensor, b: &Tensor, r: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(&[y, b, r]) && y.dims() == r.dims() {
        y.contiguous()?.apply_op3(b, &r.contiguous()?, BiasAddResidualOp)
    } else {
        // The sum takes the residual's dtype (f32 under bf16 autocast, as PyTorch promotes).
        bias_add(&y.to_dtype(r.dtype())?, b)? + r
    }
}

struct BiasAddResidualOp;

impl CustomOp3 for BiasAddResidualOp {
    fn name(&self) -> &'static str {
        "vasomim-bias-add-residual"
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
        let y = f32_slice(s1, l1, "bias_add_residual y")?;
        let b = f32_slice(s2, l2, "bias_add_residual bias")?;
        let r = f32_slice(s3, l3, "bias_add_residual residual")?;
        let n = *l1.dims().last().unwrap_or(&1);
        if b.len() != n || r.len() != y.len() {
            candle_core::bail!("bias_add_residual: y {:?}, bias {}, residual {:?}", l1.dims(), b.len(), l3.dims());
        }
        let dst = rows_new(y.len(), n, |i, out| add3_row(out, &y[i * n..(i + 1) * n], b, &r[i * n..(i + 1) * n]));
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let db = with_f32(&[grad], "bias_add_residual backward", |s| Ok(column_sums(s[0], n)))?;
        Ok((Some(grad.clone()), Some(Tensor::from_vec(db, b.shape(), b.device())?), Some(grad.clone())))
    }
}

frangi::multiversion! {
    /// out = y + b + r (in that order).
    pub(super) fn add3_row(out: &mut [f32], y: &[f32], b: &[f32], r: &[f32]) {
        for (o, (yv, (bv, rv))) in out.iter_mut().zip(y.iter().zip(b.iter().zip(r))) {
            *o = yv + bv + rv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::testing::data;

    /// The fused Linear (forward and all three gradients) against candle's composite f64
    /// version, for odd shapes (gemm tails), both epilogues, and a transposed (strided) x.
    #[test]
    fn linear_matches_f64_reference() {
        use candle_core::{DType, Device, Var};
        let dev = Device::Cpu;
        let mut seed = 20;
        for &(rows, k, out, transposed) in &[
            (1usize, 1usize, 1usize, false),
            (37, 29, 13, false),
            (37, 29, 13, true),
            (99, 192, 576, false),
            (65, 768, 33, true),
        ] {
            seed += 1;
            let t = |d: &[usize], s: f64, seed: u64| {
                let n: usize = d.iter().product();
                let v: Vec<f32> = data(n, seed).iter().map(|x| x * s as f32).collect();
                Tensor::from_vec(v, d, &dev).unwrap()
            };
            let x = if transposed { t(&[k, rows], 1.0, seed).t().unwrap() } else { t(&[rows, k], 1.0, seed) };
            let (w, b, gy) =
                (t(&[out, k], 0.1, seed + 100), t(&[out], 0.1, seed + 200), t(&[rows, out], 1.0, seed + 300));
            for ep in [Epilogue::None, Epilogue::Gelu] {
                let run = |dt: DType, fused: bool| -> Vec<Vec<f64>> {
                    let v = |t: &Tensor| Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap();
                    let (x, w, b) = (v(&x), v(&w), v(&b));
                    let y = if fused {
                        linear(&x, &w, &b, ep).unwrap()
                    } else {
                        let z = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
                        match ep {
                            Epilogue::None => z,
                            Epilogue::Gelu => z.gelu_erf().unwrap(),
                        }
                    };
                    let l = (&y * gy.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap();
                    let g = l.backward().unwrap();
                    [&y, g.get(&x).unwrap(), g.get(&w).unwrap(), g.get(&b).unwrap()]
                        .iter()
                        .map(|t| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap())
                        .collect()
                };
                let (ours, reference) = (run(DType::F32, true), run(DType::F64, false));
                for (what, (a, r)) in ["y", "dx", "dw", "db"].iter().zip(ours.iter().zip(&reference)) {
                    assert_eq!(a.len(), r.len());
                    let m = r.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                    let e = a.iter().zip(r).map(|(p, q)| (p - q).abs()).fold(0f64, f64::max) / m;
                    assert!(e < 1e-5, "{ep:?} {rows}x{k}->{out} (x transposed: {transposed}): {what} error {e:e}");
                }
            }
        }
    }
}
