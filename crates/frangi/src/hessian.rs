//! Gaussian-derivative Hessian exactly as scikit-image >= 0.20 computes it
//! (`hessian_matrix(..., use_gaussian_derivatives=True)`): two passes of first-derivative
//! Gaussians of s = sigma/sqrt(2), scipy kernels and borders, no sigma^2 scaling.

pub(crate) use crate::conv::{hessian_rows, Workspace};
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
            return Err(Error::Param { name: "sigma", value: sigma.to_string(), expected: "a finite number > 0" });
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

/// Hessian of `img` (h x w) at `sigma`, as scikit-image computes it.
pub fn hessian<T: Real>(img: &[T], h: usize, w: usize, sigma: f64) -> Result<Hessian<T>> {
    check_shape(img.len(), h, w)?;
    let k = SigmaKernels::<T>::new(sigma)?;
    let n = img.len();
    let mut out = Hessian { rr: vec![T::ZERO; n], rc: vec![T::ZERO; n], cc: vec![T::ZERO; n] };
    hessian_rows(img, h, w, &k, &mut Workspace::new(n), |i, rr, rc, cc| {
        out.rr[i * w..(i + 1) * w].copy_from_slice(rr);
        out.rc[i * w..(i + 1) * w].copy_from_slice(rc);
        out.cc[i * w..(i + 1) * w].copy_from_slice(cc);
    });
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_is_half_sample_symmetric_and_periodic() {
        // n = 4: ... d c b a | a b c d | d c b a | a b ...
        let got: Vec<usize> = (-6..10).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(got, vec![2, 3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0, 1]);
        // 1 pixel: every index maps to it.
        assert!((-100..100).all(|i| reflect_index(i, 1) == 0));
    }

    #[test]
    fn kernel_radii_follow_scikit_image_truncation() {
        for (sigma, r) in [(1.0, 71), (2.0, 11), (3.0, 17), (4.0, 23), (5.0, 28), (7.0, 40), (9.0, 51), (0.5, 35)] {
            let (phi, phi1) = gaussian_kernels(sigma);
            assert_eq!(phi.len(), 2 * r + 1, "sigma {sigma}");
            assert_eq!(phi1.len(), 2 * r + 1);
            assert!((phi.iter().sum::<f64>() - 1.0).abs() < 1e-14);
            // Correlation weights of a derivative kernel: reversed, so the weight of the
            // sample *after* the centre is positive (out ~ d/dx of the smoothed signal).
            assert!(phi1[r + 1] > 0.0 && phi1[r - 1] < 0.0 && phi1[r] == 0.0);
        }
    }

    #[test]
    fn trimmed_kernels_keep_every_tap_that_matters() {
        let k64 = SigmaKernels::<f64>::new(1.0).unwrap();
        let k32 = SigmaKernels::<f32>::new(1.0).unwrap();
        assert!(k64.phi.len() < 143 && k64.phi.len() >= 13, "{}", k64.phi.len());
        assert!(k32.phi.len() <= k64.phi.len());
        assert_eq!(SigmaKernels::<f64>::new(4.0).unwrap().phi.len(), 47);
    }

    #[test]
    fn hessian_of_a_quadratic_is_constant_inside() {
        // f(r, c) = r^2 + 3 r c - c^2: H_rr = 2, H_rc = 3, H_cc = -2 wherever the kernel does
        // not reach a border (the Gaussian derivatives of a quadratic are exact).
        let (h, w) = (64, 64);
        let img: Vec<f64> = (0..h * w)
            .map(|i| {
                let (r, c) = ((i / w) as f64, (i % w) as f64);
                r * r + 3.0 * r * c - c * c
            })
            .collect();
        let hs = hessian(&img, h, w, 2.0).unwrap();
        let i = 32 * w + 32;
        assert!((hs.rr[i] - 2.0).abs() < 1e-9, "{}", hs.rr[i]);
        assert!((hs.rc[i] - 3.0).abs() < 1e-9, "{}", hs.rc[i]);
        assert!((hs.cc[i] + 2.0).abs() < 1e-9, "{}", hs.cc[i]);
    }

    #[test]
    fn bad_sigma_and_shape_are_errors() {
        assert!(hessian(&[0.0f64; 4], 2, 2, 0.0).unwrap_err().to_string().contains("sigma"));
        assert!(hessian(&[0.0f64; 4], 2, 2, f64::NAN).is_err());
        let e = hessian(&[0.0f64; 5], 2, 2, 1.0).unwrap_err().to_string();
        assert!(e.contains("5 values") && e.contains("2x2"), "{e}");
        assert!(hessian(&[0.0f64; 0], 0, 0, 1.0).is_err());
    }

    #[test]
    fn eigenvalues_are_sorted_decreasing() {
        let (a, b) = eigvals(1.0f64, 0.0, 5.0);
        assert_eq!((a, b), (5.0, 1.0));
        let (a, b) = eigvals(2.0f64, 1.0, 2.0);
        assert!((a - 3.0).abs() < 1e-15 && (b - 1.0).abs() < 1e-15);
    }
}
