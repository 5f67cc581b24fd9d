//! The random numbers of the data pipeline: one small, fully specified generator so that a
//! run's batches are a pure function of (seed, epoch, sample) on every machine and thread count.
//!
//! - Generator: SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
//!   generators", OOPSLA 2014): state += 0x9E3779B97F4A7C15, output = mix(state) with the
//!   Stafford "Mix13" finaliser. 64-bit state, passes BigCrush; plenty for crop draws.
//! - Stream keys: [`key`] folds a tag and any number of u64 words through the same finaliser,
//!   so (seed, epoch, index) triples that differ in one bit give unrelated streams.
//! - Floats: the top 53 bits / 2^53, uniform in [0, 1). Integers below n: rejection sampling
//!   (no modulo bias).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Stafford's Mix13, the SplitMix64 output function.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stream key from words: h = mix64(h + GOLDEN) ^ word, over `tag` then `words`.
pub fn key(tag: u64, words: &[u64]) -> u64 {
    let mut h = mix64(tag.wrapping_add(GOLDEN));
    for &w in words {
        h = mix64(h.wrapping_add(GOLDEN) ^ w);
    }
    h
}

/// Stream tags, fixed forever: changing one changes every run's batches.
pub const TAG_SAMPLE: u64 = 0x5341_4d50_4c45; // "SAMPLE"
pub const TAG_PERMUTATION: u64 = 0x5045_524d; // "PERM"

#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [a, b), as torch's `uniform_(a, b)`: a + (b - a) * U.
    pub fn uniform_in(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.uniform()
    }

    /// Uniform integer in [0, n); n >= 1.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n >= 1);
        // Largest multiple of n that fits: draws at or above it are rejected.
        let zone = u64::MAX - (u64::MAX - n + 1) % n;
        loop {
            let r = self.next_u64();
            if r <= zone {
                return r % n;
            }
        }
    }
}

/// Fisher-Yates permutation of 0..n driven by `rng` (i from n-1 down to 1, j uniform in [0, i]).
pub fn permutation(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // First outputs for seed 1234567 of the reference C implementation (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        assert_eq!(r.next_u64(), 9817491932198370423);
    }

    #[test]
    fn below_is_unbiased_enough_and_in_range() {
        let mut r = SplitMix64::new(7);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[r.below(3) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn permutation_is_a_permutation_and_keyed() {
        let p = permutation(100, &mut SplitMix64::new(key(TAG_PERMUTATION, &[0, 1])));
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        let q = permutation(100, &mut SplitMix64::new(key(TAG_PERMUTATION, &[0, 2])));
        assert_ne!(p, q);
        assert_ne!(key(TAG_SAMPLE, &[1, 2]), key(TAG_SAMPLE, &[2, 1]));
    }
}
