//! Run-time CPU dispatch for the elementwise and row kernels of [`super::ops`].
//!
//! The crate is built for baseline x86-64 (SSE2), so loops the compiler vectorises run 4 lanes
//! wide. [`multiversion!`](crate::multiversion) compiles a kernel body three times — for AVX-512
//! (x86-64-v4), for AVX2 + FMA (x86-64-v3) and for the baseline — and calls the widest one the
//! CPU has, detected once. The bodies are plain Rust: no intrinsics, and LLVM neither
//! reassociates float sums nor contracts `a * b + c` into FMA, so every version returns
//! bit-identical results (tested); only the vector width changes.

use std::sync::atomic::{AtomicU8, Ordering};

/// What [`level`] found: 0 = baseline, 1 = AVX2 + FMA, 2 = AVX-512 (F, BW, DQ, VL).
static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);

/// Forces a level (tests compare the versions); `None` returns to detection.
pub fn force_level(level: Option<u8>) {
    LEVEL.store(
        level.map_or(u8::MAX, |l| l.min(detect())),
        Ordering::Relaxed,
    );
}

/// The widest instruction set the kernels may use on this CPU.
#[inline]
pub fn level() -> u8 {
    match LEVEL.load(Ordering::Relaxed) {
        u8::MAX => {
            let l = detect();
            LEVEL.store(l, Ordering::Relaxed);
            l
        }
        l => l,
    }
}

fn detect() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return 2;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return 1;
        }
    }
    0
}

/// Defines `fn name(args) -> ret { body }` compiled for AVX-512, AVX2 + FMA and the baseline,
/// dispatched on [`level`] at each call. Arguments must be plain bindings (`x: T`). Inside the
/// body, helpers must be `#[inline(always)]` to get the wide code.
#[macro_export]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($a: $t),*) $(-> $r)? { imp($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($a: $t),*) $(-> $r)? { imp($($a),*) }
                match $crate::nn::simd::level() {
                    // SAFETY: level() reported these features on this CPU.
                    2 => return unsafe { v4($($a),*) },
                    1 => return unsafe { v3($($a),*) },
                    _ => {}
                }
            }
            imp($($a),*)
        }
    };
}

/// Σ f(a_i, b_i) in 16 lanes (one AVX-512 vector, two AVX2 ones), then the lanes in order.
#[inline(always)]
pub fn sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += f(x[l], y[l]);
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s += f(*x, *y);
    }
    acc.iter().sum::<f32>() + s
}

/// Σ a_i in 16 lanes.
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let c = a.chunks_exact(16);
    let r = c.remainder();
    for x in c {
        for l in 0..16 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + r.iter().sum::<f32>()
}

/// max a_i in 16 lanes (−∞ for an empty slice).
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let c = a.chunks_exact(16);
    let r = c.remainder();
    for x in c {
        for l in 0..16 {
            acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
        }
    }
    let m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    r.iter().copied().fold(m, f32::max)
}
