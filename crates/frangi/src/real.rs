//! The float types the filters run in: `f64` for parity with scikit-image, `f32` for speed.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Default
    + std::fmt::Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    /// Kernel taps whose weight, relative to the kernel's largest, is below this cannot change
    /// a result at this precision (error < eps * 255 * taps); they are skipped.
    const TAP_EPS: f64;
    /// Below this `exp(x)` is under the smallest normal float (or 0): treated as 0, which skips
    /// libm's slow underflow path and changes a response by less than 1e-38.
    const EXP_ZERO_BELOW: f64;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    /// `exp` for arguments in [EXP_ZERO_BELOW, 0], branch-free so loops vectorise: Cody-Waite
    /// reduction to |r| <= ln2/2 and a Taylor polynomial (error < 3e-16 in f64, < 1e-7 in f32).
    fn exp_fast(self) -> Self;
    fn abs(self) -> Self;
    /// `self * a + b`; only called where the CPU has FMA (otherwise it would be a libm call).
    fn mul_add(self, a: Self, b: Self) -> Self;
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        if o > self {
            o
        } else {
            self
        }
    }
}

macro_rules! impl_real {
    ($t:ty, $eps:expr, $exp0:expr, $fast:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const TAP_EPS: f64 = $eps;
            const EXP_ZERO_BELOW: f64 = $exp0;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $fast(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}

impl_real!(f64, 1e-18, -708.0, exp_fast_f64);
impl_real!(f32, 1e-8, -87.0, exp_fast_f32);

// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (in two parts). n is obtained with the
// "add 1.5 * 2^mantissa_bits" trick, which also leaves n + bias in the low bits, so 2^n is a
// shift: no float->int conversion, so the loop vectorises on plain AVX2/AVX-512F.
#[inline(always)]
fn exp_fast_f64(x: f64) -> f64 {
    const INV_LN2: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const SHIFT: f64 = 6_755_399_441_055_744.0 + 1023.0; // 1.5 * 2^52 + exponent bias
    let t = x * INV_LN2 + SHIFT;
    let n = t - SHIFT;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series to r^12 / 12!, Horner form (|r| <= 0.347: truncation < 2e-16).
    const C: [f64; 13] = [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut p = C[0];
    for c in &C[1..] {
        p = p * r + c;
    }
    p * f64::from_bits(t.to_bits() << 52)
}

#[inline(always)]
fn exp_fast_f32(x: f32) -> f32 {
    const INV_LN2: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const SHIFT: f32 = 12_582_912.0 + 127.0; // 1.5 * 2^23 + exponent bias
    let t = x * INV_LN2 + SHIFT;
    let n = t - SHIFT;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    const C: [f32; 8] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    // degree 7 covers f32 (truncation < 1e-8); start from the r^7 coefficient
    let mut p = C[0];
    for c in &C[1..] {
        p = p * r + c;
    }
    p * f32::from_bits(t.to_bits() << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm_on_the_range_it_serves() {
        let mut worst64 = 0.0f64;
        let mut worst32 = 0.0f64;
        for i in 0..=200_000 {
            let x = -708.0 * i as f64 / 200_000.0;
            worst64 = worst64.max((exp_fast_f64(x) - x.exp()).abs() / x.exp());
            let xf = (x / 708.0 * 87.0) as f32;
            worst32 = worst32.max(((exp_fast_f32(xf) - xf.exp()) as f64 / xf.exp() as f64).abs());
        }
        assert!(worst64 < 1e-15, "f64 relative error {worst64:e}");
        assert!(worst32 < 1e-6, "f32 relative error {worst32:e}");
        assert_eq!(exp_fast_f64(0.0), 1.0);
    }
}
