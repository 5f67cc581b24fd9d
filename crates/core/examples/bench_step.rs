//! Times one MAE pre-training step (forward, backward, AdamW) on the CPU; the peer is
//! `scripts/peers/torch_mae_step.py`. Driven by `scripts/bench/step.py`.
//!
//! usage: bench_step [--preset tiny] [--batch 8] [--img 224] [--mask 0.5] [--steps 10] [--warmup 2] [--chans 3]
//!        bench_step --idle   (prints the idle process's peak RSS and exits)
//! prints one JSON line: {"preset", "batch", "ms_per_step", "img_per_s", "peak_rss_mb", "threads"}

use candle_core::{Device, Tensor};
use vasomim_core::nn::mae::random_masking;
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::InitRng;
use vasomim_core::trainer::pretrain::{PretrainTrainer, StepParams};

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

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--idle") {
        // The process's footprint before any work (the benchmark reports memory net of it).
        println!("{{\"idle\":true,\"peak_rss_mb\":{:.1}}}", peak_rss_mb());
        return Ok(());
    }
    let preset: String = arg(&args, "--preset", "tiny".to_string());
    let batch: usize = arg(&args, "--batch", 8);
    let img: usize = arg(&args, "--img", 224);
    let mask: f64 = arg(&args, "--mask", 0.5);
    let steps: usize = arg(&args, "--steps", 10);
    let warmup: usize = arg(&args, "--warmup", 2);
    let chans: usize = arg(&args, "--chans", 3);
    let cfg = MaeConfig { img_size: img, in_chans: chans, ..MaeConfig::preset(&preset).expect("unknown preset") };
    let dev = Device::Cpu;
    let mut tr = PretrainTrainer::create(&cfg, &dev, 0)?;
    let mut rng = InitRng::new(1);
    let n = batch * chans * img * img;
    let x = Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (batch, chans, img, img), &dev)?;
    let p = StepParams::default();
    let mut step = |rng: &mut InitRng| -> candle_core::Result<()> {
        let m = random_masking(batch, cfg.num_patches(), mask, rng, &dev)?;
        tr.pretrain_step(&x, &m, None, &p)?;
        Ok(())
    };
    for _ in 0..warmup {
        step(&mut rng)?;
    }
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        step(&mut rng)?;
    }
    let dt = t0.elapsed().as_secs_f64() / steps as f64;
    println!(
        "{{\"preset\":\"{preset}\",\"batch\":{batch},\"img\":{img},\"mask\":{mask},\"threads\":{},\"ms_per_step\":{:.2},\"img_per_s\":{:.2},\"peak_rss_mb\":{:.1}}}",
        candle_core::utils::get_num_threads(),
        dt * 1e3,
        batch as f64 / dt,
        peak_rss_mb()
    );
    Ok(())
}
