//! Our CUDA kernels for the segmentor's own ops (UNeXt-S: `train-segmentor`, and the frozen
//! network inside L_cons), each with its backward as ops of its own:
//!
//! - [`dwconv3x3_nhwc`]: the depthwise 3×3 conv on channels-last tokens. The input gradient is
//!   the same kernel with mirrored taps; the weight and bias gradients are column reductions over
//!   the positions (ten per channel), in two passes without atomics.
//! - [`batch_norm_train`] / [`batch_norm_eval`]: BatchNorm over (B, C, L) with the batch
//!   statistics or given running statistics. Mean and variance are two passes (no E[x²] − μ² cancellation), partial
//!   sums per (channel, batch chunk) summed in chunk order in double.
//!
//! The composite versions (`conv.rs`, `norm.rs`) stay what `VASOMIM_CUDA_KERNELS=0` runs and what
//! the GPU check compares these against. The dense convs need no kernel of ours: candle's
//! conv2d is im2col + cuBLAS, and its backward (patched in `vendor/candle-core`, see its
//! `VASOMIM.md`) is too.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use super::{
    col_sum_final, cols_cfg, cuda_of, flat_cfg, no_cpu, storage, suffix, tensor, view, CHUNK_ROWS, MODULE, PTX,
};
use crate::nn::kernels::norm::BnStats;

/// Batch rows per block of the BatchNorm reductions (each block also runs over all of L).
const BN_CHUNK_B: usize = 4;
/// Threads per block of the BatchNorm reductions.
const BN_THREADS: u32 = 256;

fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

// ------------------------------------------------------------------------------ depthwise 3×3

/// Depthwise 3×3 conv, stride 1, zero padding 1, on channels-last x (B, H, W, C) (f32 or bf16)
/// with the PyTorch weight (C, 1, 3, 3) and bias (C), both f32; arithmetic in f32.
pub fn dwconv3x3_nhwc(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (w, b) = (w.to_dtype(DType::F32)?.contiguous()?, b.to_dtype(DType::F32)?.contiguous()?);
    x.contiguous()?.apply_op3(&w, &b, DwConv)
}

struct DwConv;

/// Launches `dwconv3x3_<dtype>` over (B, H, W, C) `src` with taps `w` (and bias `b` if given),
/// in direction `dir`.
fn dw_launch(
    s: &CudaStorage,
    l: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    b: Option<(&CudaStorage, &Layout)>,
    dir: i32,
) -> Result<CudaStorage> {
    let dev = s.device().clone();
    let (bn, h, wd, c) = dims4(l)?;
    let n = bn * h * wd * c;
    let wv = view::<f32>(w, wl)?;
    // Without a bias the kernel reads none; the taps stand in for the pointer.
    let bv = match b {
        Some((bs, bl)) => view::<f32>(bs, bl)?,
        None => view::<f32>(w, wl)?,
    };
    let f = dev.get_or_load_custom_func(&format!("dwconv3x3_{}", suffix(s.dtype())?), MODULE, PTX)?;
    macro_rules! run {
        ($t:ty) => {{
            let src = view::<$t>(s, l)?;
            // SAFETY: every element is written by the kernel.
            let dst = unsafe { dev.alloc::<$t>(n)? };
            let mut bld = f.builder();
            bld.arg(&src);
            bld.arg(&wv);
            bld.arg(&bv);
            bld.arg(&dst);
            candle_core::builder_arg!(bld, bn as i32, h as i32, wd as i32, c as i32, dir, b.is_some() as i32);
            // SAFETY: grid-stride loop over the n outputs; the taps hold 9·C values, the bias C.
            unsafe { bld.launch(flat_cfg(n)) }.w()?;
            CudaStorage::wrap_cuda_slice(dst, dev.clone())
        }};
    }
    Ok(if s.dtype() == DType::F32 { run!(f32) } else { run!(bf16) })
}

