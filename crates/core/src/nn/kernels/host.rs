//! The host-slice layer every CPU kernel stands on:
//!
//! - [`f32_slice`]: the contiguous f32 data of a storage and layout (inside `cpu_fwd`).
//! - [`with_f32`]: the contiguous f32 data of CPU tensors (inside `bwd`).
//! - [`use_cpu_kernel`] / [`check_cpu_f32`]: whether a kernel applies, or an error saying why not.
//! - [`for_rows`]: a closure over the rows of an output, on the rayon pool when the work is large.
//! - [`rows_reduce`]: the same with one accumulator per thread (weight and bias gradients),
//!   summed in a fixed order.
//! - [`add_assign`]: `acc += x`, multiversioned.
//! - [`gemm_f32`]: `dst (+)= a·b` on strided operands ([`Mat`]), the matrix product of every kernel.

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

/// Whether the CPU kernels apply (f32 tensors on the CPU); the ops fall back to candle
/// primitives otherwise.
pub fn use_cpu_kernel(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// An error naming the op unless every tensor is f32 on the CPU (ops without a fallback).
pub fn check_cpu_f32(ts: &[&Tensor], what: &str) -> Result<()> {
    for t in ts {
        if !t.device().is_cpu() || t.dtype() != DType::F32 {
            candle_core::bail!("{what}: f32 CPU tensors only (got {:?} on {:?})", t.dtype(), t.device());
        }
    }
    Ok(())
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
