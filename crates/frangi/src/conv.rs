//! 1-D correlation along one axis of a row-major image with scipy's 'reflect' border
//! (half-sample symmetric, repeated with period 2N for kernels wider than the image).
//!
//! `out[i] = sum_t c[t] * in[reflect(i + t - r)]` with `c.len() == 2r + 1`: this is
//! `scipy.ndimage.correlate1d`, which `gaussian_filter1d` calls with the reversed kernel.
//! The inner loops work on blocks of `LANES` outputs so the compiler keeps the accumulators in
//! vector registers; on x86-64 CPUs with AVX2+FMA a copy compiled for them is picked at run time.

use crate::hessian::reflect_index;
use crate::Real;

const LANES: usize = 64;

/// Scratch buffers reused across calls (one set per worker thread).
#[derive(Default)]
pub(crate) struct Scratch<T> {
    line: Vec<T>,
    starts: Vec<usize>,
}

/// Correlate along axis 0 (down the columns): `dst[i][j] = sum_t c[t] src[reflect(i+t-r)][j]`.
pub(crate) fn along_rows<T: Real>(
    src: &[T],
    dst: &mut [T],
    h: usize,
    w: usize,
    c: &[T],
    s: &mut Scratch<T>,
) {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        // SAFETY: the CPU supports the features each copy was compiled for (checked at run time).
        Simd::Avx512 => return unsafe { along_rows_avx512(src, dst, h, w, c, s) },
        Simd::Avx2 => return unsafe { along_rows_avx2(src, dst, h, w, c, s) },
        Simd::None => {}
    }
    along_rows_impl::<T, false>(src, dst, h, w, c, s)
}

/// Correlate along axis 1 (within each row): `dst[i][j] = sum_t c[t] src[i][reflect(j+t-r)]`.
pub(crate) fn along_cols<T: Real>(
    src: &[T],
    dst: &mut [T],
    h: usize,
    w: usize,
    c: &[T],
    s: &mut Scratch<T>,
) {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        // SAFETY: as above.
        Simd::Avx512 => return unsafe { along_cols_avx512(src, dst, h, w, c, s) },
        Simd::Avx2 => return unsafe { along_cols_avx2(src, dst, h, w, c, s) },
        Simd::None => {}
    }
    along_cols_impl::<T, false>(src, dst, h, w, c, s)
}

#[cfg(target_arch = "x86_64")]
enum Simd {
    Avx512,
    Avx2,
    None,
}

#[cfg(target_arch = "x86_64")]
fn simd_level() -> Simd {
    use std::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx2") && has!("fma") {
        Simd::Avx512
    } else if has!("avx2") && has!("fma") {
        Simd::Avx2
    } else {
        Simd::None
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn along_rows_avx512<T: Real>(src: &[T], dst: &mut [T], h: usize, w: usize, c: &[T], s: &mut Scratch<T>) {
    along_rows_impl::<T, true>(src, dst, h, w, c, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn along_cols_avx512<T: Real>(src: &[T], dst: &mut [T], h: usize, w: usize, c: &[T], s: &mut Scratch<T>) {
    along_cols_impl::<T, true>(src, dst, h, w, c, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn along_rows_avx2<T: Real>(
    src: &[T],
    dst: &mut [T],
    h: usize,
    w: usize,
    c: &[T],
    s: &mut Scratch<T>,
) {
    along_rows_impl::<T, true>(src, dst, h, w, c, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn along_cols_avx2<T: Real>(
    src: &[T],
    dst: &mut [T],
    h: usize,
    w: usize,
    c: &[T],
    s: &mut Scratch<T>,
) {
    along_cols_impl::<T, true>(src, dst, h, w, c, s)
}

#[inline(always)]
fn along_rows_impl<T: Real, const FMA: bool>(
    src: &[T],
    dst: &mut [T],
    h: usize,
    w: usize,
    c: &[T],
    s: &mut Scratch<T>,
) {
    let r = c.len() / 2;
    for i in 0..h {
        s.starts.clear();
        s.starts
            .extend((0..c.len()).map(|t| reflect_index(i as isize + t as isize - r as isize, h) * w));
        weighted_sum::<T, FMA>(&mut dst[i * w..(i + 1) * w], c, src, &s.starts);
    }
}

#[inline(always)]
fn along_cols_impl<T: Real, const FMA: bool>(
    src: &[T],
    dst: &mut [T],
    h: usize,
    w: usize,
    c: &[T],
    s: &mut Scratch<T>,
) {
    let r = c.len() / 2;
    s.starts.clear();
    s.starts.extend(0..c.len());
    s.line.resize(w + 2 * r, T::ZERO);
    for i in 0..h {
        let row = &src[i * w..(i + 1) * w];
        for (k, v) in s.line.iter_mut().enumerate() {
            *v = row[reflect_index(k as isize - r as isize, w)];
        }
        weighted_sum::<T, FMA>(&mut dst[i * w..(i + 1) * w], c, &s.line, &s.starts);
    }
}

/// `out[j] = sum_t c[t] * src[starts[t] + j]` for `j in 0..out.len()`, with scipy's pairing of
/// taps for symmetric and antisymmetric kernels (`c[r] x_0 + sum_k c[r-k] (x_-k +- x_+k)`), so an
/// odd (derivative) kernel gives exactly 0 on a constant region, as in scipy. That exact zero
/// matters: Frangi's gamma is a maximum over the image and would otherwise amplify rounding noise.
#[inline(always)]
fn weighted_sum<T: Real, const FMA: bool>(out: &mut [T], c: &[T], src: &[T], starts: &[usize]) {
    let r = c.len() / 2;
    let odd = (1..=r).all(|k| c[r - k] == -c[r + k]) && c[r] == T::ZERO;
    if odd {
        paired::<T, FMA, true>(out, c, src, starts)
    } else {
        debug_assert!((1..=r).all(|k| c[r - k] == c[r + k]), "kernel neither even nor odd");
        paired::<T, FMA, false>(out, c, src, starts)
    }
}

#[inline(always)]
fn paired<T: Real, const FMA: bool, const ODD: bool>(out: &mut [T], c: &[T], src: &[T], starts: &[usize]) {
    let r = c.len() / 2;
    let n = out.len();
    let fma = |x: T, w: T, acc: T| if FMA { x.mul_add(w, acc) } else { acc + x * w };
    let pair = |a: T, b: T| if ODD { a - b } else { a + b };
    let mut j0 = 0;
    while j0 + LANES <= n {
        let mut acc = [T::ZERO; LANES];
        if !ODD {
            let x: &[T; LANES] = src[starts[r] + j0..starts[r] + j0 + LANES].try_into().unwrap();
            for k in 0..LANES {
                acc[k] = x[k] * c[r];
            }
        }
        for t in 0..r {
            let (lo, hi) = (starts[t] + j0, starts[2 * r - t] + j0);
            let a: &[T; LANES] = src[lo..lo + LANES].try_into().unwrap();
            let b: &[T; LANES] = src[hi..hi + LANES].try_into().unwrap();
            for k in 0..LANES {
                acc[k] = fma(pair(a[k], b[k]), c[t], acc[k]);
            }
        }
        out[j0..j0 + LANES].copy_from_slice(&acc);
        j0 += LANES;
    }
    for (j, o) in out.iter_mut().enumerate().skip(j0) {
        let mut acc = if ODD { T::ZERO } else { src[starts[r] + j] * c[r] };
        for t in 0..r {
            acc = fma(pair(src[starts[t] + j], src[starts[2 * r - t] + j]), c[t], acc);
        }
        *o = acc;
    }
}
