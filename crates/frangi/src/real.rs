//! The float types the filters run in: `f64` for parity with scikit-image, `f32` for speed.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use crate::simd::{exp_f32, exp_f64};

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
    /// `exp` for arguments in [EXP_ZERO_BELOW, 0], branch-free so loops vectorise
    /// ([`exp_f64`](crate::simd::exp_f64), [`exp_f32`](crate::simd::exp_f32)).
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

impl_real!(f64, 1e-18, -708.0, exp_f64);
impl_real!(f32, 1e-8, -87.0, exp_f32);
