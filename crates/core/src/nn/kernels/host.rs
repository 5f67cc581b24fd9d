//! The host-slice layer every CPU kernel stands on:
//!
//! - [`f32_slice`]: the contiguous f32 data of a storage and layout (inside `cpu_fwd`).
//! - [`with_f32`]: the contiguous f32 data of CPU tensors (inside `bwd`).
//! - [`use_cpu_kernel`]: whether the fused CPU kernel applies, else the op's composite of candle
//!   primitives (other devices, other dtypes, [`Autocast`] or [`force_composite`] on this thread).
//! - [`Autocast`] / [`matmul_dtype`]: mixed precision per thread, as `torch.autocast`;
//!   [`matmul`]: the composites' matrix product (bf16 also on the CPU).
//! - [`for_rows`]: a closure over the rows of an output, on the rayon pool when the work is large.
//! - [`rows_reduce`]: the same with one accumulator per thread (weight and bias gradients),
//!   summed in a fixed order.
//! - [`add_assign`]: `acc += x`, multiversioned.
//! - [`gemm_f32`]: `dst (+)= a·b` on strided operands ([`Mat`]), the matrix product of every kernel.

use std::cell::Cell;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Work below this many output elements stays on the calling thread: spawning costs more.
pub const PAR_MIN: usize = 1 << 14;

/// The f32 data `layout` addresses in `storage`, which must be contiguous.
pub fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(s) = storage else { candle_core::bail!("{what}: expected f32 storage") };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 data of CPU tensors (a strided tensor is copied first).
pub fn with_f32<R>(ts: &[&Tensor], what: &str, f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (g, l) in &guards {
        match &**g {
            Storage::Cpu(s) => slices.push(f32_slice(s, l, what)?),
            _ => candle_core::bail!("{what}: CPU tensors only"),
        }
    }
    f(&slices)
}

thread_local! {
    static FORCE_COMPOSITE: Cell<bool> = const { Cell::new(false) };
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Mixed precision as `torch.autocast` does it, for the ops called from this thread while the
/// guard lives: matrix products (Linear, conv) run in `dtype` (bf16), normalisations, softmax
/// and losses in f32, and the residual stream stays in the parameters' dtype (f32). `None` or
/// f32: everything in f32. Restores the previous setting when dropped.
pub struct Autocast(Option<DType>);

impl Autocast {
    pub fn enter(dtype: Option<DType>) -> Autocast {
        let dtype = dtype.filter(|d| *d != DType::F32);
        Autocast(AUTOCAST.with(|a| a.replace(dtype)))
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.0));
    }
}

/// The dtype matrix products run in on this thread: the [`Autocast`] dtype, else `fallback`
/// (the operand's own).
pub fn matmul_dtype(fallback: DType) -> DType {
    AUTOCAST.with(|a| a.get()).unwrap_or(fallback)
}

/// Routes every op called from this thread through its composite of candle primitives (the path
/// CUDA and bf16 take) even for f32 CPU tensors: how the composites are checked against the fused
/// kernels on a machine without a GPU. Per thread, so parallel tests do not see each other's.
pub fn force_composite(on: bool) {
    FORCE_COMPOSITE.with(|f| f.set(on));
}

/// `a.broadcast_matmul(b)` for the composites. candle has no bf16 matmul on the CPU: there the
/// product is taken in f32 and rounded back, as cuBLAS computes bf16 GEMMs (bf16 operands, f32
/// accumulation, bf16 result), so the mixed-precision path runs (and is tested) without a GPU.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == DType::BF16 {
        a.to_dtype(DType::F32)?.broadcast_matmul(&b.to_dtype(DType::F32)?)?.to_dtype(DType::BF16)
    } else {
        a.broadcast_matmul(b)
    }
}

/// `y + b` (b broadcast) for the composites, with the sum (and so b's gradient, a reduction over
/// the broadcast dims) in f32 when y is in a lower precision, as PyTorch accumulates bias
/// gradients; the result has y's dtype.
pub fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::cuda::applies(&[y]) && b.rank() == 1 && y.dims().last() == Some(&b.dim(0)?) {
        return super::cuda::bias_add(y, b);
    }
    if y.dtype() == DType::F32 {
        y.broadcast_add(&b.to_dtype(DType::F32)?)
    } else {
        y.to_dtype(DType::F32)?.broadcast_add(&b.to_dtype(DType::F32)?)?.to_dtype(y.dtype())
    }
}

/// Whether the fused CPU kernels apply (f32 tensors on the CPU, composites not forced); the ops
/// fall back to their composite of candle primitives otherwise.
pub fn use_cpu_kernel(ts: &[&Tensor]) -> bool {
    !FORCE_COMPOSITE.with(|f| f.get())
        && AUTOCAST.with(|a| a.get()).is_none()
        && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// `f(i, row)` over `dst` cut into rows of `width`, in parallel when the work is large.
pub fn for_rows(dst: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if width == 0 {
        return;
    }
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        dst.chunks_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// `f(i, row, acc)` over `dst` cut into rows of `width`, one block of consecutive rows per
/// thread, each block with its own accumulator of `acc_len` zeros; returns the accumulators
/// summed in block order (deterministic for a thread count).
pub fn rows_reduce(
    dst: &mut [f32],
    width: usize,
    acc_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut sum = vec![0f32; acc_len];
    if width == 0 {
        return sum;
    }
    let rows = dst.len() / width;
    let block = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let partials: Vec<Vec<f32>> = dst
        .par_chunks_mut(block * width)
        .enumerate()
        .map(|(c, blk)| {
            let mut acc = vec![0f32; acc_len];
            for (r, row) in blk.chunks_mut(width).enumerate() {
                f(c * block + r, row, &mut acc);
            }
            acc
        })
        .collect();
    for p in partials {
        add_assign(&mut sum, &p);
    }
    sum
}

frangi::multiversion! {
    /// acc += x.
    pub fn add_assign(acc: &mut [f32], x: &[f32]) {
        for (a, v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
}

/// A strided f32 matrix operand: its data, row stride and column stride (a transpose is the same
/// data with the strides swapped).
#[derive(Clone, Copy)]
pub struct Mat<'a>(pub &'a [f32], pub usize, pub usize);

/// Row-major `dst (m×n, row stride dst_rs) = [dst +] a (m×k) · b (k×n)` through gemm's kernels, on
/// `threads` rayon threads (1: the calling thread).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    let (Mat(a, a_rs, a_cs), Mat(b, b_rs, b_cs)) = (a, b);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * dst_rs..i * dst_rs + n].fill(0.0));
        }
        return;
    }
    assert!(
        dst.len() > (m - 1) * dst_rs + n - 1
            && a.len() > (m - 1) * a_rs + (k - 1) * a_cs
            && b.len() > (k - 1) * b_rs + (n - 1) * b_cs
    );
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
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
            par,
        )
    }
}
