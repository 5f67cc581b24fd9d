//! Exact GELU, forward and backward side by side:
//!
//! - [`gelu_erf`]: x·Φ(x) = ½x(1 + erf(x/√2)), as `torch.nn.functional.gelu`
//!   (approximate="none"), as an op.
//! - [`gelu_slice`] / [`gelu_bwd_rows`]: the same on slices, for the GELU epilogue of
//!   [`linear`](super::linear::linear).
//!
//! Φ and φ share one exp and use erf from Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7, the same
//! formula as PyTorch's vectorised CPU erf), all in f32 so the loops vectorise.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use frangi::simd::exp_f32;

use super::host::{f32_slice, rows_new, rows_reduce, use_cpu_kernel, with_f32};

/// Exact GELU, x·Φ(x) = ½x(1 + erf(x/√2)), as `torch.nn.functional.gelu` (approximate="none").
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernel(&[x]) {
        x.contiguous()?.apply_op1(GeluOp)
    } else {
        #[cfg(feature = "cuda")]
        if super::cuda::applies(&[x]) {
            return super::cuda::gelu(x);
        }
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
        let dst = rows_new(x.len(), 4096, |i, d| gelu_slice(d, &x[i * 4096..]));
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(&[x, grad], "gelu backward", |s| {
            let (x, g) = (s[0], s[1]);
            Ok(rows_new(x.len(), 4096, |i, d| gelu_bwd_slice(d, &x[i * 4096..], &g[i * 4096..])))
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

frangi::multiversion! {
    /// out = gelu(x).
    pub fn gelu_slice(out: &mut [f32], x: &[f32]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = v * cdf_pdf(*v).0;
        }
    }
}

frangi::multiversion! {
    /// dx = g · d/dx xΦ(x) = g · (Φ(x) + xφ(x)).
    pub(super) fn gelu_bwd_slice(dx: &mut [f32], x: &[f32], g: &[f32]) {
        for (o, (v, gv)) in dx.iter_mut().zip(x.iter().zip(g)) {
            let (cdf, pdf) = cdf_pdf(*v);
            *o = gv * (cdf + v * pdf);
        }
    }
}

/// Backward of GELU(z) for z (rows, n) and upstream g: dz = g ⊙ gelu'(z), and its column sums
/// (the gradient of the bias added before the GELU) in per-thread partials.
pub fn gelu_bwd_rows(z: &[f32], g: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    rows_reduce(z.len(), n, n, |i, out, acc| {
        gelu_bwd_row(out, acc, &z[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
    })
}

frangi::multiversion! {
    /// dz = g · gelu'(z), and acc += dz.
    pub(super) fn gelu_bwd_row(dz: &mut [f32], acc: &mut [f32], z: &[f32], g: &[f32]) {
        let n = dz.len();
        let (acc, z, g) = (&mut acc[..n], &z[..n], &g[..n]);
        for j in 0..n {
            let (cdf, pdf) = cdf_pdf(z[j]);
            let d = g[j] * (cdf + z[j] * pdf);
            dz[j] = d;
            acc[j] += d;
        }
    }
}

/// Φ(x) and φ(x) of the standard normal sharing one exp(−x²/2).
#[inline(always)]
fn cdf_pdf(x: f32) -> (f32, f32) {
    let e = exp_f32(-0.5 * x * x);
    let erf_abs = erf_abs(x.abs() * FRAC_1_SQRT_2, e);
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), INV_SQRT_2PI * e)
}

/// erf(z) for z ≥ 0 by A&S 7.1.26, 1 − poly(z)·e, given e = exp(−z²).
#[inline(always)]
fn erf_abs(z: f32, e: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    1.0 - t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4)))) * e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The erf inside the GELU against high-precision values (Abramowitz & Stegun table 7.1),
    /// with an exact exp so only the A&S formula is measured.
    #[test]
    fn erf_is_accurate() {
        for (z, e) in [
            (0.1f32, 0.112_462_916f64),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (2.0, 0.995_322_265),
            (-1.5, -0.966_105_146),
        ] {
            let v = erf_abs(z.abs(), (-z * z).exp()) as f64;
            let ours = if z < 0.0 { -v } else { v };
            assert!((ours - e).abs() < 2e-7, "erf({z}) = {ours} not {e}");
        }
    }
}
