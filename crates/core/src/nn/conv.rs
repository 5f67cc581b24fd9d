//! Convolutional building blocks with hand-written CPU forward *and* backward kernels:
//! [`Conv2d`] (im2col + gemm, any kernel / stride / padding, optional bias), [`BatchNorm2d`]
//! (train mode with batch statistics and PyTorch's running-stat update, eval mode with the
//! running statistics), a channels-last depthwise 3×3 conv ([`dwconv3x3_nhwc`]), the shifted
//! MLP's channel-chunk shift ([`shift_chunks_nhwc`]), max-pool 2×2 and ×2 upsampling (bilinear
//! with `align_corners = false`, nearest), the last three optionally fused with a ReLU.
//!
//! Why not candle's own: `upsample_bilinear2d` has no backward; grouped / depthwise `conv2d`
//! runs one conv per group; `conv2d`'s input gradient goes through a direct `conv_transpose2d`
//! loop; `max_pool2d`'s backward splits the gradient between ties (PyTorch gives it to the
//! first maximum); candle-nn's BatchNorm keeps its running stats as trainable `Var`s.
//!
//! The kernels run on f32 CPU tensors (NCHW unless the name says NHWC); other devices are an
//! error for now.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage,
    Tensor,
};
use rayon::prelude::*;

use super::{Init, ParamBuilder};

/// Work below this many output elements stays on the calling thread.
const PAR_MIN: usize = 1 << 14;

fn slice_of<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: f32 tensors only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 host data of `ts` (a strided tensor is made contiguous first).
fn host_f32<R>(ts: &[&Tensor], what: &str, f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut out = Vec::with_capacity(ts.len());
    for (g, l) in &guards {
        match &**g {
            Storage::Cpu(s) => out.push(slice_of(s, l, what)?),
            _ => candle_core::bail!("{what}: CPU tensors only"),
        }
    }
    f(&out)
}

fn check_cpu_f32(ts: &[&Tensor], what: &str) -> Result<()> {
    for t in ts {
        if !t.device().is_cpu() || t.dtype() != DType::F32 {
            candle_core::bail!(
                "{what}: f32 CPU tensors only (got {:?} on {:?})",
                t.dtype(),
                t.device()
            );
        }
    }
    Ok(())
}

/// `f(i, chunk)` over `dst` cut into chunks of `width`, in parallel when the work is large.
fn for_chunks(dst: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if width == 0 {
        return;
    }
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        dst.chunks_mut(width).enumerate().for_each(|(i, c)| f(i, c));
    }
}

fn tensor(v: Vec<f32>, shape: &[usize], dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(v, shape, dev)
}

