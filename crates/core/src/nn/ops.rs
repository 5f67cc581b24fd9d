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

use super::simd;

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
            layer_norm_row(out, &x[i * n..(i + 1) * n], w, b, eps)
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
                        layer_norm_bwd_row(dxr, xr, gr, w, &mut dw, &mut db, eps);
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

crate::multiversion! {
    /// One LayerNorm row: out = (x − μ)·rstd·w + b.
    fn layer_norm_row(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let (mu, rstd) = moments(x, eps);
        for (o, (xv, (wv, bv))) in out.iter_mut().zip(x.iter().zip(w.iter().zip(b))) {
            *o = (xv - mu) * rstd * wv + bv;
        }
    }
}

crate::multiversion! {
    /// One LayerNorm row backward: writes dx, adds the row's terms to dw and db.
    fn layer_norm_bwd_row(
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
            add_row(out, &y[i * n..(i + 1) * n], b)
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
        let db = with_f32(&[grad], |s| Ok(column_sums(s[0], n)))?;
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

/// Σ over the rows of a row-major (rows, n) array: the gradient of a bias. Per-thread partial
/// sums over contiguous row chunks, then added in chunk order (deterministic for a thread count).
fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let rows = g.len() / n;
    let chunk_rows = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let partials: Vec<Vec<f32>> = g
        .par_chunks(chunk_rows * n)
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

/// Backward of GELU(y + b) for y (rows, n) and upstream g: dz = g ⊙ gelu'(y + b) and its row
/// sum (the bias gradient), reduced as [`column_sums`].
fn bias_gelu_bwd_rows(y: &[f32], b: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = b.len();
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
                bias_gelu_bwd_row(out, &mut acc, yr, b, gr);
            }
            acc
        })
        .collect();
    let mut db = vec![0f32; n];
    for p in partials {
        add_assign(&mut db, &p);
    }
    (dz, db)
}

crate::multiversion! {
    /// out = y + b.
    fn add_row(out: &mut [f32], y: &[f32], b: &[f32]) {
        for (o, (yv, bv)) in out.iter_mut().zip(y.iter().zip(b)) {
            *o = yv + bv;
        }
    }
}

crate::multiversion! {
    /// acc += x.
    fn add_assign(acc: &mut [f32], x: &[f32]) {
        for (a, v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
}

crate::multiversion! {
    /// out = y + b + r (in that order).
    fn add3_row(out: &mut [f32], y: &[f32], b: &[f32], r: &[f32]) {
        for (o, (yv, (bv, rv))) in out.iter_mut().zip(y.iter().zip(b.iter().zip(r))) {
            *o = yv + bv + rv;
        }
    }
}

/// `y + b + r`: a Linear's bias add fused with the residual connection that follows it.
pub fn bias_add_residual(y: &Tensor, b: &Tensor, r: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(&[y, b, r]) && y.dims() == r.dims() {
        y.contiguous()?
            .apply_op3(b, &r.contiguous()?, BiasAddResidualOp)
    } else {
        y.broadcast_add(b)? + r
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
            candle_core::bail!(
                "bias_add_residual: y {:?}, bias {}, residual {:?}",
                l1.dims(),
                b.len(),
                l3.dims()
            );
        }
        let mut dst = vec![0f32; y.len()];
        par_rows(&mut dst, n, |i, out| {
            add3_row(out, &y[i * n..(i + 1) * n], b, &r[i * n..(i + 1) * n])
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        r: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gy, gb) = BiasAddOp.bwd(y, b, res, grad)?;
        let _ = r;
        Ok((gy, gb, Some(grad.clone())))
    }
}

// ---------------------------------------------------------------- linear

/// What a [`linear`] applies after x·Wᵀ + b.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact GELU ([`gelu_erf`]).
    Gelu,
}

/// `epilogue(x·Wᵀ + b)` for x (rows, in), W (out, in) (PyTorch's layout), b (out): a Linear as
/// one op. Compared with candle's matmul + bias node (and the transpose node on W), its
/// backward skips the zero-filled and accumulated gradient of the (rows, out) product and the
/// strided copy of Wᵀ's gradient, and computes dx = dz·W, dW = dzᵀ·x, db = Σ_rows dz directly.
/// The forward writes the bias first and lets the gemm accumulate onto it.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    if use_cpu_kernel(&[x, w, b]) && x.rank() == 2 && w.rank() == 2 {
        x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            LinearOp {
                epilogue,
                pre: Mutex::new(None),
            },
        )
    } else {
        let y = x.broadcast_matmul(&w.t()?)?;
        match epilogue {
            Epilogue::None => bias_add(&y, b),
            Epilogue::Gelu => bias_gelu(&y, b),
        }
    }
}

