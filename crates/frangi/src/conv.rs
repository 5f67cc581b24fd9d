//! The Hessian's separable filtering, fused row by row.
//!
//! Every 1-D pass is scipy's `correlate1d` with mode 'reflect' (half-sample symmetric,
//! repeated with period 2N for kernels wider than the image): `out[i] = sum_t c[t] in[reflect(i+t-r)]`,
//! `c.len() == 2r + 1`, the reversed Gaussian (derivative) kernel. As in scipy, taps are paired
//! (`c[r] x_0 + sum_k c[r-k] (x_-k +- x_+k)`), so an odd kernel gives exactly 0 on a constant
//! region: Frangi's gamma is a maximum over the image and would otherwise amplify rounding noise.
//!
//! Speed: an axis-0 pass for one output row is immediately followed by the axis-1 pass on that
//! row (no full-image temporary), the phi and phi1 passes over the same input share their loads,
//! and the inner loops work on blocks of `LANES` outputs so accumulators stay in vector
//! registers. A copy compiled for AVX-512 or AVX2+FMA is picked at run time
//! ([`multiversion!`](crate::multiversion)); those copies use fused multiply-adds.

use crate::hessian::{reflect_index, SigmaKernels};
use crate::Real;

const LANES: usize = 64;

/// Buffers reused across sigmas and images (one set per worker thread).
pub(crate) struct Workspace<T> {
    gr: Vec<T>,
    gc: Vec<T>,
    lines: [Vec<T>; 3],
    rows: [Vec<T>; 3],
    starts: Vec<usize>,
    line_starts: Vec<usize>,
}

impl<T: Real> Workspace<T> {
    pub fn new(n: usize) -> Self {
        Workspace {
            gr: vec![T::ZERO; n],
            gc: vec![T::ZERO; n],
            lines: Default::default(),
            rows: Default::default(),
            starts: Vec::new(),
            line_starts: Vec::new(),
        }
    }
}

crate::multiversion! {
    /// Calls `f(i, H_rr[i], H_rc[i], H_cc[i])` for every row `i` of the Hessian of `img` at one
    /// sigma.
    pub(crate) fn hessian_rows<T, F>(
        img: &[T],
        h: usize,
        w: usize,
        k: &SigmaKernels<T>,
        ws: &mut Workspace<T>,
        f: F,
    ) where
        T: Real,
        F: FnMut(usize, &[T], &[T], &[T]),
    {
        hessian_rows_impl::<T, F, FMA>(img, h, w, k, ws, f)
    }
}

/// scipy's `gaussian_filter(order=[a, b])` filters axis 0, then axis 1 (`[axis-0 | axis-1]`):
/// pass 1  g_r = [phi1 | phi](img),  g_c = [phi | phi1](img)
/// pass 2  H_rr = [phi1 | phi](g_r), H_rc = [phi | phi1](g_r), H_cc = [phi | phi1](g_c).
/// Same-axis passes are never merged: reflecting the output of an odd kernel is not the same as
/// reflecting its input, so merging would change the borders.
#[inline(always)]
fn hessian_rows_impl<T: Real, F: FnMut(usize, &[T], &[T], &[T]), const FMA: bool>(
    img: &[T],
    h: usize,
    w: usize,
    k: &SigmaKernels<T>,
    ws: &mut Workspace<T>,
    mut f: F,
) {
    let r = k.phi.len() / 2;
    let Workspace { gr, gc, lines, rows, starts, line_starts } = ws;
    line_starts.clear();
    line_starts.extend(0..2 * r + 1);
    for l in lines.iter_mut() {
        l.resize(w + 2 * r, T::ZERO);
    }
    for row in rows.iter_mut() {
        row.resize(w, T::ZERO);
    }
    let [la, lb, lc] = lines;
    let [rr, rc, cc] = rows;
    for i in 0..h {
        row_starts(starts, i, h, w, r);
        axis0_pair::<T, FMA>(img, starts, &k.phi, &k.phi1, &mut la[r..r + w], &mut lb[r..r + w]);
        pad(la, r, w);
        pad(lb, r, w);
        // la = [phi | .](img), lb = [phi1 | .](img)
        paired::<T, FMA, false>(lb, line_starts, &k.phi, &mut gr[i * w..(i + 1) * w]);
        paired::<T, FMA, true>(la, line_starts, &k.phi1, &mut gc[i * w..(i + 1) * w]);
    }
    for i in 0..h {
        row_starts(starts, i, h, w, r);
        axis0_pair::<T, FMA>(gr, starts, &k.phi, &k.phi1, &mut lb[r..r + w], &mut la[r..r + w]);
        paired::<T, FMA, false>(gc, starts, &k.phi, &mut lc[r..r + w]);
        pad(la, r, w);
        pad(lb, r, w);
        pad(lc, r, w);
        paired::<T, FMA, false>(la, line_starts, &k.phi, rr);
        paired::<T, FMA, true>(lb, line_starts, &k.phi1, rc);
        paired::<T, FMA, true>(lc, line_starts, &k.phi1, cc);
        f(i, rr, rc, cc);
    }
}