/// `(lo, hi)`: the output positions `o` in `0..n_out` whose input `o·s + k − p` is in `0..n_in`.
fn valid_range(n_in: usize, n_out: usize, s: usize, k: usize, p: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    let hi = if n_in + p > k {
        ((n_in + p - k - 1) / s + 1).min(n_out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

// ------------------------------------------------------------------------------- im2col

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
        Ok((
            (h + 2 * self.p - self.k) / self.s + 1,
            (w + 2 * self.p - self.k) / self.s + 1,
        ))
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "vasomim-im2col"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_of(st, l, "im2col")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = self.out_hw(h, w)?;
        let (k, s, p) = (self.k, self.s, self.p);
        let ol = ho * wo;
        let mut dst = vec![0f32; b * c * k * k * ol];
        for_chunks(&mut dst, k * k * ol, |i, chunk| {
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
        let dx = host_f32(&[grad], "im2col backward", |g| {
            let g = g[0];
            let mut dx = vec![0f32; b * c * h * w];
            for_chunks(&mut dx, h * w, |i, plane| {
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
        Ok(Some(tensor(dx, &[b, c, h, w], arg.device())?))
    }
}

// --------------------------------------------------------------------------- channel bias

/// y (B, C, L) + bias (C) broadcast over B and L.
struct ChannelBias;

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "vasomim-channel-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice_of(s1, l1, "channel bias")?;
        let bias = slice_of(s2, l2, "channel bias")?;
        let (_, c, l) = l1.shape().dims3()?;
        let mut dst = y.to_vec();
        for_chunks(&mut dst, l, |i, row| {
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
        let db = host_f32(&[grad], "channel bias backward", |g| {
            let (_, _, l) = grad.dims3()?;
            let mut db = vec![0f64; c];
            for (i, row) in g[0].chunks(l).enumerate() {
                db[i % c] += row.iter().map(|&v| v as f64).sum::<f64>();
            }
            Ok(db.into_iter().map(|v| v as f32).collect::<Vec<_>>())
        })?;
        Ok((Some(grad.clone()), Some(tensor(db, &[c], bias.device())?)))
    }
}

// --------------------------------------------------------------------------------- Conv2d

/// `nn.Conv2d` (groups 1, dilation 1) with weight (O, C, k, k) and an optional bias (O).
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// PyTorch's default init: weight and bias U(±1/sqrt(C·k·k)).
    pub fn new(
        pb: &ParamBuilder,
        in_c: usize,
        out_c: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / ((in_c * k * k) as f64).sqrt();
        let weight = pb
            .var("weight", &[out_c, in_c, k, k], Init::Uniform(bound))?
            .as_tensor()
            .clone();
        let bias = if bias {
            Some(
                pb.var("bias", &[out_c], Init::Uniform(bound))?
                    .as_tensor()
                    .clone(),
            )
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_cpu_f32(&[x, &self.weight], "conv2d")?;
        let (b, c, h, w) = x.dims4()?;
        let (o, wc, k, _) = self.weight.dims4()?;
        if wc != c {
            candle_core::bail!("conv2d: input has {c} channels, the weight expects {wc}");
        }
        let op = Im2Col {
            k,
            s: self.stride,
            p: self.padding,
        };
        let (ho, wo) = op.out_hw(h, w)?;
        let cols = if k == 1 && self.stride == 1 && self.padding == 0 {
            x.reshape((b, c, h * w))?
        } else {
            x.contiguous()?.apply_op1(op)?
        };
        // candle 0.11's CPU matmul gives wrong results for a stride-0 (broadcast) batch
        // operand, so the weight is copied per image (O·C·k·k values, small).
        let w2 = self
            .weight
            .reshape((o, c * k * k))?
            .broadcast_left(b)?
            .contiguous()?;
        let mut y = w2.matmul(&cols)?;
        if let Some(bias) = &self.bias {
            y = y.apply_op2(bias, ChannelBias)?;
        }
        y.reshape((b, o, ho, wo))
    }
}

// ---------------------------------------------------------------------------- BatchNorm2d

/// Running statistics of a [`BatchNorm2d`] (not trained; saved as PyTorch's buffers).
#[derive(Clone, Debug, PartialEq)]
pub struct BnRunning {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub num_batches_tracked: i64,
}

/// `nn.BatchNorm2d(C)` (affine, eps 1e-5, momentum 0.1, running stats).
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    pub momentum: f64,
    running: Arc<Mutex<BnRunning>>,
}

pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm2d {
    pub fn new(pb: &ParamBuilder, c: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: pb.var("weight", &[c], Init::Ones)?.as_tensor().clone(),
            bias: pb.var("bias", &[c], Init::Zeros)?.as_tensor().clone(),
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
            running: Arc::new(Mutex::new(BnRunning {
                mean: vec![0.0; c],
                var: vec![1.0; c],
                num_batches_tracked: 0,
            })),
        })
    }

    pub fn channels(&self) -> usize {
        self.weight.elem_count()
    }

    pub fn running(&self) -> BnRunning {
        self.running
            .lock()
            .expect("BatchNorm state poisoned")
            .clone()
    }

    pub fn set_running(&self, r: BnRunning) -> Result<()> {
        let c = self.channels();
        if r.mean.len() != c || r.var.len() != c {
            candle_core::bail!(
                "BatchNorm running stats have {} / {} values for {c} channels",
                r.mean.len(),
                r.var.len()
            );
        }
        *self.running.lock().expect("BatchNorm state poisoned") = r;
        Ok(())
    }

    /// Train mode: normalise with the batch mean and biased variance, and update the running
    /// stats (momentum, unbiased variance, `num_batches_tracked` + 1). Eval mode: normalise with
    /// the running stats. Gradients flow to `x`, weight and bias in both modes.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_cpu_f32(&[x, &self.weight, &self.bias], "batch_norm")?;
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels() {
            candle_core::bail!(
                "batch_norm: input has {c} channels, the layer {}",
                self.channels()
            );
        }
        let x3 = x.reshape((b, c, h * w))?.contiguous()?;
        let y = if train {
            let n = b * h * w;
            if n < 2 {
                candle_core::bail!("batch_norm: training needs more than 1 value per channel");
            }
            let stash = Arc::new(Mutex::new(None));
            let y = x3.apply_op3(
                &self.weight,
                &self.bias,
                BnOp {
                    eps: self.eps,
                    fixed: None,
                    stash: stash.clone(),
                },
            )?;
            let (mean, var) = stash
                .lock()
                .expect("stats")
                .as_ref()
                .map(|s: &BnStats| (s.mean.clone(), s.var.clone()))
                .expect("batch_norm forward records its statistics");
            let mut r = self.running.lock().expect("BatchNorm state poisoned");
            let m = self.momentum;
            let unbias = n as f64 / (n - 1) as f64;
            for i in 0..c {
                r.mean[i] = ((1.0 - m) * r.mean[i] as f64 + m * mean[i]) as f32;
                r.var[i] = ((1.0 - m) * r.var[i] as f64 + m * var[i] * unbias) as f32;
            }
            r.num_batches_tracked += 1;
            y
        } else {
            let r = self.running();
            let stats = BnStats {
                mean: r.mean.iter().map(|&v| v as f64).collect(),
                var: r.var.iter().map(|&v| v as f64).collect(),
                invstd: r
                    .var
                    .iter()
                    .map(|&v| 1.0 / (v as f64 + self.eps).sqrt())
                    .collect(),
            };
            x3.apply_op3(
                &self.weight,
                &self.bias,
                BnOp {
                    eps: self.eps,
                    fixed: Some(stats),
                    stash: Arc::new(Mutex::new(None)),
                },
            )?
        };
        y.reshape((b, c, h, w))
    }
}

/// Running statistics of BatchNorms as PyTorch buffers: `<name>.running_mean`,
/// `<name>.running_var` (f32, (C)) and `<name>.num_batches_tracked` (i64, 0-dim).
pub fn bn_buffers<'a, N: AsRef<str>>(
    bns: impl IntoIterator<Item = (N, &'a BatchNorm2d)>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, bn) in bns {
        let (name, dev) = (name.as_ref(), bn.weight.device());
        let r = bn.running();
        let c = r.mean.len();
        out.push((
            format!("{name}.running_mean"),
            Tensor::from_vec(r.mean, c, dev)?,
        ));
        out.push((
            format!("{name}.running_var"),
            Tensor::from_vec(r.var, c, dev)?,
        ));
        out.push((
            format!("{name}.num_batches_tracked"),
            Tensor::new(r.num_batches_tracked, dev)?,
        ));
    }
    Ok(out)
}

#[derive(Clone, Debug)]
struct BnStats {
    mean: Vec<f64>,
    /// Biased.
    var: Vec<f64>,
    invstd: Vec<f64>,
}

/// x (B, C, L), weight (C), bias (C). `fixed`: eval-mode stats; else batch stats, recorded in
/// `stash` for the running update and the backward.
struct BnOp {
    eps: f64,
    fixed: Option<BnStats>,
    stash: Arc<Mutex<Option<BnStats>>>,
}

/// Per channel Σ f(x) over the (B, C, L) tensor, f64 accumulation, parallel over channels.
fn channel_sums(
    x: &[f32],
    b: usize,
    c: usize,
    l: usize,
    f: impl Fn(usize, &[f32]) -> f64 + Sync,
) -> Vec<f64> {
    let one = |ci: usize| -> f64 { (0..b).map(|bi| f(ci, &x[(bi * c + ci) * l..][..l])).sum() };
    if x.len() >= PAR_MIN {
        (0..c).into_par_iter().map(one).collect()
    } else {
        (0..c).map(one).collect()
    }
}

/// Σ of a row in 8 f32 lanes (vectorises), the lanes summed in f64.
#[inline]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let mut it = row.chunks_exact(8);
    for ch in &mut it {
        for j in 0..8 {
            acc[j] += f(ch[j]);
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| f(v) as f64).sum();
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "vasomim-batch-norm"
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
        let x = slice_of(s1, l1, "batch_norm")?;
        let w = slice_of(s2, l2, "batch_norm")?;
        let bb = slice_of(s3, l3, "batch_norm")?;
        let (b, c, l) = l1.shape().dims3()?;
        let stats = match &self.fixed {
            Some(s) => s.clone(),
            None => {
                let n = (b * l) as f64;
                let mean: Vec<f64> = channel_sums(x, b, c, l, |_, r| lane_sum(r, |v| v))
                    .into_iter()
                    .map(|s| s / n)
                    .collect();
                let var: Vec<f64> = channel_sums(x, b, c, l, |ci, r| {
                    let m = mean[ci] as f32;
                    lane_sum(r, |v| (v - m) * (v - m))
                })
                .into_iter()
                .map(|s| s / n)
                .collect();
                let invstd = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
                let s = BnStats { mean, var, invstd };
                *self.stash.lock().expect("stats") = Some(s.clone());
                s
            }
        };
        let scale: Vec<f32> = (0..c)
            .map(|i| (w[i] as f64 * stats.invstd[i]) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|i| (bb[i] as f64 - stats.mean[i] * w[i] as f64 * stats.invstd[i]) as f32)
            .collect();
        let mut dst = vec![0f32; x.len()];
        for_chunks(&mut dst, l, |i, row| {
            let (a, s) = (scale[i % c], shift[i % c]);
            let src = &x[i * l..(i + 1) * l];
            row.iter_mut().zip(src).for_each(|(d, &v)| *d = v * a + s);
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, l) = x.dims3()?;
        let stats = match &self.fixed {
            Some(s) => s.clone(),
            None => self
                .stash
                .lock()
                .expect("stats")
                .clone()
                .ok_or_else(|| candle_core::Error::msg("batch_norm backward before forward"))?,
        };
        let train = self.fixed.is_none();
        let n = (b * l) as f64;
        let (dx, dw, db) = host_f32(&[x, w, grad], "batch_norm backward", |s| {
            let (x, wv, g) = (s[0], s[1], s[2]);
            let sg = channel_sums(g, b, c, l, |_, r| lane_sum(r, |v| v));
            // Σ g·(x − μ) per channel: rows of g and x side by side.
            let sgx = {
                let one = |ci: usize| -> f64 {
                    let m = stats.mean[ci] as f32;
                    (0..b)
                        .map(|bi| {
                            let o = (bi * c + ci) * l;
                            let (gr, xr) = (&g[o..o + l], &x[o..o + l]);
                            let mut acc = [0f32; 8];
                            let mut gi = gr.chunks_exact(8);
                            let mut xi = xr.chunks_exact(8);
                            for (gc, xc) in (&mut gi).zip(&mut xi) {
                                for j in 0..8 {
                                    acc[j] += gc[j] * (xc[j] - m);
                                }
                            }
                            let tail: f64 = gi
                                .remainder()
                                .iter()
                                .zip(xi.remainder())
                                .map(|(&gv, &xv)| (gv * (xv - m)) as f64)
                                .sum();
                            acc.iter().map(|&v| v as f64).sum::<f64>() + tail
                        })
                        .sum()
                };
                if g.len() >= PAR_MIN {
                    (0..c).into_par_iter().map(one).collect::<Vec<f64>>()
                } else {
                    (0..c).map(one).collect::<Vec<f64>>()
                }
            };
            let dw: Vec<f32> = (0..c).map(|i| (sgx[i] * stats.invstd[i]) as f32).collect();
            let db: Vec<f32> = sg.iter().map(|&v| v as f32).collect();
            // dx = a·g + k·(x − μ) + d per channel.
            let mut ka = vec![0f32; c];
            let mut kk = vec![0f32; c];
            let mut kd = vec![0f32; c];
            for i in 0..c {
                let a = wv[i] as f64 * stats.invstd[i];
                ka[i] = a as f32;
                if train {
                    kk[i] = (-a * stats.invstd[i] * stats.invstd[i] * sgx[i] / n) as f32;
                    kd[i] = (-a * sg[i] / n) as f32;
                }
            }
            let mut dx = vec![0f32; x.len()];
            for_chunks(&mut dx, l, |r, row| {
                let ci = r % c;
                let (a, k, d, m) = (ka[ci], kk[ci], kd[ci], stats.mean[ci] as f32);
                let (gr, xr) = (&g[r * l..(r + 1) * l], &x[r * l..(r + 1) * l]);
                for ((o, &gv), &xv) in row.iter_mut().zip(gr).zip(xr) {
                    *o = a * gv + k * (xv - m) + d;
                }
            });
            Ok((dx, dw, db))
        })?;
        let dev = x.device();
        Ok((
            Some(tensor(dx, &[b, c, l], dev)?),
            Some(tensor(dw, &[c], dev)?.reshape(w.shape())?),
            Some(tensor(db, &[c], dev)?.reshape(bias.shape())?),
        ))
    }
}

// ----------------------------------------------------------------- depthwise 3×3 (NHWC)

/// Depthwise 3×3 conv, stride 1, zero padding 1, on channels-last x (B, H, W, C) with the
/// PyTorch weight (C, 1, 3, 3) and bias (C): `nn.Conv2d(C, C, 3, 1, 1, groups=C)` applied to
/// the tokens of an (H, W) grid without transposing them.
pub fn dwconv3x3_nhwc(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    check_cpu_f32(&[x, weight, bias], "dwconv3x3")?;
    let (_, _, _, c) = x.dims4()?;
    if weight.dims() != [c, 1, 3, 3] || bias.dims() != [c] {
        candle_core::bail!(
            "dwconv3x3: weight {:?} / bias {:?} do not fit {c} channels",
            weight.dims(),
            bias.dims()
        );
    }
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, DwConv)
}

struct DwConv;

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
        let x = slice_of(s1, l1, "dwconv3x3")?;
        let w = slice_of(s2, l2, "dwconv3x3")?;
        let bias = slice_of(s3, l3, "dwconv3x3")?;
        let (_, h, wd, c) = l1.shape().dims4()?;
        // Tap-major weights: wt[t·C + ch] so the channel loop is contiguous.
        let mut wt = vec![0f32; 9 * c];
        for ch in 0..c {
            for t in 0..9 {
                wt[t * c + ch] = w[ch * 9 + t];
            }
        }
        let mut dst = vec![0f32; x.len()];
        // One chunk per output row (b, y): W·C values.
        for_chunks(&mut dst, wd * c, |r, row| {
            let (bi, y) = (r / h, r % h);
            for xo in 0..wd {
                let o = &mut row[xo * c..(xo + 1) * c];
                o.copy_from_slice(bias);
                for dy in 0..3 {
                    let iy = y as isize + dy as isize - 1;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for dx in 0..3 {
                        let ix = xo as isize + dx as isize - 1;
                        if ix < 0 || ix >= wd as isize {
                            continue;
                        }
                        let src = &x[((bi * h + iy as usize) * wd + ix as usize) * c..][..c];
                        let k = &wt[(dy * 3 + dx) * c..][..c];
                        for ((ov, &sv), &kv) in o.iter_mut().zip(src).zip(k) {
                            *ov += sv * kv;
                        }
                    }
                }
            }
        });
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
        let (dx, dw, db) = host_f32(&[x, w, grad], "dwconv3x3 backward", |s| {
            let (xv, wv, g) = (s[0], s[1], s[2]);
            let mut wt = vec![0f32; 9 * c];
            for ch in 0..c {
                for t in 0..9 {
                    wt[t * c + ch] = wv[ch * 9 + t];
                }
            }
            // dx[y, x] = Σ_t w[t]·g[y − dy + 1, x − dx + 1]
            let mut dx = vec![0f32; xv.len()];
            for_chunks(&mut dx, wd * c, |r, row| {
                let (bi, y) = (r / h, r % h);
                for xi in 0..wd {
                    let o = &mut row[xi * c..(xi + 1) * c];
                    for dy in 0..3 {
                        let oy = y as isize - dy as isize + 1;
                        if oy < 0 || oy >= h as isize {
                            continue;
                        }
                        for ddx in 0..3 {
                            let ox = xi as isize - ddx as isize + 1;
                            if ox < 0 || ox >= wd as isize {
                                continue;
                            }
                            let src = &g[((bi * h + oy as usize) * wd + ox as usize) * c..][..c];
                            let k = &wt[(dy * 3 + ddx) * c..][..c];
                            for ((ov, &sv), &kv) in o.iter_mut().zip(src).zip(k) {
                                *ov += sv * kv;
                            }
                        }
                    }
                }
            });
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
                            for ((a, &sv), &gg) in
                                acc[t * c..(t + 1) * c].iter_mut().zip(src).zip(gv)
                            {
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
                (0..b * h)
                    .into_par_iter()
                    .fold(|| vec![0f64; 10 * c], |a, r| add(a, row_acc(r)))
                    .reduce(
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
            Some(tensor(dx, &[b, h, wd, c], dev)?),
            Some(tensor(dw, &[c, 1, 3, 3], dev)?),
            Some(tensor(db, &[c], dev)?),
        ))
    }
}

// ------------------------------------------------------------ shifted-MLP shift (NHWC)

/// The shifted MLP's shift on channels-last x (B, H, W, C): the channels are split as
/// `torch.chunk(x, 5, dim=C)` does (chunks of ⌈C/5⌉, the last smaller) and chunk k moves by
/// k − 2 along H (`axis` 1) or W (`axis` 2), zeros filling in. This equals UNeXt's zero-pad 2 →
/// `torch.roll` → crop, as no value rolls around the padded border into the crop.
pub fn shift_chunks_nhwc(x: &Tensor, axis: usize) -> Result<Tensor> {
    check_cpu_f32(&[x], "shift")?;
    if axis != 1 && axis != 2 {
        candle_core::bail!("shift: axis must be 1 (H) or 2 (W), got {axis}");
    }
    let c = x.dim(3)?;
    x.contiguous()?.apply_op1(Shift {
        axis,
        chunk: c.div_ceil(5).max(1),
        sign: 1,
    })
}

struct Shift {
    axis: usize,
    chunk: usize,
    /// 1 forward, −1 for the backward (the adjoint shifts the other way).
    sign: isize,
}

impl Shift {
    fn run(&self, x: &[f32], dims: (usize, usize, usize, usize)) -> Vec<f32> {
        let (_, h, w, c) = dims;
        let mut dst = vec![0f32; x.len()];
        for_chunks(&mut dst, w * c, |r, row| {
            let (bi, y) = (r / h, r % h);
            for xo in 0..w {
                let o = &mut row[xo * c..(xo + 1) * c];
                for (k, start) in (0..c).step_by(self.chunk).enumerate() {
                    let end = (start + self.chunk).min(c);
                    let s = self.sign * (k as isize - 2);
                    let (sy, sx) = if self.axis == 1 {
                        (y as isize - s, xo as isize)
                    } else {
                        (y as isize, xo as isize - s)
                    };
                    if sy < 0 || sy >= h as isize || sx < 0 || sx >= w as isize {
                        continue;
                    }
                    let src = ((bi * h + sy as usize) * w + sx as usize) * c;
                    o[start..end].copy_from_slice(&x[src + start..src + end]);
                }
            }
        });
        dst
    }
}

impl CustomOp1 for Shift {
    fn name(&self) -> &'static str {
        "vasomim-shift-chunks"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_of(s, l, "shift")?;
        let dst = self.run(x, l.shape().dims4()?);
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = Shift {
            axis: self.axis,
            chunk: self.chunk,
            sign: -self.sign,
        };
        let dims = arg.dims4()?;
        let dx = host_f32(&[grad], "shift backward", |g| Ok(back.run(g[0], dims)))?;
        Ok(Some(tensor(dx, arg.dims(), arg.device())?))
    }
}