impl CustomOp3 for DwConv {
    fn name(&self) -> &'static str {
        "vasomim-cuda-dwconv3x3-nhwc"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu("dwconv3x3")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let c = dims4(xl)?.3;
        if wl.shape().elem_count() != 9 * c || bl.shape().elem_count() != c {
            candle_core::bail!("dwconv3x3: weight {:?} / bias {:?} do not fit {c} channels", wl.dims(), bl.dims());
        }
        Ok((dw_launch(xs, xl, ws, wl, Some((bs, bl)), 1)?, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(x.dtype())?.contiguous()?;
        // A frozen conv (VasoMIM's segmentor) needs dx only.
        let dx = x.track_op().then(|| g.apply_op1_no_bwd(&DwBwdDx { w: w.clone() })).transpose()?;
        let (mut dw, mut db) = (None, None);
        if w.track_op() || b.track_op() {
            let c = x.dim(3)?;
            let wb = g.apply_op1_no_bwd(&DwBwdWb { x: x.clone() })?; // (10, C): taps, then the bias
            dw = Some(wb.narrow(0, 0, 9)?.t()?.contiguous()?.reshape((c, 1, 3, 3))?);
            db = Some(wb.get(9)?);
        }
        Ok((dx, dw, db))
    }
}

/// The input gradient: the conv of dy with mirrored taps, no bias.
struct DwBwdDx {
    w: Tensor,
}

impl CustomOp1 for DwBwdDx {
    fn name(&self) -> &'static str {
        "vasomim-cuda-dwconv3x3-bwd-dx"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("dwconv3x3 backward")
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (wg, wl) = cuda_of(&self.w)?;
        Ok((dw_launch(gs, gl, storage(&wg), &wl, None, -1)?, gl.shape().clone()))
    }
}

/// The weight and bias gradients as one (10, C) f32 tensor: rows 0–8 the taps, row 9 the bias.
struct DwBwdWb {
    x: Tensor,
}

impl CustomOp1 for DwBwdWb {
    fn name(&self) -> &'static str {
        "vasomim-cuda-dwconv3x3-bwd-wb"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("dwconv3x3 backward")
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = gs.device().clone();
        let (bn, h, wd, c) = dims4(gl)?;
        let rows = bn * h * wd;
        let (xg, xl) = cuda_of(&self.x)?;
        let (cfg, chunks) = cols_cfg(rows, c);
        let part = dev.alloc_zeros::<f32>(chunks * 10 * c)?;
        let f = dev.get_or_load_custom_func(&format!("dwconv3x3_bwd_wb_{}", suffix(gs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let (x, g) = (view::<$t>(storage(&xg), &xl)?, view::<$t>(gs, gl)?);
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&g);
                bld.arg(&part);
                candle_core::builder_arg!(bld, bn as i32, h as i32, wd as i32, c as i32, CHUNK_ROWS as i32);
                // SAFETY: grid (channel blocks, chunks); `part` holds chunks·10·C values.
                unsafe { bld.launch(cfg) }.w()?;
            }};
        }
        if gs.dtype() == DType::F32 {
            run!(f32)
        } else {
            run!(bf16)
        }
        let out = col_sum_final(&dev, &part, chunks, 10, c)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((10, c))))
    }
}

// ------------------------------------------------------------------------------ BatchNorm