struct LinearOp {
    epilogue: Epilogue,
    /// x·Wᵀ + b before the GELU, for the backward (GELU only).
    pre: Mutex<Option<Vec<f32>>>,
}

/// `dst (m×n) = [dst +] a·b` on all threads (candle's own matmul parallelism), strides as in
/// [`mm_strided`], dst row-major contiguous.
#[allow(clippy::too_many_arguments)]
fn gemm_par(
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
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(
        dst.len() >= m * n
            && a.len() > (m - 1) * a_rs + (k - 1) * a_cs
            && b.len() > (k - 1) * b_rs + (n - 1) * b_cs
    );
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
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
            par,
        )
    }
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
            candle_core::bail!(
                "linear: x {:?}, weight {:?}, bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut z = vec![0f32; rows * out];
        gemm_par(rows, out, k, &mut z, false, x, k, 1, w, 1, k); // z = x·Wᵀ
                                                                 // + b afterwards, not as the gemm's starting value: same rounding as matmul + bias_add.
        par_rows(&mut z, out, |_, r| add_assign(r, b));
        let y = match self.epilogue {
            Epilogue::None => z,
            Epilogue::Gelu => {
                let mut y = vec![0f32; z.len()];
                par_rows(&mut y, out, |i, r| {
                    gelu_slice(r, &z[i * out..(i + 1) * out])
                });
                *self
                    .pre
                    .lock()
                    .map_err(|_| candle_core::Error::msg("linear: poisoned cache"))? = Some(z);
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
        let guard = self
            .pre
            .lock()
            .map_err(|_| candle_core::Error::msg("linear: poisoned cache"))?;
        let (dx, dw, db) = with_f32(&[x, w, grad], |s| {
            let (x, w, g) = (s[0], s[1], s[2]);
            // dz = g (no epilogue) or g ⊙ gelu'(z); db = Σ_rows dz in per-thread partials.
            let gelu_dz;
            let (dz, db): (&[f32], Vec<f32>) = match self.epilogue {
                Epilogue::None => (g, column_sums(g, out)),
                Epilogue::Gelu => {
                    let z = guard.as_ref().ok_or_else(|| {
                        candle_core::Error::msg("linear: backward before forward")
                    })?;
                    let (d, db) = bias_gelu_bwd_rows(z, &vec![0f32; out], g);
                    gelu_dz = d;
                    (&gelu_dz[..], db)
                }
            };
            let mut dx = vec![0f32; rows * k];
            gemm_par(rows, k, out, &mut dx, false, dz, out, 1, w, k, 1); // dx = dz·W
            let mut dw = vec![0f32; out * k];
            gemm_par(out, k, rows, &mut dw, false, dz, 1, out, x, k, 1); // dW = dzᵀ·x
            Ok((dx, dw, db))
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
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
            out.copy_from_slice(&x[i * n..(i + 1) * n]);
            softmax_rows(out, n, scale);
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
                out.copy_from_slice(&g[i * n..(i + 1) * n]);
                softmax_bwd_rows(out, &y[i * n..(i + 1) * n], n, scale);
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

crate::multiversion! {
    /// softmax(scale·x) of each `n`-wide row of `x`, in place (scale > 0).
    fn softmax_rows(x: &mut [f32], n: usize, scale: f32) {
        for row in x.chunks_exact_mut(n) {
            // scale > 0, so max(scale·x) = scale·max(x)
            let max = simd::max(row);
            for v in row.iter_mut() {
                *v = fast_exp((*v - max) * scale);
            }
            let inv = 1.0 / simd::sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

crate::multiversion! {
    /// Softmax backward in place, row by row: g ← scale·y ⊙ (g − Σ g⊙y).
    fn softmax_bwd_rows(g: &mut [f32], y: &[f32], n: usize, scale: f32) {
        for (gr, yr) in g.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
            let dot = simd::sum2(gr, yr, |a, b| a * b);
            for (gv, yv) in gr.iter_mut().zip(yr) {
                *gv = scale * yv * (*gv - dot);
            }
        }
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
    mm_strided(m, n, k, dst, n, accumulate, a, a_rs, a_cs, b, b_rs, b_cs)
}

/// [`mm`] with a row stride for `dst` (a head's columns inside a wider row).
#[allow(clippy::too_many_arguments)]
fn mm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    assert!(
        dst.len() > (m - 1) * dst_rs + n - 1
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
            dst_rs as isize,
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
                softmax_rows(ph, n, scale);
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
                    softmax_bwd_rows(&mut ds, ph, n, scale);
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

/// Multi-head attention core straight from the fused qkv projection: `qkv` (B·N, 3D) rows →
/// (B·N, D) rows, heads read and written in place through strides. Compared with [`attention`]
/// this removes the reshape/transpose/copy nodes around every head split and merge (candle
/// zero-fills and accumulates a gradient for each of them) and the q/k/v slicing; its backward
/// returns d(qkv) directly. One rayon task per image.
pub fn attention_qkv(qkv: &Tensor, batch: usize, heads: usize, scale: f64) -> Result<Tensor> {
    let (rows, three_d) = qkv.dims2()?;
    if three_d % (3 * heads) != 0 || rows % batch != 0 {
        candle_core::bail!(
            "attention_qkv: qkv {:?} does not split into {batch} images and 3 x {heads} heads",
            qkv.dims()
        );
    }
    if use_cpu_kernel(&[qkv]) {
        qkv.contiguous()?.apply_op1(AttentionQkvOp {
            batch,
            heads,
            scale: scale as f32,
            probs: Mutex::new(None),
        })
    } else {
        let (n, d) = (rows / batch, three_d / 3);
        let hd = d / heads;
        let t = qkv
            .reshape((batch, n, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (
            t.get(0)?.contiguous()?,
            t.get(1)?.contiguous()?,
            t.get(2)?.contiguous()?,
        );
        let y = softmax_scaled(&q.matmul(&k.t()?)?, scale)?.matmul(&v)?;
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
        let mut y = vec![0f32; rows * d];
        let mut probs = vec![0f32; b * h * n * n];
        y.par_chunks_mut(n * d)
            .zip(probs.par_chunks_mut(h * n * n))
            .enumerate()
            .for_each(|(bi, (yb, pb))| {
                let x = &qkv[bi * n * three_d..(bi + 1) * n * three_d];
                for (hh, ph) in pb.chunks_mut(n * n).enumerate() {
                    let (q, k, v) = (&x[hh * hd..], &x[d + hh * hd..], &x[2 * d + hh * hd..]);
                    mm(n, n, hd, ph, false, q, three_d, 1, k, 1, three_d); // S = Q·Kᵀ
                    softmax_rows(ph, n, scale);
                    mm_strided(
                        n,
                        hd,
                        n,
                        &mut yb[hh * hd..],
                        d,
                        false,
                        ph,
                        n,
                        1,
                        v,
                        three_d,
                        1,
                    ); // Y = P·V
                }
            });
        *self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::msg("attention: poisoned cache"))? = Some(probs);
        Ok((CpuStorage::F32(y), Shape::from_dims(&[rows, d])))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (rows, three_d) = qkv.dims2()?;
        let (b, h) = (self.batch, self.heads);
        let (n, d) = (rows / b, three_d / 3);
        let hd = d / h;
        let scale = self.scale;
        let guard = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::msg("attention: poisoned cache"))?;
        let probs = guard
            .as_ref()
            .ok_or_else(|| candle_core::Error::msg("attention: backward before forward"))?;
        let dqkv = with_f32(&[qkv, grad], |s| {
            let (x, g) = (s[0], s[1]);
            let mut dqkv = vec![0f32; x.len()];
            dqkv.par_chunks_mut(n * three_d)
                .enumerate()
                .for_each(|(bi, db)| {
                    let xb = &x[bi * n * three_d..(bi + 1) * n * three_d];
                    let gb = &g[bi * n * d..(bi + 1) * n * d];
                    let mut ds = vec![0f32; n * n];
                    for hh in 0..h {
                        let ph = &probs[(bi * h + hh) * n * n..(bi * h + hh + 1) * n * n];
                        let (q, k, v) =
                            (&xb[hh * hd..], &xb[d + hh * hd..], &xb[2 * d + hh * hd..]);
                        let gh = &gb[hh * hd..];
                        mm_strided(
                            n,
                            hd,
                            n,
                            &mut db[2 * d + hh * hd..],
                            three_d,
                            false,
                            ph,
                            1,
                            n,
                            gh,
                            d,
                            1,
                        ); // dV = Pᵀ·dY
                        mm(n, n, hd, &mut ds, false, gh, d, 1, v, 1, three_d); // dP = dY·Vᵀ
                        softmax_bwd_rows(&mut ds, ph, n, scale);
                        mm_strided(
                            n,
                            hd,
                            n,
                            &mut db[hh * hd..],
                            three_d,
                            false,
                            &ds,
                            n,
                            1,
                            k,
                            three_d,
                            1,
                        ); // dQ = dS·K
                        mm_strided(
                            n,
                            hd,
                            n,
                            &mut db[d + hh * hd..],
                            three_d,
                            false,
                            &ds,
                            1,
                            n,
                            q,
                            three_d,
                            1,
                        ); // dK = dSᵀ·Q
                    }
                });
            Ok(dqkv)
        })?;
        Ok(Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?))
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
        if x.len() >= PAR_MIN {
            dst.par_chunks_mut(4096)
                .zip(x.par_chunks(4096))
                .for_each(|(d, s)| gelu_slice(d, s));
        } else {
            gelu_slice(&mut dst, x);
        }
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(&[x, grad], |s| {
            let (x, g) = (s[0], s[1]);
            let mut dx = vec![0f32; x.len()];
            if x.len() >= PAR_MIN {
                dx.par_chunks_mut(4096)
                    .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
                    .for_each(|(d, (xs, gs))| gelu_bwd_slice(d, xs, gs));
            } else {
                gelu_bwd_slice(&mut dx, x, g);
            }
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

crate::multiversion! {
    /// out = gelu(x).
    fn gelu_slice(out: &mut [f32], x: &[f32]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = v * cdf_pdf(*v).0;
        }
    }
}

crate::multiversion! {
    /// dx = g · d/dx xΦ(x) = g · (Φ(x) + xφ(x)).
    fn gelu_bwd_slice(dx: &mut [f32], x: &[f32], g: &[f32]) {
        for (o, (v, gv)) in dx.iter_mut().zip(x.iter().zip(g)) {
            let (cdf, pdf) = cdf_pdf(*v);
            *o = gv * (cdf + v * pdf);
        }
    }
}

crate::multiversion! {
    /// out = gelu(y + b).
    fn bias_gelu_row(out: &mut [f32], y: &[f32], b: &[f32]) {
        for (o, (yv, bv)) in out.iter_mut().zip(y.iter().zip(b)) {
            let z = yv + bv;
            *o = z * cdf_pdf(z).0;
        }
    }
}

crate::multiversion! {
    /// dz = g · gelu'(y + b), and acc += dz.
    fn bias_gelu_bwd_row(dz: &mut [f32], acc: &mut [f32], y: &[f32], b: &[f32], g: &[f32]) {
        let n = dz.len();
        let (acc, y, b, g) = (&mut acc[..n], &y[..n], &b[..n], &g[..n]);
        for j in 0..n {
            let z = y[j] + b[j];
            let (cdf, pdf) = cdf_pdf(z);
            let d = g[j] * (cdf + z * pdf);
            dz[j] = d;
            acc[j] += d;
        }
    }
}

/// Φ(x) and φ(x) of the standard normal sharing one exp(−x²/2): Φ through erf(x/√2) with
/// Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7, the same formula as PyTorch's vectorised CPU
/// erf), all in f32 so the loop vectorises.
#[inline(always)]
fn cdf_pdf(x: f32) -> (f32, f32) {
    let e = fast_exp(-0.5 * x * x);
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
            bias_gelu_row(out, &y[i * n..(i + 1) * n], b)
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
        let (dz, db) = with_f32(&[y, b, grad], |s| Ok(bias_gelu_bwd_rows(s[0], s[1], s[2])))?;
        Ok((
            Some(Tensor::from_vec(dz, y.shape(), y.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

/// e^x for f32 within 2 ulp (Cephes `expf` polynomial, Cody–Waite range reduction), written
/// with plain arithmetic and bit casts only so loops over it vectorise even on baseline x86-64
/// (libm's `expf` is a call per element: ~5 % of a training step). Inputs below −87.3 give
/// ~1e-38 instead of 0, which no softmax or GELU here can tell apart.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let kf = x * LOG2E + MAGIC;
    let k = kf.to_bits() as i32 - MAGIC.to_bits() as i32;
    let kr = kf - MAGIC;
    let r = x - kr * LN2_HI - kr * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((k + 127) << 23) as u32)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::nn::InitRng::new(seed);
        (0..n).map(|_| (r.normal() * 3.0) as f32).collect()
    }

    /// Every multiversioned kernel gives bit-identical results at every dispatch level (the
    /// levels this CPU lacks fall back to the widest it has), on odd widths with tails.
    #[test]
    fn dispatch_levels_agree_bitwise() {
        let run = |level: u8| -> Vec<Vec<u32>> {
            simd::force_level(Some(level));
            let mut outs = Vec::new();
            for &n in &[1usize, 7, 16, 33, 99, 197] {
                let (x, w, b, g) = (data(3 * n, 1), data(n, 2), data(n, 3), data(3 * n, 4));
                let mut o = vec![0f32; n];
                layer_norm_row(&mut o, &x[..n], &w, &b, 1e-6);
                outs.push(o.clone());
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                layer_norm_bwd_row(&mut o, &x[..n], &g[..n], &w, &mut dw, &mut db, 1e-6);
                outs.extend([o.clone(), dw, db]);
                add_row(&mut o, &x[..n], &b);
                outs.push(o.clone());
                add3_row(&mut o, &x[..n], &b, &g[..n]);
                outs.push(o.clone());
                let mut acc = w.clone();
                add_assign(&mut acc, &x[..n]);
                outs.push(acc);
                let mut p = x.clone();
                softmax_rows(&mut p, n, 0.37);
                outs.push(p.clone());
                let mut d = g.clone();
                softmax_bwd_rows(&mut d, &p, n, 0.37);
                outs.push(d);
                let mut o3 = vec![0f32; 3 * n];
                gelu_slice(&mut o3, &x);
                outs.push(o3.clone());
                gelu_bwd_slice(&mut o3, &x, &g);
                outs.push(o3);
                bias_gelu_row(&mut o, &x[..n], &b);
                outs.push(o.clone());
                let mut acc = w.clone();
                bias_gelu_bwd_row(&mut o, &mut acc, &x[..n], &b, &g[..n]);
                outs.extend([o.clone(), acc]);
                outs.push(vec![
                    simd::sum(&x),
                    simd::max(&x),
                    simd::sum2(&x, &g, |a, b| a * b),
                ]);
            }
            simd::force_level(None);
            outs.into_iter()
                .map(|v| v.iter().map(|f| f.to_bits()).collect())
                .collect()
        };
        let base = run(0);
        assert_eq!(run(1), base, "AVX2 differs from the baseline");
        assert_eq!(run(2), base, "AVX-512 differs from the baseline");
    }

    /// The lane reductions against plain sequential ones.
    #[test]
    fn lane_reductions() {
        for n in [0usize, 1, 15, 16, 17, 100] {
            let (x, y) = (data(n, 5), data(n, 6));
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((simd::sum(&x) as f64 - s).abs() < 1e-4 * (1.0 + s.abs()));
            let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((simd::sum2(&x, &y, |a, b| a * b) as f64 - d).abs() < 1e-4 * (1.0 + d.abs()));
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(simd::max(&x), m);
        }
    }
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
            let x = if transposed {
                t(&[k, rows], 1.0, seed).t().unwrap()
            } else {
                t(&[rows, k], 1.0, seed)
            };
            let (w, b, gy) = (
                t(&[out, k], 0.1, seed + 100),
                t(&[out], 0.1, seed + 200),
                t(&[rows, out], 1.0, seed + 300),
            );
            for ep in [Epilogue::None, Epilogue::Gelu] {
                let run = |dt: DType, fused: bool| -> Vec<Vec<f64>> {
                    let v = |t: &Tensor| Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap();
                    let (x, w, b) = (v(&x), v(&w), v(&b));
                    let y = if fused {
                        linear(&x, &w, &b, ep).unwrap()
                    } else {
                        let z = x
                            .matmul(&w.t().unwrap())
                            .unwrap()
                            .broadcast_add(&b)
                            .unwrap();
                        match ep {
                            Epilogue::None => z,
                            Epilogue::Gelu => z.gelu_erf().unwrap(),
                        }
                    };
                    let l = (&y * gy.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap();
                    let g = l.backward().unwrap();
                    [
                        &y,
                        g.get(&x).unwrap(),
                        g.get(&w).unwrap(),
                        g.get(&b).unwrap(),
                    ]
                    .iter()
                    .map(|t| {
                        t.flatten_all()
                            .unwrap()
                            .to_dtype(DType::F64)
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap()
                    })
                    .collect()
                };
                let (ours, reference) = (run(DType::F32, true), run(DType::F64, false));
                for (what, (a, r)) in ["y", "dx", "dw", "db"]
                    .iter()
                    .zip(ours.iter().zip(&reference))
                {
                    assert_eq!(a.len(), r.len());
                    let m = r.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                    let e = a
                        .iter()
                        .zip(r)
                        .map(|(p, q)| (p - q).abs())
                        .fold(0f64, f64::max)
                        / m;
                    assert!(
                        e < 1e-5,
                        "{ep:?} {rows}x{k}->{out} (x transposed: {transposed}): {what} error {e:e}"
                    );
                }
            }
        }
    }
}
