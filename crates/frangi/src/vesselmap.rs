//! The VasoMIM binary vessel map from a vesselness response:
//! uint8 cast -> zero a border frame -> keep >= the p-th percentile (numpy 'linear')
//! -> the 4-connected component of the first arg-max -> {0, 255}.

use crate::{check_shape, Error, Real, Result};

/// How the response becomes uint8. The reference pipeline uses a C cast, which wraps values
/// above 255 (a strong vessel becomes dark); clamping is the sane default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    Clamp,
    Wrap,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapParams {
    /// Width of the frame zeroed before thresholding (pixels).
    pub border: usize,
    /// Percentile in [0, 100] over all pixels (border included).
    pub percentile: f64,
    pub cast: Cast,
    /// Response multiplier before the cast: 1 for Sato (grey-level units); Frangi's response is
    /// in [0, 1) and needs 255, otherwise every map would be empty.
    pub scale: f64,
}

impl Default for MapParams {
    fn default() -> Self {
        MapParams { border: 20, percentile: 92.0, cast: Cast::Clamp, scale: 1.0 }
    }
}

/// uint8 by truncation toward zero, clamped to 0..=255 or wrapped modulo 256 (NaN -> 0).
pub fn to_u8<T: Real>(resp: &[T], cast: Cast, scale: f64) -> Vec<u8> {
    resp.iter()
        .map(|&v| {
            let v = v.to_f64() * scale;
            match cast {
                Cast::Clamp => v.clamp(0.0, 255.0) as u8,
                // numpy: float -> int64 (truncation) -> uint8 (low byte).
                Cast::Wrap => (v as i64) as u8,
            }
        })
        .collect()
}

/// Zero a frame of `b` pixels on every side.
pub fn zero_border(img: &mut [u8], h: usize, w: usize, b: usize) {
    if b == 0 {
        return;
    }
    for i in 0..h {
        let row = &mut img[i * w..(i + 1) * w];
        if i < b || i + b >= h {
            row.fill(0);
        } else {
            let e = b.min(w);
            row[..e].fill(0);
            row[w - e..].fill(0);
        }
    }
}

/// `numpy.percentile(values, p)` with the default 'linear' method, bit for bit:
/// virtual index (n-1)*q, q = p/100, and numpy's two-sided lerp.
pub fn percentile_u8(values: &[u8], p: f64) -> f64 {
    let mut hist = [0usize; 256];
    values.iter().for_each(|&v| hist[v as usize] += 1);
    let n = values.len();
    let kth = |k: usize| -> f64 {
        let mut seen = 0;
        for (v, &c) in hist.iter().enumerate() {
            seen += c;
            if seen > k {
                return v as f64;
            }
        }
        255.0
    };
    let q = p / 100.0;
    let virt = (n - 1) as f64 * q;
    let prev = virt.floor();
    let gamma = virt - prev;
    let lo = (prev.max(0.0) as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let (a, b) = (kth(lo), kth(hi));
    let d = b - a;
    if gamma >= 0.5 {
        b - d * (1.0 - gamma)
    } else {
        a + d * gamma
    }
}

/// Keep the 4-connected component of `kept > 0` that contains the first arg-max of `kept`.
pub fn region_grow(kept: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0u8; kept.len()];
    let (mut seed, mut best) = (0usize, 0u8);
    for (i, &v) in kept.iter().enumerate() {
        if v > best {
            best = v;
            seed = i;
        }
    }
    if best == 0 {
        return out;
    }
    let mut stack = vec![seed];
    out[seed] = 255;
    while let Some(i) = stack.pop() {
        let (r, c) = (i / w, i % w);
        let mut visit = |j: usize| {
            if kept[j] > 0 && out[j] == 0 {
                out[j] = 255;
                stack.push(j);
            }
        };
        if r > 0 {
            visit(i - w);
        }
        if r + 1 < h {
            visit(i + w);
        }
        if c > 0 {
            visit(i - 1);
        }
        if c + 1 < w {
            visit(i + 1);
        }
    }
    out
}

