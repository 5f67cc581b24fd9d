//! Gaussian-derivative Hessian exactly as scikit-image >= 0.20 computes it
//! (`hessian_matrix(..., use_gaussian_derivatives=True)`): two passes of first-derivative
//! Gaussians of s = sigma/sqrt(2), scipy kernels and borders, no sigma^2 scaling.

use crate::conv::{along_cols, along_rows, Scratch};
use crate::{check_shape, Error, Real, Result};

/// The three distinct entries of the 2x2 Hessian at every pixel, row-major.
#[derive(Debug, Clone)]
pub struct Hessian<T> {
    pub rr: Vec<T>,
    pub rc: Vec<T>,
    pub cc: Vec<T>,
}

/// scipy 'reflect' (half-sample symmetric, `d c b a | a b c d | d c b a`), period 2n.
#[inline(always)]
pub fn reflect_index(i: isize, n: usize) -> usize {
    let n2 = 2 * n as isize;
    let m = i.rem_euclid(n2);
    if m >= n as isize {
        (n2 - 1 - m) as usize
    } else {
        m as usize
    }
}

/// scipy's Gaussian kernel and its first derivative for one pass of `sigma`:
/// s = sigma/sqrt(2), radius = floor(truncate*s + 0.5) with truncate 100 for sigma <= 1 and 8
/// otherwise, phi normalised to sum 1, phi1(x) = -x/s^2 phi(x). Returned as the weights of a
/// correlation (the kernel reversed), over x = -radius..=radius.
pub fn gaussian_kernels(sigma: f64) -> (Vec<f64>, Vec<f64>) {
    let truncate = if sigma > 1.0 { 8.0 } else { 100.0 };
    let s = sigma * std::f64::consts::FRAC_1_SQRT_2;
    let r = (truncate * s + 0.5) as isize;
    let s2 = s * s;
    let xs: Vec<f64> = (-r..=r).map(|x| x as f64).collect();
    let mut phi: Vec<f64> = xs.iter().map(|x| (-0.5 / s2 * x * x).exp()).collect();
    let sum: f64 = phi.iter().sum();
    phi.iter_mut().for_each(|v| *v /= sum);
    let phi1: Vec<f64> = xs.iter().zip(&phi).map(|(x, p)| -x / s2 * p).collect();
    // Correlation weights are the reversed kernel (scipy's gaussian_filter1d does [::-1]).
    (phi.into_iter().rev().collect(), phi1.into_iter().rev().collect())
}

/// Kernels for sigma in the working precision, with the taps that cannot matter at that
/// precision cut from both ends (for sigma <= 1 the radius-71 kernel shrinks to ~13 taps).
pub(crate) struct SigmaKernels<T> {
    pub phi: Vec<T>,
    pub phi1: Vec<T>,
}

impl<T: Real> SigmaKernels<T> {
    pub fn new(sigma: f64) -> Result<Self> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::Param {
                name: "sigma",
                value: sigma.to_string(),
                expected: "a finite number > 0",
            });
        }
        let (phi, phi1) = gaussian_kernels(sigma);
        let r = phi.len() / 2;
        let max0 = phi.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let max1 = phi1.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let needed = |k: usize| phi[k].abs() >= T::TAP_EPS * max0 || phi1[k].abs() >= T::TAP_EPS * max1;
        let first = (0..r).find(|&k| needed(k)).unwrap_or(r);
        let keep = first..phi.len() - first;
        Ok(SigmaKernels {
            phi: phi[keep.clone()].iter().map(|&v| T::from_f64(v)).collect(),
            phi1: phi1[keep].iter().map(|&v| T::from_f64(v)).collect(),
        })
    }
}

/// Reusable buffers for [`hessian_into`].
pub(crate) struct Workspace<T> {
    tmp: Vec<T>,
    gr: Vec<T>,
    gc: Vec<T>,
    scratch: Scratch<T>,
}

impl<T: Real> Workspace<T> {
    pub fn new(n: usize) -> Self {
        Workspace { tmp: vec![T::ZERO; n], gr: vec![T::ZERO; n], gc: vec![T::ZERO; n], scratch: Scratch::default() }
    }
}

/// Hessian of `img` (h x w) at `sigma`, as scikit-image computes it.
pub fn hessian<T: Real>(img: &[T], h: usize, w: usize, sigma: f64) -> Result<Hessian<T>> {
    check_shape(img.len(), h, w)?;
    let k = SigmaKernels::<T>::new(sigma)?;
    let n = img.len();
    let mut out = Hessian { rr: vec![T::ZERO; n], rc: vec![T::ZERO; n], cc: vec![T::ZERO; n] };
    hessian_into(img, h, w, &k, &mut Workspace::new(n), &mut out);
    Ok(out)
}

/// The two passes. scipy's `gaussian_filter(order=[a, b])` filters axis 0 then axis 1:
/// pass 1  g_r = [phi1 | phi](img),  g_c = [phi | phi1](img)
/// pass 2  H_rr = [phi1 | phi](g_r), H_rc = [phi | phi1](g_r), H_cc = [phi | phi1](g_c)
/// (`[axis-0 kernel | axis-1 kernel]`). The order matters at the borders: reflecting the
/// output of an odd kernel is not the same as reflecting its input, so no pass is merged.
pub(crate) fn hessian_into<T: Real>(
    img: &[T],
    h: usize,
    w: usize,
    k: &SigmaKernels<T>,
    ws: &mut Workspace<T>,
    out: &mut Hessian<T>,
) {
    let Workspace { tmp, gr, gc, scratch: s } = ws;
    along_rows(img, tmp, h, w, &k.phi1, s);
    along_cols(tmp, gr, h, w, &k.phi, s);
    along_rows(img, tmp, h, w, &k.phi, s);
    along_cols(tmp, gc, h, w, &k.phi1, s);
    along_rows(gr, tmp, h, w, &k.phi1, s);
    along_cols(tmp, &mut out.rr, h, w, &k.phi, s);
    along_rows(gr, tmp, h, w, &k.phi, s);
    along_cols(tmp, &mut out.rc, h, w, &k.phi1, s);
    along_rows(gc, tmp, h, w, &k.phi, s);
    along_cols(tmp, &mut out.cc, h, w, &k.phi1, s);
}

/// Eigenvalues of [[rr, rc], [rc, cc]] in decreasing order (scikit-image's closed form).
#[inline(always)]
pub(crate) fn eigvals<T: Real>(rr: T, rc: T, cc: T) -> (T, T) {
    let half = T::from_f64(0.5);
    let mean = (rr + cc) * half;
    let d = (rr - cc) * half;
    let root = (rc * rc + d * d).sqrt();
    (mean + root, mean - root)
}
