//! Sato and Frangi vesselness (2-D) with scikit-image >= 0.20 semantics, plus the
//! scale-normalised Frangi-1998 variant as an explicit option.

use crate::hessian::{eigvals, hessian_rows, SigmaKernels, Workspace};
use crate::{check_shape, Error, Real, Result};

/// Frangi's parameters. `alpha` only matters in 3-D and is accepted for API parity.
#[derive(Debug, Clone, PartialEq)]
pub struct FrangiParams {
    pub alpha: f64,
    pub beta: f64,
    /// `None`: half the largest Hessian norm at the first sigma, reused for the others
    /// (scikit-image), or per sigma when `frangi1998` is set.
    pub gamma: Option<f64>,
    /// Frangi et al. 1998 proper: sigma^2-normalised Hessian and gamma chosen per sigma.
    /// scikit-image does neither, so its response favours the smallest scale.
    pub frangi1998: bool,
}

impl Default for FrangiParams {
    fn default() -> Self {
        FrangiParams { alpha: 0.5, beta: 0.5, gamma: None, frangi1998: false }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Sato,
    Frangi(FrangiParams),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VesselnessParams {
    pub filter: Filter,
    pub sigmas: Vec<f64>,
    /// Vessels darker than the background (contrast-filled arteries in X-ray): true.
    pub black_ridges: bool,
}

impl VesselnessParams {
    /// The VasoMIM vessel-map filter: Sato, sigma 1..4, dark ridges.
    pub fn sato() -> Self {
        VesselnessParams { filter: Filter::Sato, sigmas: vec![1.0, 2.0, 3.0, 4.0], black_ridges: true }
    }
    /// scikit-image's `frangi` defaults: sigma 1,3,5,7,9, alpha = beta = 0.5, gamma from data.
    pub fn frangi() -> Self {
        VesselnessParams {
            filter: Filter::Frangi(FrangiParams::default()),
            sigmas: vec![1.0, 3.0, 5.0, 7.0, 9.0],
            black_ridges: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.sigmas.is_empty() {
            return Err(Error::Param { name: "sigmas", value: "[]".into(), expected: "at least one sigma" });
        }
        for &s in &self.sigmas {
            if !(s.is_finite() && s > 0.0 && s <= 256.0) {
                return Err(Error::Param { name: "sigma", value: s.to_string(), expected: "a number in (0, 256]" });
            }
        }
        if let Filter::Frangi(f) = &self.filter {
            for (name, v) in [("alpha", f.alpha), ("beta", f.beta)] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(Error::Param { name, value: v.to_string(), expected: "a finite number > 0" });
                }
            }
            if let Some(g) = f.gamma {
                if !(g.is_finite() && g > 0.0) {
                    return Err(Error::Param { name: "gamma", value: g.to_string(), expected: "a finite number > 0" });
                }
            }
        }
        Ok(())
    }
}

/// The filter response of `img` (h x w, row-major), max over the sigmas.
pub fn vesselness<T: Real>(img: &[T], h: usize, w: usize, p: &VesselnessParams) -> Result<Vec<T>> {
    check_shape(img.len(), h, w)?;
    p.validate()?;
    vesselness_kernel(img, h, w, p)
}

crate::multiversion! {
    /// [`vesselness`] after the checks, compiled for the CPU's vector units (the per-pixel
    /// eigenvalues, Sato / Frangi and exp vectorise; the convolutions dispatch on their own).
    fn vesselness_kernel<T>(img: &[T], h: usize, w: usize, p: &VesselnessParams) -> Result<Vec<T>>
    where
        T: Real,
    {
        let negated: Vec<T>;
        let img = if p.black_ridges {
            img
        } else {
            negated = img.iter().map(|&v| -v).collect();
            &negated
        };
        let n = img.len();
        let mut ws = Workspace::new(n);
        let mut out = vec![T::ZERO; n];
        // Frangi needs the whole image's eigenvalues before gamma is known: (l_a, l_b) per pixel.
        let (mut la, mut lb) = match p.filter {
            Filter::Frangi(_) => (vec![T::ZERO; n], vec![T::ZERO; n]),
            Filter::Sato => (Vec::new(), Vec::new()),
        };
        let mut gamma = match &p.filter {
            Filter::Frangi(f) => f.gamma,
            Filter::Sato => None,
        };
        for &sigma in &p.sigmas {
            let k = SigmaKernels::<T>::new(sigma)?;
            match &p.filter {
                Filter::Sato => {
                    let s2 = T::from_f64(sigma * sigma);
                    hessian_rows(img, h, w, &k, &mut ws, |i, rr, rc, cc| {
                        let o = &mut out[i * w..(i + 1) * w];
                        for j in 0..w {
                            let (l0, _) = eigvals(rr[j], rc[j], cc[j]);
                            o[j] = o[j].max(s2 * l0.max(T::ZERO));
                        }
                    });
                }
                Filter::Frangi(f) => {
                    let scale = if f.frangi1998 {
                        T::from_f64(sigma * sigma)
                    } else {
                        T::from_f64(1.0)
                    };
                    let mut s2_max = T::ZERO;
                    hessian_rows(img, h, w, &k, &mut ws, |i, rr, rc, cc| {
                        let (ra, rb) = (&mut la[i * w..(i + 1) * w], &mut lb[i * w..(i + 1) * w]);
                        for j in 0..w {
                            let (l0, l1) = eigvals(rr[j] * scale, rc[j] * scale, cc[j] * scale);
                            // Sorted by magnitude; ties keep the decreasing order (numpy's argsort
                            // of two elements is stable).
                            let swap = l1.abs() < l0.abs();
                            ra[j] = if swap { l1 } else { l0 };
                            rb[j] = if swap { l0 } else { l1 };
                        }
                        s2_max = s2_max.max(max_sq_sum(ra, rb));
                    });
                    // max sqrt(x) == sqrt(max x): sqrt is monotonic and correctly rounded.
                    let s_max = s2_max.sqrt();
                    let g = frangi_scale(&la, &lb, s_max, f, gamma, &mut out);
                    if !f.frangi1998 {
                        gamma = Some(g);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `sato(img, sigmas, black_ridges)` as scikit-image.
pub fn sato<T: Real>(img: &[T], h: usize, w: usize, sigmas: &[f64], black_ridges: bool) -> Result<Vec<T>> {
    vesselness(img, h, w, &VesselnessParams { filter: Filter::Sato, sigmas: sigmas.to_vec(), black_ridges })
}

/// `frangi(img, sigmas, alpha, beta, gamma, black_ridges)` as scikit-image.
pub fn frangi<T: Real>(
    img: &[T],
    h: usize,
    w: usize,
    sigmas: &[f64],
    params: FrangiParams,
    black_ridges: bool,
) -> Result<Vec<T>> {
    vesselness(img, h, w, &VesselnessParams { filter: Filter::Frangi(params), sigmas: sigmas.to_vec(), black_ridges })
}

/// max over j of a[j]^2 + b[j]^2, with 16 partial maxima so the loop vectorises.
#[inline(always)]
fn max_sq_sum<T: Real>(a: &[T], b: &[T]) -> T {
    let mut m = [T::ZERO; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for q in 0..16 {
            m[q] = m[q].max(x[q] * x[q] + y[q] * y[q]);
        }
    }
    let mut best = m.iter().fold(T::ZERO, |acc, &v| acc.max(v));
    for (&x, &y) in ta.iter().zip(tb) {
        best = best.max(x * x + y * y);
    }
    best
}

/// One sigma of Frangi from the magnitude-sorted eigenvalues; returns the gamma it used.
/// R_B = |l_a| / max(l_b, 1e-10), S = sqrt(l_a^2 + l_b^2) from the unclipped values,
/// gamma (if not given) = max(S) / 2, or 1 when the image has no structure at all.
fn frangi_scale<T: Real>(la: &[T], lb: &[T], s_max: T, f: &FrangiParams, gamma: Option<f64>, out: &mut [T]) -> f64 {
    let g = gamma.unwrap_or_else(|| {
        let g = s_max.to_f64() / 2.0;
        if g == 0.0 {
            1.0
        } else {
            g
        }
    });
    let two_b2 = T::from_f64(2.0 * f.beta * f.beta);
    let two_g2 = T::from_f64(2.0 * g * g);
    let one = T::from_f64(1.0);
    let floor = T::from_f64(1e-10);
    let exp_zero = T::from_f64(T::EXP_ZERO_BELOW);
    // Branch-free so it vectorises; exp arguments below EXP_ZERO_BELOW count as 0.
    for ((o, &a), &b) in out.iter_mut().zip(la).zip(lb) {
        let rb = a.abs() / b.max(floor);
        let arg1 = -(rb * rb) / two_b2;
        let arg2 = -(a * a + b * b) / two_g2;
        let blob = if arg1 < exp_zero { T::ZERO } else { arg1.max(exp_zero).exp_fast() };
        let fade = if arg2 < exp_zero { T::ZERO } else { arg2.max(exp_zero).exp_fast() };
        *o = o.max(blob * (one - fade));
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dark horizontal line (a "vessel") on a flat background.
    fn line_image(h: usize, w: usize) -> Vec<f64> {
        (0..h * w).map(|i| if (i / w) == h / 2 { 40.0 } else { 160.0 }).collect()
    }

    #[test]
    fn dark_ridge_responds_only_with_black_ridges() {
        let (h, w) = (21, 21);
        let img = line_image(h, w);
        let dark = sato(&img, h, w, &[1.0, 2.0], true).unwrap();
        let bright = sato(&img, h, w, &[1.0, 2.0], false).unwrap();
        let c = (h / 2) * w + w / 2;
        assert!(dark[c] > 10.0, "{}", dark[c]);
        assert!(bright[c] < 1e-9, "{}", bright[c]);
        let f = frangi(&img, h, w, &[1.0, 2.0], FrangiParams::default(), true).unwrap();
        assert!(f[c] > 0.5 && f[c] < 1.0, "{}", f[c]);
        assert!(f.iter().all(|v| (0.0..1.0).contains(v)));
    }

    #[test]
    fn frangi1998_differs_from_scikit_image_only_by_normalisation() {
        let (h, w) = (21, 21);
        let img = line_image(h, w);
        let sk = frangi(&img, h, w, &[1.0], FrangiParams::default(), true).unwrap();
        let f98 =
            frangi(&img, h, w, &[1.0], FrangiParams { frangi1998: true, ..FrangiParams::default() }, true).unwrap();
        // One sigma = 1: sigma^2 = 1 and gamma is chosen the same way, so the two agree.
        assert!(sk.iter().zip(&f98).all(|(a, b)| (a - b).abs() < 1e-12));
        let sk2 = frangi(&img, h, w, &[1.0, 4.0], FrangiParams::default(), true).unwrap();
        let f982 = frangi(&img, h, w, &[1.0, 4.0], FrangiParams { frangi1998: true, ..FrangiParams::default() }, true)
            .unwrap();
        assert!(sk2.iter().zip(&f982).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    #[test]
    fn constant_image_gives_exact_zeros() {
        let img = vec![77.0f64; 36];
        assert!(sato(&img, 6, 6, &[1.0, 2.0], true).unwrap().iter().all(|&v| v == 0.0));
        assert!(frangi(&img, 6, 6, &[1.0, 3.0], FrangiParams::default(), true).unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn invalid_parameters_are_named() {
        let img = [0.0f64; 4];
        let e = sato(&img, 2, 2, &[], true).unwrap_err().to_string();
        assert!(e.contains("sigmas"), "{e}");
        let e = sato(&img, 2, 2, &[-1.0], true).unwrap_err().to_string();
        assert!(e.contains("sigma = -1"), "{e}");
        let e = frangi(&img, 2, 2, &[1.0], FrangiParams { beta: 0.0, ..FrangiParams::default() }, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta"), "{e}");
        let e =
            frangi(&img, 2, 2, &[1.0], FrangiParams { gamma: Some(f64::INFINITY), ..FrangiParams::default() }, true)
                .unwrap_err()
                .to_string();
        assert!(e.contains("gamma"), "{e}");
    }
}