// --------------------------------------------------------------------- max-pool 2×2 (NCHW)

/// `F.max_pool2d(x, 2, 2)` (odd sizes floor), then ReLU when `relu`. The gradient goes to the
/// first maximum of each window in row-major order, as PyTorch's CPU kernel.
pub fn max_pool2x2(x: &Tensor, relu: bool) -> Result<Tensor> {
    check_cpu_f32(&[x], "max_pool2x2")?;
    let (_, _, h, w) = x.dims4()?;
    if h < 2 || w < 2 {
        candle_core::bail!("max_pool2x2: input {h}x{w} is smaller than the window");
    }
    x.contiguous()?.apply_op1(MaxPool { relu })
}

struct MaxPool {
    relu: bool,
}

/// Index (0..4, row-major) and value of the first maximum of the window at (oy, ox).
#[inline]
fn window_max(plane: &[f32], w: usize, oy: usize, ox: usize) -> (usize, f32) {
    let base = 2 * oy * w + 2 * ox;
    let vals = [
        plane[base],
        plane[base + 1],
        plane[base + w],
        plane[base + w + 1],
    ];
    let mut best = (0, vals[0]);
    for (i, &v) in vals.iter().enumerate().skip(1) {
        if v > best.1 || v.is_nan() {
            best = (i, v);
        }
    }
    best
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "vasomim-max-pool2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_of(s, l, "max_pool2x2")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let mut dst = vec![0f32; b * c * ho * wo];
        for_chunks(&mut dst, ho * wo, |i, out| {
            let plane = &x[i * h * w..(i + 1) * h * w];
            for oy in 0..ho {
                for ox in 0..wo {
                    let v = window_max(plane, w, oy, ox).1;
                    out[oy * wo + ox] = if self.relu { v.max(0.0) } else { v };
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let dx = host_f32(&[arg, grad], "max_pool2x2 backward", |s| {
            let (x, g) = (s[0], s[1]);
            let mut dx = vec![0f32; x.len()];
            for_chunks(&mut dx, h * w, |i, d| {
                let plane = &x[i * h * w..(i + 1) * h * w];
                let gp = &g[i * ho * wo..(i + 1) * ho * wo];
                for oy in 0..ho {
                    for ox in 0..wo {
                        let (k, v) = window_max(plane, w, oy, ox);
                        if self.relu && v <= 0.0 {
                            continue;
                        }
                        d[(2 * oy + k / 2) * w + 2 * ox + k % 2] = gp[oy * wo + ox];
                    }
                }
            });
            Ok(dx)
        })?;
        Ok(Some(tensor(dx, &[b, c, h, w], arg.device())?))
    }
}

// ----------------------------------------------------------------- ×2 upsampling (NCHW)

/// Source taps of output position `o` for bilinear ×2, `align_corners = false`
/// (PyTorch: src = max(0, (o + ½)/2 − ½), i1 = min(i0 + 1, n − 1)).
#[inline]
fn bilinear_taps(o: usize, n: usize) -> (usize, usize, f32, f32) {
    let src = ((o as f32 + 0.5) * 0.5 - 0.5).max(0.0);
    let i0 = src as usize;
    let i1 = (i0 + 1).min(n - 1);
    let l1 = src - i0 as f32;
    (i0, i1, 1.0 - l1, l1)
}

/// `F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)`, then ReLU when
/// `relu`; differentiable (candle's `upsample_bilinear2d` has no backward).
pub fn upsample_bilinear2x(x: &Tensor, relu: bool) -> Result<Tensor> {
    check_cpu_f32(&[x], "upsample_bilinear2x")?;
    x.contiguous()?.apply_op1(Upsample {
        bilinear: true,
        relu,
    })
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")`, then ReLU when `relu`.
pub fn upsample_nearest2x(x: &Tensor, relu: bool) -> Result<Tensor> {
    check_cpu_f32(&[x], "upsample_nearest2x")?;
    x.contiguous()?.apply_op1(Upsample {
        bilinear: false,
        relu,
    })
}

struct Upsample {
    bilinear: bool,
    relu: bool,
}

impl Upsample {
    fn taps(&self, o: usize, n: usize) -> (usize, usize, f32, f32) {
        if self.bilinear {
            bilinear_taps(o, n)
        } else {
            (o / 2, o / 2, 1.0, 0.0)
        }
    }
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        if self.bilinear {
            "vasomim-upsample-bilinear2x"
        } else {
            "vasomim-upsample-nearest2x"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_of(s, l, "upsample2x")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = (2 * h, 2 * w);
        let xt: Vec<_> = (0..wo).map(|o| self.taps(o, w)).collect();
        let mut dst = vec![0f32; b * c * ho * wo];
        for_chunks(&mut dst, ho * wo, |i, out| {
            let plane = &x[i * h * w..(i + 1) * h * w];
            for oy in 0..ho {
                let (y0, y1, a0, a1) = self.taps(oy, h);
                let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
                let row = &mut out[oy * wo..(oy + 1) * wo];
                for (o, &(x0, x1, b0, b1)) in row.iter_mut().zip(&xt) {
                    let v = a0 * (b0 * r0[x0] + b1 * r0[x1]) + a1 * (b0 * r1[x0] + b1 * r1[x1]);
                    *o = if self.relu { v.max(0.0) } else { v };
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((b, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let (ho, wo) = (2 * h, 2 * w);
        let xt: Vec<_> = (0..wo).map(|o| self.taps(o, w)).collect();
        let dx = host_f32(&[res, grad], "upsample2x backward", |s| {
            let (y, g) = (s[0], s[1]);
            let mut dx = vec![0f32; b * c * h * w];
            for_chunks(&mut dx, h * w, |i, d| {
                let gp = &g[i * ho * wo..(i + 1) * ho * wo];
                let yp = &y[i * ho * wo..(i + 1) * ho * wo];
                for oy in 0..ho {
                    let (y0, y1, a0, a1) = self.taps(oy, h);
                    for (ox, &(x0, x1, b0, b1)) in xt.iter().enumerate() {
                        let k = oy * wo + ox;
                        // ReLU'(0) = 0, as PyTorch's threshold backward.
                        if self.relu && yp[k] <= 0.0 {
                            continue;
                        }
                        let gv = gp[k];
                        d[y0 * w + x0] += a0 * b0 * gv;
                        d[y0 * w + x1] += a0 * b1 * gv;
                        d[y1 * w + x0] += a1 * b0 * gv;
                        d[y1 * w + x1] += a1 * b1 * gv;
                    }
                }
            });
            Ok(dx)
        })?;
        Ok(Some(tensor(dx, &[b, c, h, w], arg.device())?))
    }
}

// ------------------------------------------------------------------------ layout helpers

/// (B, C, H, W) → tokens (B, H·W, C), contiguous.
pub fn nchw_to_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// Tokens (B, H·W, C) → (B, C, H, W), contiguous.
pub fn tokens_to_nchw(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    if n != h * w {
        candle_core::bail!("{n} tokens do not form a {h}x{w} grid");
    }
    x.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn rand(seed: u64, dims: &[usize]) -> Tensor {
        let mut r = super::super::InitRng::new(seed);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward and the gradients of Σ r·f against a reference built from candle ops.
    fn check(
        args: &[Tensor],
        ours: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let vars: Vec<Var> = args.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (ours(&ts), reference(&ts));
        assert!(
            max_diff(&a, &b) <= tol,
            "forward differs by {}",
            max_diff(&a, &b)
        );
        let r = rand(99, a.dims());
        let ga = (&a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, t) in ts.iter().enumerate() {
            let d = max_diff(ga.get(t).unwrap(), gb.get(t).unwrap());
            assert!(d <= tol, "gradient of argument {i} differs by {d}");
        }
    }

    #[test]
    fn conv2d_matches_candle() {
        for (k, s, p, h, w) in [
            (3, 1, 1, 9, 7),
            (3, 2, 1, 8, 8),
            (3, 2, 1, 7, 5),
            (1, 1, 0, 4, 6),
        ] {
            eprintln!("case k{k} s{s} p{p} {h}x{w}");
            let x = rand(1, &[2, 3, h, w]);
            let wt = rand(2, &[5, 3, k, k]);
            let b = rand(3, &[5]);
            check(
                &[x, wt, b],
                |t| {
                    Conv2d {
                        weight: t[1].clone(),
                        bias: Some(t[2].clone()),
                        stride: s,
                        padding: p,
                    }
                    .forward(&t[0])
                    .unwrap()
                },
                |t| {
                    t[0].conv2d(&t[1], p, s, 1, 1)
                        .unwrap()
                        .broadcast_add(&t[2].reshape((1, 5, 1, 1)).unwrap())
                        .unwrap()
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

    #[test]
    fn bilinear_matches_candle_forward_and_nearest_backward() {
        let x = rand(7, &[2, 3, 5, 4]);
        let ours = upsample_bilinear2x(&x, false).unwrap();
        let theirs = x.upsample_bilinear2d(10, 8, false).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
        let relu = upsample_bilinear2x(&x, true).unwrap();
        assert!(max_diff(&relu, &theirs.relu().unwrap()) < 1e-6);
        check(
            &[x],
            |t| upsample_nearest2x(&t[0], true).unwrap(),
            |t| t[0].upsample_nearest2d(10, 8).unwrap().relu().unwrap(),
            1e-6,
        );
    }

    #[test]
    fn max_pool_matches_candle() {
        for (h, w) in [(6, 8), (6, 7)] {
            eprintln!("case {h}x{w}");
            let x = rand(8, &[2, 3, h, w]);
            check(
                &[x],
                |t| max_pool2x2(&t[0], true).unwrap(),
                |t| {
                    // max over explicit 2×2 windows (no ties in random data)
                    let (b, c, h, w) = t[0].dims4().unwrap();
                    t[0].narrow(2, 0, h / 2 * 2)
                        .unwrap()
                        .narrow(3, 0, w / 2 * 2)
                        .unwrap()
                        .reshape((b, c, h / 2, 2, w / 2, 2))
                        .unwrap()
                        .max(5)
                        .unwrap()
                        .max(3)
                        .unwrap()
                        .relu()
                        .unwrap()
                },
                1e-6,
            );
        }
    }

    #[test]
    fn shift_matches_pad_roll_crop() {
        // 13 channels: torch.chunk gives 3,3,3,3,1.
        let (b, h, w, c) = (2, 4, 5, 13);
        let x = rand(9, &[b, h, w, c]);
        for axis in [1, 2] {
            let ours = shift_chunks_nhwc(&x, axis).unwrap();
            let mut parts = Vec::new();
            for (k, start) in (0..c).step_by(3).enumerate() {
                let len = 3.min(c - start);
                let chunk = x.narrow(3, start, len).unwrap();
                let n = x.dim(axis).unwrap();
                let padded = chunk.pad_with_zeros(axis, 2, 2).unwrap();
                // roll by s = k − 2: out[i] = in[i − s]
                let s = (k as isize - 2).rem_euclid((n + 4) as isize) as usize;
                let rolled = padded.roll(s as i32, axis).unwrap();
                parts.push(rolled.narrow(axis, 2, n).unwrap());
            }
            let theirs = Tensor::cat(&parts, 3).unwrap();
            assert!(max_diff(&ours, &theirs) == 0.0, "axis {axis}");
        }
    }

    fn bn_reference(x: &Tensor, w: &Tensor, b: &Tensor, train: bool, r: &BnRunning) -> Tensor {
        let c = w.dim(0).unwrap();
        let (mean, var) = if train {
            let m = x
                .mean_keepdim(0)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
                .mean_keepdim(3)
                .unwrap();
            let d = x.broadcast_sub(&m).unwrap();
            let v = d
                .sqr()
                .unwrap()
                .mean_keepdim(0)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
                .mean_keepdim(3)
                .unwrap();
            (m, v)
        } else {
            (
                Tensor::from_vec(r.mean.clone(), (1, c, 1, 1), &Device::Cpu).unwrap(),
                Tensor::from_vec(r.var.clone(), (1, c, 1, 1), &Device::Cpu).unwrap(),
            )
        };
        x.broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&(var + BN_EPS).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
    }

    #[test]
    fn batch_norm_matches_composite_and_updates_running_stats() {
        let pb = ParamBuilder::new(&Device::Cpu, 0);
        let bn = BatchNorm2d::new(&pb, 3).unwrap();
        let x = (rand(10, &[4, 3, 5, 6]) * 3.0).unwrap();
        let w = rand(11, &[3]);
        let b = rand(12, &[3]);
        for train in [true, false] {
            let r0 = bn.running();
            check(
                &[x.clone(), w.clone(), b.clone()],
                |t| {
                    BatchNorm2d {
                        weight: t[1].clone(),
                        bias: t[2].clone(),
                        ..bn.clone()
                    }
                    .forward(&t[0], train)
                    .unwrap()
                },
                |t| bn_reference(&t[0], &t[1], &t[2], train, &r0),
                1e-5,
            );
        }
        // One train forward above (the eval one changed nothing): check the update.
        let r = bn.running();
        assert_eq!(r.num_batches_tracked, 1);
        let xs = x.permute((1, 0, 2, 3)).unwrap().reshape((3, 120)).unwrap();
        let mean = xs.mean_keepdim(1).unwrap();
        let var_unbiased = (xs
            .broadcast_sub(&mean)
            .unwrap()
            .sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            / 119.0)
            .unwrap();
        let mean = mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let var_u = var_unbiased.to_vec1::<f32>().unwrap();
        for i in 0..3 {
            assert!((r.mean[i] - 0.1 * mean[i]).abs() < 1e-6);
            assert!((r.var[i] - (0.9 + 0.1 * var_u[i])).abs() < 1e-5);
        }
    }
}
