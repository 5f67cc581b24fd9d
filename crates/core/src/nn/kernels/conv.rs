//! Convolutions, forward and backward side by side (NCHW unless the name says NHWC):
//!
//! - [`conv2d`]: any kernel / stride / padding as im2col + gemm, with an optional channel bias.
//! - [`dwconv3x3_nhwc`]: the depthwise 3×3 conv on channels-last tokens.
//!
//! Why not candle's own: grouped / depthwise `conv2d` runs one conv per group, and `conv2d`'s
//! input gradient goes through a direct `conv_transpose2d` loop. Off the fused CPU path (CUDA,
//! bf16) [`conv2d`] is candle's `conv2d` (cuDNN / im2col on CUDA, differentiable) and the
//! depthwise conv a sum of nine shifted, per-channel scaled views.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::host::{bias_add, f32_slice, for_rows, matmul_dtype, use_cpu_kernel, with_f32, PAR_MIN};

/// `F.conv2d(x, weight, bias, stride, padding)` (groups 1, dilation 1) for x (B, C, H, W) and
/// weight (O, C, k, k): im2col, one gemm per image, then the channel bias.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, wc, k, _) = weight.dims4()?;
    if wc != c {
        candle_core::bail!("conv2d: input has {c} channels, the weight expects {wc}");
    }
    let op = Im2Col { k, s: stride, p: padding };
    let (ho, wo) = op.out_hw(h, w)?;
    if !use_cpu_kernel(&[x, weight]) {
        let dt = matmul_dtype(x.dtype());
        // As [`matmul`](super::host::matmul): bf16 on the CPU computed in f32 and rounded back.
        let cpu_bf16 = x.device().is_cpu() && dt == DType::BF16;
        let work = if cpu_bf16 { DType::F32 } else { dt };
        let (xw, ww) = (x.to_dtype(dt)?.to_dtype(work)?, weight.to_dtype(dt)?.to_dtype(work)?);
        let y = xw.conv2d(&ww, padding, stride, 1, 1)?.to_dtype(dt)?;
        return match bias {
            Some(bias) => bias_add(&y, &bias.reshape((1, o, 1, 1))?),
            None => Ok(y),
        };
    }
    let cols = if k == 1 && stride == 1 && padding == 0 {
        x.reshape((b, c, h * w))?
    } else {
        x.contiguous()?.apply_op1(op)?
    };
    // candle 0.11's CPU matmul gives wrong results for a stride-0 (broadcast) batch
    // operand, so the weight is copied per image (O·C·k·k values, small).
    let w2 = weight.reshape((o, c * k * k))?.broadcast_left(b)?.contiguous()?;
    let mut y = w2.matmul(&cols)?;
    if let Some(bias) = bias {
        y = y.apply_op2(bias, ChannelBias)?;
    }
    y.reshape((b, o, ho, wo))
}

/// `(lo, hi)`: the output positions `o` in `0..n_out` whose input `o·s + k − p` is in `0..n_in`.
fn valid_range(n_in: usize, n_out: usize, s: usize, k: usize, p: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    let hi = if n_in + p > k { ((n_in + p - k - 1) / s + 1).min(n_out) } else { 0 };
    (lo.min(hi), hi)
}

/// (B, C, H, W) → columns (B, C·k·k, Ho·Wo), zero padding `p`, stride `s`; row
/// `c·k·k + ky·k + kx` matches the weight layout (O, C, k, k) flattened.
struct Im2Col {
    k: usize,
    s: usize,
    p: usize,
}

