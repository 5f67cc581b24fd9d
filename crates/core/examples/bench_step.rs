//! Times one training step (forward, backward, AdamW) on the CPU. Driven by
//! `scripts/bench/step.py`. Tasks:
//!
//! - `mae`: the MAE pre-training step; peer `scripts/peers/torch_mae_step.py`.
//! - `vasomim`: the same plus what VasoMIM adds per step: P = σ(S(img)) from the frozen UNeXt-S
//!   (randomly initialised: the cost does not depend on the weights) and L_cons through it
//!   (weight 1). Compared with `mae` (ours against ours).
//! - `finetune`: the segmentation step (ViT + U-Net head at `--head-scale`, binary, Dice + BCE,
//!   no drop-path); peer `scripts/peers/torch_segvit_step.py`.
//!
//! usage: bench_step [--task mae] [--preset tiny] [--batch 8] [--img 224] [--mask 0.5] [--steps 10]
//!                   [--warmup 2] [--chans 3] [--head-scale 0.25]
//!        bench_step --idle   (prints the idle process's peak RSS and exits)
//! prints one JSON line: {"task", "preset", "batch", "ms_per_step", "img_per_s", "peak_rss_mb", "threads"}

use candle_core::{Device, Tensor};
use vasomim_core::nn::mae::random_masking;
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::segmentation::SegmentationConfig;
use vasomim_core::nn::unext::{UNext, UNextConfig};
use vasomim_core::nn::InitRng;
use vasomim_core::trainer::pretrain::{Consistency, PretrainTrainer, StepParams, VesselSegmentor};
use vasomim_core::trainer::segmentation::SegmentationTrainer;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// One timed step (the masks are drawn from the rng).
type StepFn = dyn FnMut(&mut InitRng) -> candle_core::Result<()> + Send;

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--idle") {
        // The process's footprint before any work (the benchmark reports memory net of it).
        println!("{{\"idle\":true,\"peak_rss_mb\":{:.1}}}", peak_rss_mb());
        return Ok(());
    }
    let task: String = arg(&args, "--task", "mae".to_string());
    let preset: String = arg(&args, "--preset", "tiny".to_string());
    let batch: usize = arg(&args, "--batch", 8);
    let img: usize = arg(&args, "--img", 224);
    let mask: f64 = arg(&args, "--mask", 0.5);
    let steps: usize = arg(&args, "--steps", 10);
    let warmup: usize = arg(&args, "--warmup", 2);
    let chans: usize = arg(&args, "--chans", 3);
    let head_scale: f64 = arg(&args, "--head-scale", 0.25);
    let cfg = MaeConfig { img_size: img, in_chans: chans, ..MaeConfig::preset(&preset).expect("unknown preset") };
    let dev = Device::Cpu;
    let mut rng = InitRng::new(1);
    let n = batch * chans * img * img;
    let x = Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (batch, chans, img, img), &dev)?;
    let mut step: Box<StepFn> = match task.as_str() {
        "mae" | "vasomim" => {
            let mut tr = PretrainTrainer::create(&cfg, &dev, 0)?;
            let seg = (task == "vasomim")
                .then(|| UNext::new_frozen(&UNextConfig { in_chans: chans }, &dev, 2))
                .transpose()?;
            let p = StepParams { cons_weight: if seg.is_some() { 1.0 } else { 0.0 }, ..StepParams::default() };
            Box::new(move |rng: &mut InitRng| {
                let m = random_masking(batch, cfg.num_patches(), mask, rng, &dev)?;
                match &seg {
                    Some(seg) => {
                        // P for this batch (the trainer computes it once per batch), then the step.
                        let prob = candle_nn::ops::sigmoid(&seg.logits(&x)?)?.detach();
                        let cons = Consistency { seg, prob: &prob, weight: 1.0 };
                        tr.pretrain_step(&x, &m, Some(&cons), &p)?
                    }
                    None => tr.pretrain_step(&x, &m, None, &p)?,
                };
                Ok(())
            })
        }
        "finetune" => {
            let scfg = SegmentationConfig { encoder: cfg.clone(), num_classes: 1, head_scale, drop_path: 0.0 };
            let mut tr = SegmentationTrainer::create(&scfg, &dev, 0, 0.75)?;
            let y: Vec<f32> = (0..batch * img * img).map(|_| if rng.uniform() < 0.1 { 1.0 } else { 0.0 }).collect();
            let y = Tensor::from_vec(y, (batch, 1, img, img), &dev)?;
            Box::new(move |_: &mut InitRng| {
                tr.train_step(&x, &y, 1e-4, 0.05)?;
                Ok(())
            })
        }
        other => panic!("unknown task {other:?} (mae, vasomim, finetune)"),
    };
    // Each step as the Node addon runs it: one job on the CPU pool.
    let mut run = |rng: &mut InitRng| vasomim_core::device::exclusive(|| step(rng));
    for _ in 0..warmup {
        run(&mut rng)?;
    }
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        run(&mut rng)?;
    }
    let dt = t0.elapsed().as_secs_f64() / steps as f64;
    println!(
        "{{\"task\":\"{task}\",\"preset\":\"{preset}\",\"batch\":{batch},\"img\":{img},\"mask\":{mask},\"threads\":{},\"ms_per_step\":{:.2},\"img_per_s\":{:.2},\"peak_rss_mb\":{:.1}}}",
        candle_core::utils::get_num_threads(),
        dt * 1e3,
        batch as f64 / dt,
        peak_rss_mb()
    );
    Ok(())
}