/// Train-mode BatchNorm of x (B, C, L) (f32 or bf16) with f32 weight and bias (C): normalised
/// with the batch mean and biased variance, which are returned for the running update (one
/// device → host copy of 2·C values). Gradients flow to x, weight and bias.
pub fn batch_norm_train(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<(Tensor, BnStats)> {
    let (w, b) = (w.to_dtype(DType::F32)?.contiguous()?, b.to_dtype(DType::F32)?.contiguous()?);
    let c = x.dim(1)?;
    let stash = Arc::new(Mutex::new(None));
    let y = x.contiguous()?.apply_op3(&w, &b, BnFwd { eps: eps as f32, train: true, stats: stash.clone() })?;
    let stats = stash
        .lock()
        .map_err(|_| candle_core::Error::msg("batch_norm: poisoned"))?
        .clone()
        .ok_or_else(|| candle_core::Error::msg("batch_norm: the CUDA kernel did not run"))?;
    // The running update is on the host: one copy of 2·C values per call.
    let host = Tensor::cat(&[&stats.mean, &stats.var], 0)?.to_vec1::<f32>()?;
    let mean = host[..c].iter().map(|&v| v as f64).collect();
    let var: Vec<f64> = host[c..].iter().map(|&v| v as f64).collect();
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    Ok((y, BnStats { mean, var, invstd }))
}

/// Eval-mode BatchNorm of x (B, C, L) with the running `stats` (checked against C by the caller,
/// `norm::batch_norm_eval`). Gradients flow to x, weight and bias.
pub fn batch_norm_eval(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, stats: &BnStats) -> Result<Tensor> {
    let (w, b) = (w.to_dtype(DType::F32)?.contiguous()?, b.to_dtype(DType::F32)?.contiguous()?);
    let dev = |v: &[f64]| Tensor::from_vec(v.iter().map(|&v| v as f32).collect::<Vec<_>>(), v.len(), x.device());
    let fixed = BnStatsDev { mean: dev(&stats.mean)?, var: dev(&stats.var)?, invstd: dev(&stats.invstd)? };
    let op = BnFwd { eps: eps as f32, train: false, stats: Arc::new(Mutex::new(Some(fixed))) };
    x.contiguous()?.apply_op3(&w, &b, op)
}

/// Per-channel statistics on the device, (C) f32 each.
#[derive(Clone)]
struct BnStatsDev {
    mean: Tensor,
    var: Tensor,
    invstd: Tensor,
}

struct BnFwd {
    eps: f32,
    /// Batch statistics (computed by the forward) or fixed ones (given).
    train: bool,
    stats: Arc<Mutex<Option<BnStatsDev>>>,
}

/// Grid (channels, batch chunks) of the BatchNorm reductions.
fn bn_cfg(c: usize, b: usize) -> (LaunchConfig, usize) {
    let chunks = b.div_ceil(BN_CHUNK_B).max(1);
    let cfg =
        LaunchConfig { grid_dim: (c as u32, chunks as u32, 1), block_dim: (BN_THREADS, 1, 1), shared_mem_bytes: 0 };
    (cfg, chunks)
}

impl BnFwd {
    /// The batch mean, biased variance and 1/sqrt(var + eps) of x, two passes.
    fn batch_stats(&self, xs: &CudaStorage, xl: &Layout) -> Result<BnStatsDev> {
        let dev = xs.device().clone();
        let (b, c, l) = xl.shape().dims3()?;
        let (cfg, chunks) = bn_cfg(c, b);
        let part = dev.alloc_zeros::<f32>(chunks * c)?;
        let mean = dev.alloc_zeros::<f32>(c)?;
        let var = dev.alloc_zeros::<f32>(c)?;
        let invstd = dev.alloc_zeros::<f32>(c)?;
        let sum = dev.get_or_load_custom_func(&format!("bn_sum_part_{}", suffix(xs.dtype())?), MODULE, PTX)?;
        let fin = dev.get_or_load_custom_func("bn_stat_final", MODULE, PTX)?;
        let fin_cfg = flat_cfg(c);
        for square in [0i32, 1] {
            macro_rules! run {
                ($t:ty) => {{
                    let x = view::<$t>(xs, xl)?;
                    let mut bld = sum.builder();
                    bld.arg(&x);
                    bld.arg(&mean);
                    bld.arg(&part);
                    candle_core::builder_arg!(bld, b as i32, c as i32, l as i32, BN_CHUNK_B as i32, square);
                    // SAFETY: grid (C, chunks); `part` holds chunks·C values, `mean` C.
                    unsafe { bld.launch(cfg) }.w()?;
                }};
            }
            if xs.dtype() == DType::F32 {
                run!(f32)
            } else {
                run!(bf16)
            }
            let stat = if square == 0 { &mean } else { &var };
            let mut bld = fin.builder();
            bld.arg(&part);
            bld.arg(stat);
            bld.arg(&invstd);
            candle_core::builder_arg!(bld, chunks as i32, c as i32, (b * l) as i32, self.eps, square);
            // SAFETY: one thread per channel over buffers of C (and chunks·C) values.
            unsafe { bld.launch(fin_cfg) }.w()?;
        }
        Ok(BnStatsDev { mean: tensor(mean, &dev, c), var: tensor(var, &dev, c), invstd: tensor(invstd, &dev, c) })
    }
}

impl CustomOp3 for BnFwd {
    fn name(&self) -> &'static str {
        "vasomim-cuda-batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu("batch_norm")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (b, c, l) = xl.shape().dims3()?;
        if wl.shape().elem_count() != c || bl.shape().elem_count() != c {
            candle_core::bail!("batch_norm: weight {:?} / bias {:?} for {c} channels", wl.dims(), bl.dims());
        }
        if self.train && b * l < 2 {
            candle_core::bail!("batch_norm: training needs more than 1 value per channel");
        }
        let stats = if self.train {
            let s = self.batch_stats(xs, xl)?;
            *self.stats.lock().map_err(|_| candle_core::Error::msg("batch_norm: poisoned"))? = Some(s.clone());
            s
        } else {
            self.stats
                .lock()
                .map_err(|_| candle_core::Error::msg("batch_norm: poisoned"))?
                .clone()
                .ok_or_else(|| candle_core::Error::msg("batch_norm: eval mode without statistics"))?
        };
        let (mg, ml) = cuda_of(&stats.mean)?;
        let (ig, il) = cuda_of(&stats.invstd)?;
        let (mean, invstd) = (view::<f32>(storage(&mg), &ml)?, view::<f32>(storage(&ig), &il)?);
        let (w, bias) = (view::<f32>(ws, wl)?, view::<f32>(bs, bl)?);
        let n = b * c * l;
        let f = dev.get_or_load_custom_func(&format!("bn_apply_{}", suffix(xs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(xs, xl)?;
                // SAFETY: every element is written by the kernel.
                let y = unsafe { dev.alloc::<$t>(n)? };
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&mean);
                bld.arg(&invstd);
                bld.arg(&w);
                bld.arg(&bias);
                bld.arg(&y);
                candle_core::builder_arg!(bld, n, c as i32, l as i32);
                // SAFETY: grid-stride loop over n elements; per-channel buffers of C values.
                unsafe { bld.launch(flat_cfg(n)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let y = if xs.dtype() == DType::F32 { run!(f32) } else { run!(bf16) };
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::msg("batch_norm: poisoned"))?
            .clone()
            .ok_or_else(|| candle_core::Error::msg("batch_norm backward: no statistics from the forward"))?;
        let g = g.to_dtype(x.dtype())?.contiguous()?;
        // (Σ g·x̂; Σ g) per channel: dw and db, and what the train-mode dx needs.
        let sums = g.apply_op1_no_bwd(&BnBwdPart { x: x.clone(), stats: stats.clone() })?;
        let dx = if x.track_op() {
            Some(g.apply_op1_no_bwd(&BnBwdDx {
                x: x.clone(),
                w: w.clone(),
                stats,
                sums: sums.clone(),
                train: self.train,
            })?)
        } else {
            None
        };
        let dw = w.track_op().then(|| sums.get(0)).transpose()?;
        let db = b.track_op().then(|| sums.get(1)).transpose()?;
        Ok((dx, dw, db))
    }
}

/// (Σ g·x̂; Σ g) per channel as a (2, C) f32 tensor, applied to dy.
struct BnBwdPart {
    x: Tensor,
    stats: BnStatsDev,
}

impl CustomOp1 for BnBwdPart {
    fn name(&self) -> &'static str {
        "vasomim-cuda-batch-norm-bwd-sums"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("batch_norm backward")
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = gs.device().clone();
        let (b, c, l) = gl.shape().dims3()?;
        let (xg, xl) = cuda_of(&self.x)?;
        let (mg, ml) = cuda_of(&self.stats.mean)?;
        let (ig, il) = cuda_of(&self.stats.invstd)?;
        let (mean, invstd) = (view::<f32>(storage(&mg), &ml)?, view::<f32>(storage(&ig), &il)?);
        let (cfg, chunks) = bn_cfg(c, b);
        let part = dev.alloc_zeros::<f32>(chunks * 2 * c)?;
        let f = dev.get_or_load_custom_func(&format!("bn_bwd_part_{}", suffix(gs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let (x, g) = (view::<$t>(storage(&xg), &xl)?, view::<$t>(gs, gl)?);
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&g);
                bld.arg(&mean);
                bld.arg(&invstd);
                bld.arg(&part);
                candle_core::builder_arg!(bld, b as i32, c as i32, l as i32, BN_CHUNK_B as i32);
                // SAFETY: grid (C, chunks); `part` holds chunks·2·C values.
                unsafe { bld.launch(cfg) }.w()?;
            }};
        }
        if gs.dtype() == DType::F32 {
            run!(f32)
        } else {
            run!(bf16)
        }
        let out = col_sum_final(&dev, &part, chunks, 2, c)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((2, c))))
    }
}

