//! Times UNeXt-S on the CPU: one segmentor training step (train-mode forward, backward, Adam)
//! and the pre-training use (eval-mode forward + backward to the input).
//!
//! usage: bench_unext [--batch 8] [--img 224] [--chans 3] [--steps 5] [--warmup 1]
//! prints one JSON line: {"batch", "img", "train_step_ms", "eval_fwd_bwd_ms", "eval_fwd_ms",
//! "dwconv_fwd_bwd_ms", "dwconv_candle_groups_fwd_bwd_ms", "threads"}

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use vasomim_core::nn::kernels::conv::dwconv3x3_nhwc;
use vasomim_core::nn::loss::segmentor_loss;
use vasomim_core::nn::unext::UNextConfig;
use vasomim_core::nn::InitRng;
use vasomim_core::trainer::segmentor::SegmentorTrainer;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (b, s, c) = (arg(&args, "--batch", 8), arg(&args, "--img", 224), arg(&args, "--chans", 3));
    let (steps, warmup) = (arg(&args, "--steps", 5), arg(&args, "--warmup", 1));
    let mut rng = InitRng::new(1);
    let n = b * c * s * s;
    let x: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    let y: Vec<f32> = (0..b * s * s).map(|_| (rng.uniform() < 0.1) as u8 as f32).collect();
    let x = Tensor::from_vec(x, (b, c, s, s), &Device::Cpu)?;
    let y = Tensor::from_vec(y, (b, 1, s, s), &Device::Cpu)?;
    let mut tr = SegmentorTrainer::create(&UNextConfig { in_chans: c }, &Device::Cpu, 0)?;
    let time = |f: &mut dyn FnMut() -> candle_core::Result<()>| -> candle_core::Result<f64> {
        for _ in 0..warmup {
            f()?;
        }
        let t = Instant::now();
        for _ in 0..steps {
            f()?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e3 / steps as f64)
    };
    let train = time(&mut || tr.train_step(&x, &y, 1e-3).map(|_| ()))?;
    let model = &tr.model;
    let eval_bwd = time(&mut || {
        let xv = Var::from_tensor(&x)?;
        let l = segmentor_loss(&model.forward(xv.as_tensor(), false)?, &y)?;
        l.loss.backward().map(|_| ())
    })?;
    let eval = time(&mut || model.forward(&x, false).map(|_| ()))?;
    // Depthwise 3×3 forward + backward at dblock2's shape (B, 28, 28, 32) for 224² input:
    // the channels-last kernel against candle's grouped conv2d (one conv per group).
    let (g, dc) = ((s / 8).max(1), 32);
    let dx = Var::from_tensor(&Tensor::randn(0f32, 1., (b, g, g, dc), &Device::Cpu)?)?;
    let dw = Var::from_tensor(&Tensor::randn(0f32, 0.3, (dc, 1, 3, 3), &Device::Cpu)?)?;
    let db = Var::from_tensor(&Tensor::zeros(dc, candle_core::DType::F32, &Device::Cpu)?)?;
    let dw_ours = time(&mut || {
        let y = dwconv3x3_nhwc(dx.as_tensor(), dw.as_tensor(), db.as_tensor())?;
        y.sum_all()?.backward().map(|_| ())
    })?;
    let dw_candle = time(&mut || {
        let nchw = dx.as_tensor().permute((0, 3, 1, 2))?.contiguous()?;
        let y = nchw.conv2d(dw.as_tensor(), 1, 1, 1, dc)?.broadcast_add(&db.as_tensor().reshape((1, dc, 1, 1))?)?;
        y.sum_all()?.backward().map(|_| ())
    })?;
    println!(
        "{{\"batch\": {b}, \"img\": {s}, \"chans\": {c}, \"train_step_ms\": {train:.1}, \"eval_fwd_bwd_ms\": {eval_bwd:.1}, \"eval_fwd_ms\": {eval:.1}, \"dwconv_fwd_bwd_ms\": {dw_ours:.2}, \"dwconv_candle_groups_fwd_bwd_ms\": {dw_candle:.2}, \"threads\": {}}}",
        rayon::current_num_threads()
    );
    Ok(())
}
