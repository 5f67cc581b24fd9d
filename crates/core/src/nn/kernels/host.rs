//! The host-slice layer every CPU kernel stands on:
//!
//! - [`f32_slice`]: the contiguous f32 data of a storage and layout (inside `cpu_fwd`).
//! - [`with_f32`]: the contiguous f32 data of CPU tensors (inside `bwd`).
//! - [`use_cpu_kernel`]: whether the fused CPU kernel applies, else the op's composite of candle
//!   primitives (other devices, other dtypes, [`Autocast`] or [`force_composite`] on this thread).
//! - [`Autocast`] / [`matmul_dtype`]: mixed precision per thread, as `torch.autocast`;
//!   [`matmul`]: the composites' matrix product (bf16 also on the CPU).
//! - [`for_rows`]: a closure over the rows of an output, on the rayon pool when the work is large;
//!   [`rows_new`] the same on a new output, [`zeroed`] a new zero-filled array (each without a
//!   serial zero-fill of the whole array first).
//! - [`rows_reduce`]: the same with one accumulator per thread (weight and bias gradients),
//!   summed in a fixed order.
//! - [`add_assign`]: `acc += x`, multiversioned.
//! - [`gemm_f32`]: `dst (+)= a·b` on strided operands ([`Mat`]), the matrix product of every kernel;
//!   [`gemm_new`] into a new array.

use std::cell::Cell;
use std::mem::MaybeUninit;

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

/// A new array of `len` elements cut into rows of `width`, each row zero-filled and then given to
/// `f(i, row)`, in parallel when large: `vec![0.0; len]` followed by [`for_rows`], but each row
/// is zeroed by the thread that writes it, just before (in its cache), instead of the whole
/// array by the calling thread first. A serial zero-fill of every output was 5–9 % of a
/// training step's time on 2 cores, all of it on one thread while the other waited.
pub fn rows_new(len: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    if width == 0 || len == 0 {
        return vec![0.0; len];
    }
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let run = |i: usize, r: &mut [MaybeUninit<f32>]| {
        r.fill(MaybeUninit::new(0.0));
        // SAFETY: every element of `r` was just initialised.
        f(i, unsafe { &mut *(r as *mut [MaybeUninit<f32>] as *mut [f32]) })
    };
    let spare = &mut v.spare_capacity_mut()[..len];
    if len >= PAR_MIN {
        spare.par_chunks_mut(width).enumerate().for_each(|(i, r)| run(i, r));
    } else {
        spare.chunks_mut(width).enumerate().for_each(|(i, r)| run(i, r));
    }
    // SAFETY: the chunks cover the first `len` elements, and `run` initialised each of them.
    unsafe { v.set_len(len) };
    v
}

/// `vec![0.0; len]`, zero-filled in parallel when large ([`rows_new`]).
pub fn zeroed(len: usize) -> Vec<f32> {
    rows_new(len, PAR_MIN, |_, _| {})
}

/// A new array of `len` elements cut into rows of `width`, given to `f(i, row, acc)` zero-filled
/// ([`rows_new`]), one block of consecutive rows per thread, each block with its own accumulator
/// of `acc_len` zeros. Returns the array and the accumulators summed in block order
/// (deterministic for a thread count).
pub fn rows_reduce(
    len: usize,
    width: usize,
    acc_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0f32; acc_len];
    if width == 0 || len == 0 {
        return (vec![0.0; len], sum);
    }
    let block = (len / width).div_ceil(rayon::current_num_threads().max(1)).max(1);
    let mut partials = vec![Vec::new(); len.div_ceil(block * width)];
    let slots = std::sync::Mutex::new(&mut partials);
    let dst = rows_new(len, block * width, |c, blk| {
        let mut acc = vec![0f32; acc_len];
        for (r, row) in blk.chunks_mut(width).enumerate() {
            f(c * block + r, row, &mut acc);
        }
        slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[c] = acc;
    });
    for p in partials {
        add_assign(&mut sum, &p);
    }
    (dst, sum)
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

/// A new row-major (m×n) array `a (m×k) · b (k×n)`: [`gemm_f32`] writing into fresh memory
/// (no zero-fill first: gemm writes every element when it does not accumulate).
pub fn gemm_new(m: usize, n: usize, k: usize, a: Mat, b: Mat, threads: usize) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: dst has room for the m×n elements (row stride n), which gemm writes (no
    // accumulation) through the pointer before `set_len`.
    unsafe {
        gemm_raw((m, n, k), dst.as_mut_ptr(), n, false, a, b, threads);
        dst.set_len(m * n);
    }
    dst
}

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
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * dst_rs..i * dst_rs + n].fill(0.0));
        }
        return;
    }
    assert!(dst.len() > (m - 1) * dst_rs + n - 1);
    // SAFETY: the assert bounds every element of dst the product writes; dst does not alias a or b.
    unsafe { gemm_raw((m, n, k), dst.as_mut_ptr(), dst_rs, accumulate, a, b, threads) }
}

/// The gemm call behind [`gemm_f32`] and [`gemm_new`] (m, n, k > 0); checks that the strides stay
/// inside `a` and `b`.
///
/// # Safety
/// `dst` must be valid for writes (and reads when accumulating) of the m×n elements at row stride
/// `dst_rs`, and must not alias `a` or `b`.
unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    let (Mat(a, a_rs, a_cs), Mat(b, b_rs, b_cs)) = (a, b);
    assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs && b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the assert bounds every element of a and b the strides reach; dst is the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocating helpers equal what they replace (zero-filled array + [`for_rows`] /
    /// [`gemm_f32`]) on sizes below and above the parallel threshold, ragged last rows included.
    #[test]
    fn new_arrays_equal_zero_fill_and_write() {
        for &(len, width) in &[(0, 3), (7, 3), (1000, 7), (PAR_MIN * 3 + 5, 129), (PAR_MIN * 2, PAR_MIN)] {
            // A writer that leaves some elements alone: they must read as zeros.
            let f = |i: usize, r: &mut [f32]| {
                r.iter_mut().step_by(2).enumerate().for_each(|(j, v)| *v = (i * 31 + j) as f32)
            };
            let mut want = vec![0f32; len];
            for_rows(&mut want, width, f);
            assert_eq!(rows_new(len, width, f), want, "rows_new({len}, {width})");
            assert_eq!(zeroed(len), vec![0f32; len]);
            let g = |i: usize, r: &mut [f32], acc: &mut [f32]| {
                f(i, r);
                acc[i % acc.len()] += r.iter().sum::<f32>();
            };
            let (dst, sum) = rows_reduce(len, width, 5, g);
            assert_eq!(dst, want, "rows_reduce({len}, {width}) rows");
            let total: f32 = want.iter().sum();
            assert!((sum.iter().sum::<f32>() - total).abs() <= 1e-3 * total.abs().max(1.0), "rows_reduce sums");
        }
        let mut rng = crate::nn::InitRng::new(3);
        for &(m, n, k) in &[(1, 1, 1), (5, 7, 3), (64, 48, 33), (3, 4, 0)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let mut want = vec![f32::NAN; m * n];
            gemm_f32(m, n, k, &mut want, n, false, Mat(&a, k, 1), Mat(&b, 1, k), 2);
            // b read transposed: (k, n) with column stride k.
            assert_eq!(gemm_new(m, n, k, Mat(&a, k, 1), Mat(&b, 1, k), 2), want, "gemm_new {m}x{n}x{k}");
        }
    }
}