/// The whole post-processing: response -> {0, 255} map.
pub fn vessel_map<T: Real>(resp: &[T], h: usize, w: usize, p: &MapParams) -> Result<Vec<u8>> {
    check_shape(resp.len(), h, w)?;
    if !(p.percentile.is_finite() && (0.0..=100.0).contains(&p.percentile)) {
        return Err(Error::Param {
            name: "percentile",
            value: p.percentile.to_string(),
            expected: "a number in [0, 100]",
        });
    }
    if !(p.scale.is_finite() && p.scale > 0.0) {
        return Err(Error::Param { name: "scale", value: p.scale.to_string(), expected: "a finite number > 0" });
    }
    let mut v = to_u8(resp, p.cast, p.scale);
    zero_border(&mut v, h, w, p.border);
    let t = percentile_u8(&v, p.percentile);
    v.iter_mut().for_each(|x| {
        if (*x as f64) < t {
            *x = 0
        }
    });
    Ok(region_grow(&v, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_clamps_or_wraps_like_numpy() {
        let v = [-3.7f64, 0.0, 12.9, 255.0, 255.5, 300.2, 513.0, f64::NAN];
        assert_eq!(to_u8(&v, Cast::Clamp, 1.0), vec![0, 0, 12, 255, 255, 255, 255, 0]);
        // numpy: astype(int64) truncates toward zero (-3.7 -> -3 -> 253), then keeps the low byte.
        assert_eq!(to_u8(&v, Cast::Wrap, 1.0), vec![253, 0, 12, 255, 255, 44, 1, 0]);
        assert_eq!(to_u8(&[0.5f32], Cast::Clamp, 255.0), vec![127]);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        // Values checked with numpy.percentile (method='linear').
        let v: Vec<u8> = vec![0, 0, 1, 5, 5, 9, 200, 3, 3, 3];
        assert_eq!(percentile_u8(&v, 92.0), 62.48000000000022);
        assert_eq!(percentile_u8(&v, 97.0), 148.43000000000006);
        assert_eq!(percentile_u8(&v, 50.0), 3.0);
        assert_eq!(percentile_u8(&v, 0.0), 0.0);
        assert_eq!(percentile_u8(&v, 100.0), 200.0);
        assert_eq!(percentile_u8(&[7], 92.0), 7.0);
    }

    #[test]
    fn border_is_zeroed_even_when_wider_than_the_image() {
        let mut v = vec![9u8; 6 * 5];
        zero_border(&mut v, 6, 5, 2);
        let inner: Vec<usize> = (0..30).filter(|&i| v[i] != 0).collect();
        assert_eq!(inner, vec![2 * 5 + 2, 3 * 5 + 2]);
        let mut v = vec![9u8; 9];
        zero_border(&mut v, 3, 3, 20);
        assert!(v.iter().all(|&x| x == 0));
    }

    #[test]
    fn region_grow_is_4_connected_from_the_first_argmax() {
        #[rustfmt::skip]
        let kept = [
            0, 9, 0, 0,
            0, 5, 0, 9,
            3, 0, 0, 4,
            0, 0, 2, 0,
        ];
        let out = region_grow(&kept, 4, 4);
        // The first 9 (row-major) seeds; the 3 touches only diagonally: not included.
        let on: Vec<usize> = (0..16).filter(|&i| out[i] == 255).collect();
        assert_eq!(on, vec![1, 5]);
        assert!(region_grow(&[0u8; 4], 2, 2).iter().all(|&x| x == 0));
    }

    #[test]
    fn degenerate_threshold_keeps_every_nonzero_pixel() {
        // >= 92 % zeros: t = 0, everything passes, the component of the max wins.
        let mut r = vec![0.0f64; 100];
        r[0] = 50.0;
        r[1] = 10.0;
        r[99] = 60.0;
        let m = vessel_map(&r, 10, 10, &MapParams { border: 0, ..MapParams::default() }).unwrap();
        let on: Vec<usize> = (0..100).filter(|&i| m[i] == 255).collect();
        assert_eq!(on, vec![99]);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let e = vessel_map(&[0.0f64; 4], 2, 2, &MapParams { percentile: 101.0, ..MapParams::default() });
        assert!(e.unwrap_err().to_string().contains("percentile"));
        let e = vessel_map(&[0.0f64; 4], 2, 2, &MapParams { scale: f64::NAN, ..MapParams::default() });
        assert!(e.unwrap_err().to_string().contains("scale"));
    }
}