impl Im2Col {
    fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if h + 2 * self.p < self.k || w + 2 * self.p < self.k {
            candle_core::bail!("conv2d: input {h}x{w} smaller than the kernel {}", self.k);
        }
        Ok(((h + 2 * self.p - self.k) / self.s + 1, (w + 2 * self.p - self.k) / self.s + 1))
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "vasomim-im2col"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(st, l, "im2col")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = self.out_hw(h, w)?;
        let (k, s, p) = (self.k, self.s, self.p);
        let ol = ho * wo;
        let mut dst = vec![0f32; b * c * k * k * ol];
        for_rows(&mut dst, k * k * ol, |i, chunk| {
            let plane = &x[i * h * w..(i + 1) * h * w];
            for ky in 0..k {
                let (y_lo, y_hi) = valid_range(h, ho, s, ky, p);
                for kx in 0..k {
                    let (x_lo, x_hi) = valid_range(w, wo, s, kx, p);
                    let row = &mut chunk[(ky * k + kx) * ol..(ky * k + kx + 1) * ol];
                    for oy in y_lo..y_hi {
                        let iy = oy * s + ky - p;
                        let src = &plane[iy * w..(iy + 1) * w];
                        let d = &mut row[oy * wo..(oy + 1) * wo];
                        if s == 1 {
                            let ix0 = x_lo + kx - p;
                            d[x_lo..x_hi].copy_from_slice(&src[ix0..ix0 + (x_hi - x_lo)]);
                        } else {
                            for ox in x_lo..x_hi {
                                d[ox] = src[ox * s + kx - p];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((b, c * k * k, ol))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let (ho, wo) = self.out_hw(h, w)?;
        let (k, s, p) = (self.k, self.s, self.p);
        let ol = ho * wo;
        let dx = with_f32(&[grad], "im2col backward", |g| {
            let g = g[0];
            let mut dx = vec![0f32; b * c * h * w];
            for_rows(&mut dx, h * w, |i, plane| {
                let cols = &g[i * k * k * ol..(i + 1) * k * k * ol];
                for ky in 0..k {
                    let (y_lo, y_hi) = valid_range(h, ho, s, ky, p);
                    for kx in 0..k {
                        let (x_lo, x_hi) = valid_range(w, wo, s, kx, p);
                        let row = &cols[(ky * k + kx) * ol..(ky * k + kx + 1) * ol];
                        for oy in y_lo..y_hi {
                            let iy = oy * s + ky - p;
                            let d = &mut plane[iy * w..(iy + 1) * w];
                            let src = &row[oy * wo..(oy + 1) * wo];
                            for ox in x_lo..x_hi {
                                d[ox * s + kx - p] += src[ox];
                            }
                        }
                    }
                }
            });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, &[b, c, h, w], arg.device())?))
    }
}

// --------------------------------------------------------------------------- channel bias

/// y (B, C, L) + bias (C) broadcast over B and L.
struct ChannelBias;

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "vasomim-channel-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "channel bias")?;
        let bias = f32_slice(s2, l2, "channel bias")?;
        let (_, c, l) = l1.shape().dims3()?;
        let mut dst = y.to_vec();
        for_rows(&mut dst, l, |i, row| {
            let v = bias[i % c];
            row.iter_mut().for_each(|x| *x += v);
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = bias.dim(0)?;
        let db = with_f32(&[grad], "channel bias backward", |g| {
            let (_, _, l) = grad.dims3()?;
            let mut db = vec![0f64; c];
            for (i, row) in g[0].chunks(l).enumerate() {
                db[i % c] += row.iter().map(|&v| v as f64).sum::<f64>();
            }
            Ok(db.into_iter().map(|v| v as f32).collect::<Vec<_>>())
        })?;
        Ok((Some(grad.clone()), Some(Tensor::from_vec(db, &[c], bias.device())?)))
    }
}

// ----------------------------------------------------------------- depthwise 3×3 (NHWC)

/// Depthwise 3×3 conv, stride 1, zero padding 1, on channels-last x (B, H, W, C) with the
/// PyTorch weight (C, 1, 3, 3) and bias (C): `nn.Conv2d(C, C, 3, 1, 1, groups=C)` applied to
/// the tokens of an (H, W) grid without transposing them.
pub fn dwconv3x3_nhwc(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, h, w, c) = x.dims4()?;
    if weight.dims() != [c, 1, 3, 3] || bias.dims() != [c] {
        candle_core::bail!("dwconv3x3: weight {:?} / bias {:?} do not fit {c} channels", weight.dims(), bias.dims());
    }
    if use_cpu_kernel(&[x, weight, bias]) {
        return x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, DwConv);
    }
    // Σ over the taps (dy, dx) of the zero-padded input shifted by (dy, dx), times the tap's
    // per-channel weight; summed in f32 (and so are the gradients), returned in x's dtype.
    let taps = weight.to_dtype(DType::F32)?.reshape((c, 9))?.t()?.contiguous()?;
    let xp = x.to_dtype(DType::F32)?.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut y = bias.to_dtype(DType::F32)?.reshape((1, 1, 1, c))?;
    for t in 0..9 {
        let view = xp.narrow(1, t / 3, h)?.narrow(2, t % 3, w)?;
        y = y.broadcast_add(&view.broadcast_mul(&taps.get(t)?)?)?;
    }
    y.to_dtype(x.dtype())
}

struct DwConv;

/// Tap-major 3×3 depthwise weights, wt[t·C + ch] from w[ch·9 + t], so channel loops are
/// contiguous.
fn tap_major(w: &[f32], c: usize) -> Vec<f32> {
    let mut wt = vec![0f32; 9 * c];
    for ch in 0..c {
        for t in 0..9 {
            wt[t * c + ch] = w[ch * 9 + t];
        }
    }
    wt
}

/// dst[b, y, x] = bias + Σ_(dy, dx) wt[dy·3 + dx]·src[b, y + dir·(dy − 1), x + dir·(dx − 1)]
/// over the taps inside the (h, w) grid, for channels-last (B, H, W, C) data: the depthwise
/// conv with `dir` 1, the gradient of its input (mirrored taps, no bias) with `dir` −1. Taps
/// are added in the same order either way. One task per output row (b, y).
fn dw3x3_rows(
    dst: &mut [f32],
    src: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    (h, wd, c): (usize, usize, usize),
    dir: isize,
) {
    for_rows(dst, wd * c, |r, row| {
        let (bi, y) = (r / h, r % h);
        for xo in 0..wd {
            let o = &mut row[xo * c..(xo + 1) * c];
            if let Some(bias) = bias {
                o.copy_from_slice(bias);
            }
            for dy in 0..3 {
                let iy = y as isize + dir * (dy as isize - 1);
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for dx in 0..3 {
                    let ix = xo as isize + dir * (dx as isize - 1);
                    if ix < 0 || ix >= wd as isize {
                        continue;
                    }
                    let s = &src[((bi * h + iy as usize) * wd + ix as usize) * c..][..c];
                    let k = &wt[(dy * 3 + dx) * c..][..c];
                    for ((ov, &sv), &kv) in o.iter_mut().zip(s).zip(k) {
                        *ov += sv * kv;
                    }
                }
            }
        }
    });
}

impl CustomOp3 for DwConv {
    fn name(&self) -> &'static str {
        "vasomim-dwconv3x3-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "dwconv3x3")?;
        let w = f32_slice(s2, l2, "dwconv3x3")?;
        let bias = f32_slice(s3, l3, "dwconv3x3")?;
        let (_, h, wd, c) = l1.shape().dims4()?;
        let mut dst = vec![0f32; x.len()];
        dw3x3_rows(&mut dst, x, &tap_major(w, c), Some(bias), (h, wd, c), 1);
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, wd, c) = x.dims4()?;
        let (dx, dw, db) = with_f32(&[x, w, grad], "dwconv3x3 backward", |s| {
            let (xv, wv, g) = (s[0], s[1], s[2]);
            // dx[y, x] = Σ_t w[t]·g[y − dy + 1, x − dx + 1]: the forward with mirrored taps.
            let mut dx = vec![0f32; xv.len()];
            dw3x3_rows(&mut dx, g, &tap_major(wv, c), None, (h, wd, c), -1);
            // dw[t] = Σ g[y, x]·x[y + dy − 1, x + dx − 1]; db = Σ g. Per output row, then summed.
            let row_acc = |r: usize| -> Vec<f32> {
                let (bi, y) = (r / h, r % h);
                let mut acc = vec![0f32; 10 * c];
                for xo in 0..wd {
                    let gv = &g[((bi * h + y) * wd + xo) * c..][..c];
                    for (a, &v) in acc[9 * c..].iter_mut().zip(gv) {
                        *a += v;
                    }
                    for dy in 0..3 {
                        let iy = y as isize + dy as isize - 1;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for ddx in 0..3 {
                            let ix = xo as isize + ddx as isize - 1;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            let src = &xv[((bi * h + iy as usize) * wd + ix as usize) * c..][..c];
                            let t = dy * 3 + ddx;
                            for ((a, &sv), &gg) in acc[t * c..(t + 1) * c].iter_mut().zip(src).zip(gv) {
                                *a += sv * gg;
                            }
                        }
                    }
                }
                acc
            };
            let add = |mut a: Vec<f64>, v: Vec<f32>| {
                a.iter_mut().zip(v).for_each(|(x, y)| *x += y as f64);
                a
            };
            let total: Vec<f64> = if xv.len() >= PAR_MIN {
                (0..b * h).into_par_iter().fold(|| vec![0f64; 10 * c], |a, r| add(a, row_acc(r))).reduce(
                    || vec![0f64; 10 * c],
                    |mut a, v| {
                        a.iter_mut().zip(v).for_each(|(x, y)| *x += y);
                        a
                    },
                )
            } else {
                (0..b * h).fold(vec![0f64; 10 * c], |a, r| add(a, row_acc(r)))
            };
            let mut dw = vec![0f32; 9 * c];
            for ch in 0..c {
                for t in 0..9 {
                    dw[ch * 9 + t] = total[t * c + ch] as f32;
                }
            }
            let db: Vec<f32> = total[9 * c..].iter().map(|&v| v as f32).collect();
            Ok((dx, dw, db))
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, &[b, h, wd, c], dev)?),
            Some(Tensor::from_vec(dw, &[c, 1, 3, 3], dev)?),
            Some(Tensor::from_vec(db, &[c], dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::testing::{check, rand};

    #[test]
    fn conv2d_matches_candle() {
        for (k, s, p, h, w) in [(3, 1, 1, 9, 7), (3, 2, 1, 8, 8), (3, 2, 1, 7, 5), (1, 1, 0, 4, 6)] {
            eprintln!("case k{k} s{s} p{p} {h}x{w}");
            let x = rand(1, &[2, 3, h, w]);
            let wt = rand(2, &[5, 3, k, k]);
            let b = rand(3, &[5]);
            check(
                &[x, wt, b],
                |t| conv2d(&t[0], &t[1], Some(&t[2]), s, p).unwrap(),
                |t| {
                    t[0].conv2d(&t[1], p, s, 1, 1).unwrap().broadcast_add(&t[2].reshape((1, 5, 1, 1)).unwrap()).unwrap()
                },
                1e-5,
            );
        }
    }

    #[test]
    fn dwconv_matches_grouped_conv() {
        let (b, h, w, c) = (2, 5, 6, 7);
        let x = rand(4, &[b, h, w, c]);
        let wt = rand(5, &[c, 1, 3, 3]);
        let bias = rand(6, &[c]);
        check(
            &[x, wt, bias],
            |t| dwconv3x3_nhwc(&t[0], &t[1], &t[2]).unwrap(),
            |t| {
                let nchw = t[0].permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
                nchw.conv2d(&t[1], 1, 1, 1, c)
                    .unwrap()
                    .broadcast_add(&t[2].reshape((1, c, 1, 1)).unwrap())
                    .unwrap()
                    .permute((0, 2, 3, 1))
                    .unwrap()
                    .contiguous()
                    .unwrap()
            },
            1e-5,
        );
    }
}
