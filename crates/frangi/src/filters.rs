//! Sato and Frangi vesselness (2-D) with scikit-image >= 0.20 semantics, plus the
//! scale-normalised Frangi-1998 variant as an explicit option.

use crate::hessian::{eigvals, hessian_into, Hessian, SigmaKernels, Workspace};
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
    let negated: Vec<T>;
    let img = if p.black_ridges {
        img
    } else {
        negated = img.iter().map(|&v| -v).collect();
        &negated
    };
    let n = img.len();
    let mut ws = Workspace::new(n);
    let mut hs = Hessian { rr: vec![T::ZERO; n], rc: vec![T::ZERO; n], cc: vec![T::ZERO; n] };
    let mut out = vec![T::ZERO; n];
    let mut gamma = match &p.filter {
        Filter::Frangi(f) => f.gamma,
        Filter::Sato => None,
    };
    for &sigma in &p.sigmas {
        let k = SigmaKernels::<T>::new(sigma)?;
        hessian_into(img, h, w, &k, &mut ws, &mut hs);
        match &p.filter {
            Filter::Sato => sato_scale(&hs, sigma, &mut out),
            Filter::Frangi(f) => {
                let g = frangi_scale(&mut hs, sigma, f, gamma, &mut out);
                if !f.frangi1998 {
                    gamma = Some(g);
                }
            }
        }
    }
    Ok(out)
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

/// out = max(out, sigma^2 * max(lambda_0, 0)), lambda_0 the larger eigenvalue.
fn sato_scale<T: Real>(hs: &Hessian<T>, sigma: f64, out: &mut [T]) {
    let s2 = T::from_f64(sigma * sigma);
    for (i, o) in out.iter_mut().enumerate() {
        let (l0, _) = eigvals(hs.rr[i], hs.rc[i], hs.cc[i]);
        *o = o.max(s2 * l0.max(T::ZERO));
    }
}

/// One sigma of Frangi; returns the gamma it used. Eigenvalues sorted by magnitude
/// (ties keep the decreasing order, as numpy's stable small-array argsort),
/// R_B = |l_a| / max(l_b, 1e-10), S = sqrt(l_a^2 + l_b^2) from the unclipped values.
fn frangi_scale<T: Real>(hs: &mut Hessian<T>, sigma: f64, f: &FrangiParams, gamma: Option<f64>, out: &mut [T]) -> f64 {
    let scale = if f.frangi1998 { T::from_f64(sigma * sigma) } else { T::from_f64(1.0) };
    // Reuse rr/cc for (l_a, l_b).
    let mut s_max = T::ZERO;
    for i in 0..out.len() {
        let (l0, l1) = eigvals(hs.rr[i] * scale, hs.rc[i] * scale, hs.cc[i] * scale);
        let (la, lb) = if l1.abs() < l0.abs() { (l1, l0) } else { (l0, l1) };
        hs.rr[i] = la;
        hs.cc[i] = lb;
        s_max = s_max.max((la * la + lb * lb).sqrt());
    }
    let g = match gamma {
        Some(g) => g,
        None => {
            let g = s_max.to_f64() / 2.0;
            if g == 0.0 {
                1.0
            } else {
                g
            }
        }
    };
    let two_b2 = T::from_f64(2.0 * f.beta * f.beta);
    let two_g2 = T::from_f64(2.0 * g * g);
    let one = T::from_f64(1.0);
    let floor = T::from_f64(1e-10);
    for (i, o) in out.iter_mut().enumerate() {
        let (la, lb) = (hs.rr[i], hs.cc[i]);
        let rb = la.abs() / lb.max(floor);
        let s2 = la * la + lb * lb;
        let v = (-(rb * rb) / two_b2).exp() * (one - (-s2 / two_g2).exp());
        *o = o.max(v);
    }
    g
}
