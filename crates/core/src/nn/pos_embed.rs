//! Fixed 2-D sin-cos position embeddings (METHOD.md §6) and bicubic resampling.
//!
//! The embeddings are buffers, never `Var`s: MAE keeps them frozen, and registering them as
//! parameters would let the optimizer move them.

use candle_core::{Device, Result, Tensor};

/// 1-D embedding of width `d` (even) for position `x`: [sin(x·ω_k)]_k ++ [cos(x·ω_k)]_k with
/// ω_k = 10000^(−k/(d/2)).
fn emb_1d(d: usize, x: f64, out: &mut Vec<f32>) {
    let half = d / 2;
    let omega = |k: usize| 1.0 / 10000f64.powf(k as f64 / half as f64);
    out.extend((0..half).map(|k| (x * omega(k)).sin() as f32));
    out.extend((0..half).map(|k| (x * omega(k)).cos() as f32));
}

/// The (1 + g·g, dim) table for a g×g grid with a zero cls row first; row 1 + r·g + c holds
/// [emb_1d(dim/2, c), emb_1d(dim/2, r)] (the column first, as MAE's meshgrid order gives).
pub fn sincos_2d(dim: usize, grid: usize) -> Vec<f32> {
    assert!(dim.is_multiple_of(4), "sin-cos position embedding needs a width divisible by 4, got {dim}");
    let mut v = vec![0f32; dim];
    for r in 0..grid {
        for c in 0..grid {
            emb_1d(dim / 2, c as f64, &mut v);
            emb_1d(dim / 2, r as f64, &mut v);
        }
    }
    v
}

/// [`sincos_2d`] as a (1, 1 + g², dim) tensor.
pub fn sincos_2d_tensor(dim: usize, grid: usize, device: &Device) -> Result<Tensor> {
    if !dim.is_multiple_of(4) {
        candle_core::bail!("sin-cos position embedding needs a width divisible by 4, got {dim}");
    }
    Tensor::from_vec(sincos_2d(dim, grid), (1, 1 + grid * grid, dim), device)
}

// Keys' cubic kernel with a = -0.5 (PIL's and torch's antialiased bicubic), shared with the
// image transforms.
use crate::data::transforms::bicubic as cubic;

/// For each output index: first input index and normalised weights (the kernel widens by the
/// scale when shrinking, which is what "antialias" means; edges renormalise instead of
/// clamping).
fn weights_1d(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = n_in as f64 / n_out as f64;
    let fscale = scale.max(1.0);
    let support = 2.0 * fscale;
    (0..n_out)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(n_in);
            let mut w: Vec<f64> = (lo..hi).map(|j| cubic((j as f64 - center + 0.5) / fscale)).collect();
            let s: f64 = w.iter().sum();
            if s != 0.0 {
                w.iter_mut().for_each(|v| *v /= s);
            }
            (lo, w)
        })
        .collect()
}

/// Separable bicubic resize of `planes` row-major h×w planes stored one after another, as
/// `F.interpolate(x, (oh, ow), mode="bicubic", align_corners=False, antialias=True)` on a
/// (1, planes, h, w) tensor.
pub fn resize_bicubic(src: &[f32], planes: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(src.len(), planes * h * w);
    if (h, w) == (oh, ow) {
        return src.to_vec();
    }
    let wx = weights_1d(w, ow);
    let wy = weights_1d(h, oh);
    let mut out = vec![0f32; planes * oh * ow];
    let mut tmp = vec![0f64; h * ow];
    for p in 0..planes {
        let s = &src[p * h * w..(p + 1) * h * w];
        for y in 0..h {
            for (x, (lo, ws)) in wx.iter().enumerate() {
                tmp[y * ow + x] = ws.iter().enumerate().map(|(k, wk)| wk * s[y * w + lo + k] as f64).sum();
            }
        }
        let o = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for (y, (lo, ws)) in wy.iter().enumerate() {
            for x in 0..ow {
                o[y * ow + x] = ws.iter().enumerate().map(|(k, wk)| wk * tmp[(lo + k) * ow + x]).sum::<f64>() as f32;
            }
        }
    }
    out
}

/// Resample a (1, prefix + g², D) position embedding to a new square grid, timm's
/// `resample_abs_pos_embed` rule: prefix (cls) rows kept, the grid part interpolated bicubically
/// per channel.
pub fn resample_pos_embed(pos: &Tensor, prefix: usize, new_grid: usize) -> Result<Tensor> {
    let (_, n, d) = pos.dims3()?;
    let old = n - prefix;
    let g = (old as f64).sqrt().round() as usize;
    if g * g != old {
        candle_core::bail!("position embedding with {old} grid rows is not square");
    }
    if g == new_grid {
        return Ok(pos.clone());
    }
    let v = pos.flatten_all()?.to_vec1::<f32>()?;
    // (g², D) -> D planes of g×g
    let mut planes = vec![0f32; d * old];
    for i in 0..old {
        for c in 0..d {
            planes[c * old + i] = v[(prefix + i) * d + c];
        }
    }
    let r = resize_bicubic(&planes, d, g, g, new_grid, new_grid);
    let nn = new_grid * new_grid;
    let mut out = v[..prefix * d].to_vec();
    out.resize((prefix + nn) * d, 0.0);
    for i in 0..nn {
        for c in 0..d {
            out[(prefix + i) * d + c] = r[c * nn + i];
        }
    }
    Tensor::from_vec(out, (1, prefix + nn, d), pos.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_half_comes_first() {
        let (d, g) = (8, 3);
        let t = sincos_2d(d, g);
        assert!(t[..d].iter().all(|&v| v == 0.0), "cls row is zeros");
        // patch (r=0, c=2): first half = emb_1d(4, 2) = [sin 2, sin(2/100), cos 2, cos(2/100)]
        let row = &t[(1 + 2) * d..(1 + 3) * d];
        let expect = [2f64.sin(), 0.02f64.sin(), 2f64.cos(), 0.02f64.cos()];
        for k in 0..4 {
            assert!((row[k] as f64 - expect[k]).abs() < 1e-6, "{row:?}");
        }
        // second half encodes the row 0: sin 0 = 0, cos 0 = 1
        assert_eq!(&row[4..], &[0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn resize_identity_and_constant() {
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(resize_bicubic(&src, 1, 4, 4, 4, 4), src);
        let c = vec![3.5f32; 2 * 5 * 7];
        for (oh, ow) in [(3, 2), (11, 13)] {
            let r = resize_bicubic(&c, 2, 5, 7, oh, ow);
            assert!(r.iter().all(|v| (v - 3.5).abs() < 1e-5), "{r:?}");
        }
    }

    #[test]
    fn resample_keeps_cls_and_shape() {
        let dev = Device::Cpu;
        let p = sincos_2d_tensor(16, 4, &dev).unwrap();
        let r = resample_pos_embed(&p, 1, 7).unwrap();
        assert_eq!(r.dims(), &[1, 50, 16]);
        let v = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v[..16].iter().all(|&x| x == 0.0));
    }
}