/// dx of BatchNorm, applied to dy.
struct BnBwdDx {
    x: Tensor,
    w: Tensor,
    stats: BnStatsDev,
    sums: Tensor,
    train: bool,
}

impl CustomOp1 for BnBwdDx {
    fn name(&self) -> &'static str {
        "vasomim-cuda-batch-norm-bwd-dx"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("batch_norm backward")
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = gs.device().clone();
        let (b, c, l) = gl.shape().dims3()?;
        let n = b * c * l;
        let (xg, xl) = cuda_of(&self.x)?;
        let (wg, wl) = cuda_of(&self.w)?;
        let (mg, ml) = cuda_of(&self.stats.mean)?;
        let (ig, il) = cuda_of(&self.stats.invstd)?;
        let (sg, sl) = cuda_of(&self.sums)?;
        let (w, mean, invstd, sums) = (
            view::<f32>(storage(&wg), &wl)?,
            view::<f32>(storage(&mg), &ml)?,
            view::<f32>(storage(&ig), &il)?,
            view::<f32>(storage(&sg), &sl)?,
        );
        let f = dev.get_or_load_custom_func(&format!("bn_bwd_dx_{}", suffix(gs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let (x, g) = (view::<$t>(storage(&xg), &xl)?, view::<$t>(gs, gl)?);
                // SAFETY: every element is written by the kernel.
                let dx = unsafe { dev.alloc::<$t>(n)? };
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&g);
                bld.arg(&mean);
                bld.arg(&invstd);
                bld.arg(&w);
                bld.arg(&sums);
                bld.arg(&dx);
                candle_core::builder_arg!(bld, n, c as i32, l as i32, 1.0f32 / (b * l) as f32, self.train as i32);
                // SAFETY: grid-stride loop over n elements; per-channel buffers of C (sums 2·C).
                unsafe { bld.launch(flat_cfg(n)) }.w()?;
                CudaStorage::wrap_cuda_slice(dx, dev.clone())
            }};
        }
        let dx = if gs.dtype() == DType::F32 { run!(f32) } else { run!(bf16) };
        Ok((dx, gl.shape().clone()))
    }
}