/// Offsets of the input rows that output row `i` reads: `reflect(i + t - r) * w`.
#[inline(always)]
fn row_starts(starts: &mut Vec<usize>, i: usize, h: usize, w: usize, r: usize) {
    starts.clear();
    starts.extend((0..2 * r + 1).map(|t| reflect_index(i as isize + t as isize - r as isize, h) * w));
}

/// Fill `line[..r]` and `line[r + w..]` by reflecting `line[r..r + w]`.
#[inline(always)]
fn pad<T: Real>(line: &mut [T], r: usize, w: usize) {
    for k in (0..r).chain(r + w..w + 2 * r) {
        line[k] = line[r + reflect_index(k as isize - r as isize, w)];
    }
}

#[inline(always)]
fn fma<T: Real, const FMA: bool>(x: T, c: T, acc: T) -> T {
    if FMA {
        x.mul_add(c, acc)
    } else {
        acc + x * c
    }
}

/// Axis 0, even (`phi`) and odd (`phi1`) kernels on the same rows: one set of loads, two outputs.
#[inline(always)]
fn axis0_pair<T: Real, const FMA: bool>(
    src: &[T],
    starts: &[usize],
    phi: &[T],
    phi1: &[T],
    even: &mut [T],
    odd: &mut [T],
) {
    let r = phi.len() / 2;
    let n = even.len();
    let mut j0 = 0;
    while j0 + LANES <= n {
        let mut ae = [T::ZERO; LANES];
        let mut ao = [T::ZERO; LANES];
        let x0: &[T; LANES] = src[starts[r] + j0..starts[r] + j0 + LANES].try_into().unwrap();
        for q in 0..LANES {
            ae[q] = x0[q] * phi[r];
        }
        for t in 0..r {
            let a: &[T; LANES] = src[starts[t] + j0..starts[t] + j0 + LANES].try_into().unwrap();
            let b: &[T; LANES] = src[starts[2 * r - t] + j0..starts[2 * r - t] + j0 + LANES].try_into().unwrap();
            for q in 0..LANES {
                ae[q] = fma::<T, FMA>(a[q] + b[q], phi[t], ae[q]);
                ao[q] = fma::<T, FMA>(a[q] - b[q], phi1[t], ao[q]);
            }
        }
        even[j0..j0 + LANES].copy_from_slice(&ae);
        odd[j0..j0 + LANES].copy_from_slice(&ao);
        j0 += LANES;
    }
    for j in j0..n {
        let mut ae = src[starts[r] + j] * phi[r];
        let mut ao = T::ZERO;
        for t in 0..r {
            let (a, b) = (src[starts[t] + j], src[starts[2 * r - t] + j]);
            ae = fma::<T, FMA>(a + b, phi[t], ae);
            ao = fma::<T, FMA>(a - b, phi1[t], ao);
        }
        even[j] = ae;
        odd[j] = ao;
    }
}

/// `out[j] = c[r] x_0 + sum_{t<r} c[t] (x_t +- x_{2r-t})` with `x_t = src[starts[t] + j]`:
/// an axis-0 pass when `starts` are row offsets, an axis-1 pass on a reflect-padded line when
/// they are `0..=2r` (`line.len() == out.len() + 2r`).
#[inline(always)]
fn paired<T: Real, const FMA: bool, const ODD: bool>(src: &[T], starts: &[usize], c: &[T], out: &mut [T]) {
    let r = c.len() / 2;
    let n = out.len();
    let pair = |a: T, b: T| if ODD { a - b } else { a + b };
    let mut j0 = 0;
    while j0 + LANES <= n {
        let mut acc = [T::ZERO; LANES];
        if !ODD {
            let x0: &[T; LANES] = src[starts[r] + j0..starts[r] + j0 + LANES].try_into().unwrap();
            for q in 0..LANES {
                acc[q] = x0[q] * c[r];
            }
        }
        for t in 0..r {
            let a: &[T; LANES] = src[starts[t] + j0..starts[t] + j0 + LANES].try_into().unwrap();
            let b: &[T; LANES] = src[starts[2 * r - t] + j0..starts[2 * r - t] + j0 + LANES].try_into().unwrap();
            for q in 0..LANES {
                acc[q] = fma::<T, FMA>(pair(a[q], b[q]), c[t], acc[q]);
            }
        }
        out[j0..j0 + LANES].copy_from_slice(&acc);
        j0 += LANES;
    }
    for j in j0..n {
        let mut acc = if ODD { T::ZERO } else { src[starts[r] + j] * c[r] };
        for t in 0..r {
            acc = fma::<T, FMA>(pair(src[starts[t] + j], src[starts[2 * r - t] + j]), c[t], acc);
        }
        out[j] = acc;
    }
}
