//! Run-time CPU dispatch and the vectorisable helpers shared by this crate's filters and the
//! neural-network kernels of `vasomim-core`.
//!
//! - [`multiversion!`](crate::multiversion): a function compiled for AVX-512 (x86-64-v4), for
//!   AVX2 + FMA (x86-64-v3) and for the baseline, the widest one the CPU has called at run time.
//! - [`level`] / [`force_level`]: the detected level (once per process), and a way for tests to
//!   pin a narrower one.
//! - [`sum`], [`sum2`], [`max`]: f32 reductions in 16 lanes (one AVX-512 vector, two AVX2 ones).
//! - [`exp_f32`], [`exp_f64`]: `exp` from plain arithmetic and bit casts, so loops over it
//!   vectorise (libm's `exp` is a call per element).
//!
//! The crates are built for baseline x86-64 (SSE2), so loops the compiler vectorises run 4 lanes
//! wide unless a body is compiled again with the wider instruction sets. The bodies are plain
//! Rust: LLVM neither reassociates float sums nor contracts `a * b + c` into FMA, so every
//! version returns bit-identical results; only where a body asks for `mul_add` (under the
//! macro's `FMA` flag) do the wide versions differ from the baseline.

use std::sync::atomic::{AtomicU8, Ordering};

/// What [`level`] found: 0 = baseline, 1 = AVX2 + FMA, 2 = AVX-512 (F, BW, DQ, VL).
static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);

/// Forces a level (tests compare the versions; a level the CPU lacks falls back to the widest
/// it has); `None` returns to detection.
pub fn force_level(level: Option<u8>) {
    LEVEL.store(level.map_or(u8::MAX, |l| l.min(detect())), Ordering::Relaxed);
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
        use std::arch::is_x86_feature_detected as has;
        let v3 = has!("avx2") && has!("fma");
        if v3 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return 2;
        }
        if v3 {
            return 1;
        }
    }
    0
}

/// Defines `fn name<G, ..>(args) -> ret where G: Bound, .. { body }` compiled for AVX-512,
/// AVX2 + FMA and the baseline, dispatched on [`level`] at each call.
///
/// Arguments must be plain bindings (`x: T`); generic parameters are plain names whose bounds
/// go in the `where` clause (one path each). Inside the body the `const FMA: bool` is true in
/// the AVX-512 and AVX2 versions, where `mul_add` is one instruction (a libm call otherwise).
/// Helpers the body calls must be `#[inline(always)]` to get the wide code.
#[macro_export]
macro_rules! multiversion {
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident $(<$($g:ident),+>)? ($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)?
        $(where $($wt:ident: $wb:path),+ $(,)?)?
        $body:block
    ) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($g),+>)? ($($a: $t),*) $(-> $r)? $(where $($wt: $wb),+)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp<$($($g,)+)? const FMA: bool>($($a: $t),*) $(-> $r)?
            $(where $($wt: $wb),+)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4 $(<$($g),+>)? ($($a: $t),*) $(-> $r)? $(where $($wt: $wb),+)? {
                    imp::<$($($g,)+)? true>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3 $(<$($g),+>)? ($($a: $t),*) $(-> $r)? $(where $($wt: $wb),+)? {
                    imp::<$($($g,)+)? true>($($a),*)
                }
                match $crate::simd::level() {
                    // SAFETY: level() reported these features on this CPU.
                    2 => return unsafe { v4($($a),*) },
                    1 => return unsafe { v3($($a),*) },
                    _ => {}
                }
            }
            imp::<$($($g,)+)? false>($($a),*)
        }
    };
}

/// Σ f(a_i, b_i) in 16 lanes, then the lanes in order.
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

/// e^x in f32 within 2 ulp (Cephes `expf` polynomial, Cody–Waite range reduction). Inputs are
/// clamped to [−87.3, 88.7]: below, the result is ~1e-38 instead of 0, which no softmax, GELU
/// or vesselness here can tell apart.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let kf = x * LOG2E + MAGIC;
    let k = kf.to_bits() as i32 - MAGIC.to_bits() as i32;
    let kr = kf - MAGIC;
    let r = x - kr * LN2_HI - kr * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((k + 127) << 23) as u32)
}

/// e^x in f64 for x in [−708, 0] (relative error < 1e-15): x = n·ln2 + r with n = round(x/ln2)
/// from the "add 1.5·2^52" trick, which also leaves n + bias in the low bits so 2^n is a shift
/// (no float→int conversion, so the loop vectorises on plain AVX2 / AVX-512F), and e^r from
/// its Taylor series to r^12/12! (|r| ≤ 0.347: truncation < 2e-16).
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    const INV_LN2: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const SHIFT: f64 = 6_755_399_441_055_744.0 + 1023.0; // 1.5 * 2^52 + exponent bias
    let t = x * INV_LN2 + SHIFT;
    let n = t - SHIFT;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // 1/k! for k = 12 down to 0, Horner form.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        // xorshift, mapped to (−4, 4)
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
            })
            .collect()
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst64 = 0f64;
        for i in 0..=200_000 {
            let x = -708.0 * i as f64 / 200_000.0;
            worst64 = worst64.max((exp_f64(x) - x.exp()).abs() / x.exp());
        }
        assert!(worst64 < 1e-15, "f64 relative error {worst64:e}");
        assert_eq!(exp_f64(0.0), 1.0);
        let mut worst32 = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, e) = (exp_f32(x) as f64, (x as f64).exp());
            worst32 = worst32.max(((a - e) / e).abs());
            x += 0.013;
        }
        assert!(worst32 < 4e-7, "f32 relative error {worst32:e}");
        assert!(exp_f32(-200.0) < 1e-37 && exp_f32(0.0) == 1.0);
    }

    /// The lane reductions against plain sequential ones.
    #[test]
    fn lane_reductions() {
        for n in [0usize, 1, 15, 16, 17, 100] {
            let (x, y) = (data(n, 5), data(n, 6));
            let s: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((sum(&x) as f64 - s).abs() < 1e-4 * (1.0 + s.abs()));
            let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((sum2(&x, &y, |a, b| a * b) as f64 - d).abs() < 1e-4 * (1.0 + d.abs()));
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), m);
        }
    }

    crate::multiversion! {
        /// Σ e^x_i·y_i + max: every helper of this module inside one dispatched body.
        fn mixed(x: &[f32], y: &[f32]) -> [f32; 3] {
            let e: Vec<f32> = x.iter().map(|&v| exp_f32(v)).collect();
            [sum2(&e, y, |a, b| a * b), sum(x), max(y)]
        }
    }

    /// Every level gives the same bits (levels this CPU lacks fall back to the widest it has).
    #[test]
    fn dispatch_levels_agree_bitwise() {
        let (x, y) = (data(197, 1), data(197, 2));
        let run = |l: u8| {
            force_level(Some(l));
            let r = mixed(&x, &y).map(f32::to_bits);
            force_level(None);
            r
        };
        assert_eq!(run(1), run(0), "AVX2 differs from the baseline");
        assert_eq!(run(2), run(0), "AVX-512 differs from the baseline");
    }
}
