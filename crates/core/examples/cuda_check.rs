//! The device check binary: the core's training code on a GPU without Node (the GPU machine has
//! none). Built by `scripts/cuda/build.sh`, driven by `scripts/cuda/device-check.sh`; every
//! command also runs with `--device cpu` (the dry run on a machine without a GPU).
//!
//! usage: cuda_check <command> [--device cuda|cuda:N|cpu] [options]
//!
//!   correctness                    every op (f32, bf16 autocast), AdamW, and a micro and a tiny
//!                                  VasoMIM step (loss and every gradient) against the fused f32
//!                                  CPU kernels; with --device cpu the target is the composite path
//!   bench [--preset base] [--batch 256] [--mask 0.75] [--cons 0] [--precision bf16]
//!         [--steps 10] [--warmup 3] [--img 224]
//!                                  a pre-training step (MAE; with --cons w > 0 the VasoMIM step:
//!                                  P and L_cons through a frozen UNeXt-S): images/s, peak memory
//!   nccl-smoke [--preset base] [--iters 20]
//!                                  world-size-1 NCCL all-reduce (Avg) of the model's gradients,
//!                                  bucketed as a data-parallel step does: time per step
//!   pretrain [--seconds 120] [--data data/samples] [--segmentor data/models/unext-s-demo.safetensors]
//!            [--batch 64] [--precision auto]
//!                                  the demo model on the bundled angiograms through the core
//!                                  trainer and loader (random masking: the guided policy lives in
//!                                  TypeScript; P and L_cons as in the product), loss per epoch
//!
//! Each command prints human-readable lines on stderr and one JSON object per result on stdout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use vasomim_core::data::loader::{Augment, Loader, LoaderConfig, Sample};
use vasomim_core::device::{self, Precision};
use vasomim_core::nn::mae::{random_masking, Masking};
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::unext::{UNext, UNextConfig};
use vasomim_core::nn::InitRng;
use vasomim_core::parity::{compare_adamw, compare_op, compare_segmentor_step, compare_step, op_cases, Target};
use vasomim_core::trainer::pretrain::{guidance, Consistency, PretrainTrainer, StepParams};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => match args.get(i + 1).map(|v| v.parse()) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("cuda_check: {name} needs a value of the right type");
                std::process::exit(2);
            }
        },
        None => default,
    }
}

/// Waits for the device's queued work (timings must include it).
fn sync(dev: &Device) -> Result<()> {
    dev.synchronize()
}

/// Device memory in use (total − free, bytes) on CUDA; the process's resident set on the CPU.
fn memory_in_use(dev: &Device) -> f64 {
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        if let Ok((free, total)) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info() {
            return (total - free) as f64;
        }
    }
    let _ = dev;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn target(dev: &Device, precision: Precision) -> Target {
    Target { device: dev.clone(), composite: dev.is_cpu(), precision }
}

fn correctness(dev: &Device) -> Result<bool> {
    let mut ok = true;
    let mut report = |kind: &str, name: &str, precision: Precision, err: f64, tol: f64| {
        let pass = err <= tol;
        ok &= pass;
        eprintln!(
            "{:<4} {kind:<5} {name:<26} {:<5} rel err {err:.3e} (tol {tol:.0e})",
            if pass { "ok" } else { "FAIL" },
            precision.name()
        );
        println!(
            "{{\"check\":\"{kind}\",\"name\":\"{name}\",\"precision\":\"{}\",\"rel_err\":{err:e},\"tol\":{tol:e},\"pass\":{pass}}}",
            precision.name()
        );
    };
    for c in op_cases() {
        for (p, tol) in [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2)] {
            match compare_op(&c, &target(dev, p), 11) {
                Ok(d) => report("op", c.name, p, d.max(), tol),
                Err(e) => {
                    eprintln!("FAIL op    {} {}: {e}", c.name, p.name());
                    report("op", c.name, p, f64::INFINITY, tol)
                }
            }
        }
    }
    report("adamw", "adamw", Precision::F32, compare_adamw(&target(dev, Precision::F32), 3)?, 1e-5);
    let micro = MaeConfig { img_size: 32, in_chans: 1, ..MaeConfig::micro_test() };
    let tiny = MaeConfig::preset("tiny").expect("tiny preset");
    for (name, cfg, batch) in [("micro", &micro, 4), ("tiny", &tiny, 2)] {
        // f32: the 1e-4 on the loss and every gradient; bf16: the loss within bf16's op
        // tolerance, gradients (sums over many bf16 products) within 5e-2.
        for (p, tol, gtol) in [(Precision::F32, 1e-4, 1e-4), (Precision::Bf16, 2e-2, 5e-2)] {
            let d = compare_step(cfg, batch, &target(dev, p), 5)?;
            eprintln!("     step  {name}: {d:?}");
            report("step", &format!("{name}_loss_rec"), p, d.loss_rec, tol);
            report("step", &format!("{name}_loss_cons"), p, d.loss_cons, tol);
            report("step", &format!("{name}_grads({})", d.worst_name), p, d.worst_grad, gtol);
        }
    }
    // `train-segmentor`: UNeXt-S in train mode (BatchNorm batch statistics, every conv's weight
    // gradient), 64², batch 4; the running statistics it updates too.
    // f32: the loss within 1e-4, every gradient within 1e-2 and the whole gradient within 1e-3;
    // bf16: the loss and the whole gradient (conv weights before a train-mode BatchNorm are sums
    // that cancel: see `SegmentorStepDiff` for what the CPU composites measure).
    for (p, tol) in [(Precision::F32, 1e-4), (Precision::Bf16, 2e-2)] {
        let d = compare_segmentor_step(4, 64, &target(dev, p), 9)?;
        eprintln!("     step  segmentor: {d:?}");
        report("step", "segmentor_loss", p, d.loss, tol);
        if p == Precision::F32 {
            report("step", &format!("segmentor_grads({})", d.worst_name), p, d.worst_grad, 1e-2);
        }
        report("step", "segmentor_whole_grad", p, d.whole_grad, if p == Precision::F32 { 1e-3 } else { 5e-2 });
        report("step", "segmentor_running_stats", p, d.running, tol);
    }
    // Checkpoints cross devices: one step on the target, saved, loaded on the CPU (and back onto the
    // target): every parameter and moment bit for bit, and the step counter.
    let err = checkpoint_round_trip(dev)?;
    report("ckpt", "device->cpu->device", Precision::F32, err, 0.0);
    Ok(ok)
}

/// Largest |difference| of any parameter or AdamW moment after a checkpoint written on `dev` is
/// loaded on the CPU and then on `dev` again (0 when exact).
fn checkpoint_round_trip(dev: &Device) -> Result<f64> {
    use vasomim_core::checkpoint::LoadOptions;
    let cfg = MaeConfig { img_size: 32, in_chans: 1, ..MaeConfig::micro_test() };
    let mut tr = PretrainTrainer::create(&cfg, dev, 3)?;
    let mut rng = InitRng::new(4);
    let x = Tensor::from_vec((0..2 * 32 * 32).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (2, 1, 32, 32), dev)?;
    let m = random_masking(2, cfg.num_patches(), 0.5, &mut rng, dev)?;
    tr.pretrain_step(&x, &m, None, &StepParams::default())?;
    let dir = std::env::temp_dir().join(format!("cuda_check_{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(candle_core::Error::wrap)?;
    let (a, b) = (dir.join("on-device.safetensors"), dir.join("on-cpu.safetensors"));
    tr.save(&a, None)?;
    let cpu = PretrainTrainer::load(&a, &LoadOptions::default(), &[], &Device::Cpu)?.trainer;
    cpu.save(&b, None)?;
    let back = PretrainTrainer::load(&b, &LoadOptions::default(), &[], dev)?.trainer;
    std::fs::remove_dir_all(&dir).ok();
    if cpu.step != tr.step || back.step != tr.step {
        candle_core::bail!("step counter {} -> {} -> {}", tr.step, cpu.step, back.step);
    }
    let all = |t: &PretrainTrainer| -> Vec<(String, Tensor)> {
        let mut v = t.model.params.tensors();
        v.extend(t.opt.state_tensors());
        v
    };
    let mut worst = 0f64;
    for ((n, x), ((_, y), (_, z))) in all(&tr).iter().zip(all(&cpu).iter().zip(all(&back).iter())) {
        for other in [y, z] {
            let d = (x.to_device(&Device::Cpu)? - other.to_device(&Device::Cpu)?)?.abs()?.flatten_all()?.max(0)?;
            let d = d.to_scalar::<f32>()? as f64;
            if d.is_nan() {
                candle_core::bail!("{n}: NaN after the round trip");
            }
            worst = worst.max(d);
        }
    }
    Ok(worst)
}

fn bench(dev: &Device, args: &[String]) -> Result<()> {
    let preset: String = arg(args, "--preset", "base".to_string());
    let batch: usize = arg(args, "--batch", 256);
    let mask: f64 = arg(args, "--mask", 0.75);
    let cons: f64 = arg(args, "--cons", 0.0);
    let steps: usize = arg(args, "--steps", 10);
    let warmup: usize = arg(args, "--warmup", 3);
    let img: usize = arg(args, "--img", 224);
    let precision = Precision::resolve(&arg(args, "--precision", "auto".to_string()), dev)?;
    let Some(base) = MaeConfig::preset(&preset) else { candle_core::bail!("unknown preset {preset}") };
    let cfg = MaeConfig { img_size: img, ..base };
    let mem0 = memory_in_use(dev);
    let mut tr = PretrainTrainer::create(&cfg, dev, 0)?;
    tr.set_precision(precision);
    let seg = UNext::new(&UNextConfig { in_chans: cfg.in_chans }, dev, 1)?;
    let mut rng = InitRng::new(1);
    let n = batch * cfg.in_chans * img * img;
    let x = Tensor::from_vec(
        (0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(),
        (batch, cfg.in_chans, img, img),
        dev,
    )?;
    let p = StepParams { cons_weight: cons, ..StepParams::default() };
    let mut peak = mem0;
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let m = random_masking(batch, cfg.num_patches(), mask, &mut rng, dev)?;
        sync(dev)?;
        let t0 = Instant::now();
        let _ac = vasomim_core::nn::kernels::host::Autocast::enter(precision.autocast());
        if cons > 0.0 {
            let prob = guidance(Some(&seg), &x, None, 0.0, cfg.patch_size)?.prob.expect("P");
            tr.pretrain_step(&x, &m, Some(&Consistency { seg: &seg, prob: &prob, weight: cons }), &p)?;
        } else {
            tr.pretrain_step(&x, &m, None, &p)?;
        }
        sync(dev)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
        peak = peak.max(memory_in_use(dev));
    }
    let dt = median(times);
    let kind = if cons > 0.0 { "vasomim" } else { "mae" };
    eprintln!(
        "bench {kind} {preset} batch {batch} mask {mask} {}: {:.1} ms/step, {:.1} img/s, peak +{:.0} MiB",
        precision.name(),
        dt * 1e3,
        batch as f64 / dt,
        (peak - mem0) / 1048576.0
    );
    println!(
        "{{\"bench\":\"{kind}\",\"preset\":\"{preset}\",\"batch\":{batch},\"img\":{img},\"mask\":{mask},\"precision\":\"{}\",\"device\":\"{dev:?}\",\"ms_per_step\":{:.3},\"img_per_s\":{:.2},\"peak_mib\":{:.0}}}",
        precision.name(),
        dt * 1e3,
        batch as f64 / dt,
        (peak - mem0) / 1048576.0
    );
    Ok(())
}

#[cfg(feature = "nccl")]
fn nccl_smoke(dev: &Device, args: &[String]) -> Result<()> {
    use vasomim_core::distributed::{bucketed, nccl::Nccl, Collective, ReduceOp, BUCKET_BYTES};
    let preset: String = arg(args, "--preset", "base".to_string());
    let iters: usize = arg(args, "--iters", 20);
    let Some(cfg) = MaeConfig::preset(&preset) else { candle_core::bail!("unknown preset {preset}") };
    let comm = Nccl::join(dev, 0, 1)?;
    // The gradients of the model, name-ordered into buckets and averaged: the data-parallel step's
    // own path (world size 1 runs it in full here).
    let tr = PretrainTrainer::create(&cfg, dev, 0)?;
    let vars = tr.opt.vars();
    let names: Vec<&str> = vars.iter().map(|(n, _)| *n).collect();
    let mut grads: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().ones_like()).collect::<Result<_>>()?;
    let bytes: usize = grads.iter().map(|g| g.elem_count() * 4).sum();
    let mut times = Vec::new();
    for i in 0..iters + 3 {
        sync(dev)?;
        let t0 = Instant::now();
        bucketed(&names, &mut grads, BUCKET_BYTES, |t| comm.all_reduce(t, ReduceOp::Avg))?;
        sync(dev)?;
        if i >= 3 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let total = grads
        .iter()
        .map(|g| g.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>())
        .sum::<Result<f64>>()?;
    if (total - (bytes / 4) as f64).abs() > 1e-6 * (bytes / 4) as f64 {
        candle_core::bail!("nccl all-reduce (Avg, world 1) changed the gradients: sum {total}, expected {}", bytes / 4);
    }
    comm.barrier()?;
    let (dt, mb) = (median(times), bytes as f64 / 1e6);
    eprintln!(
        "nccl world 1: {preset} gradients ({mb:.0} MB, {} tensors) all-reduced in {:.3} ms",
        names.len(),
        dt * 1e3
    );
    println!(
        "{{\"nccl\":\"all_reduce_grads\",\"preset\":\"{preset}\",\"world\":1,\"mb\":{mb:.1},\"ms\":{:.4}}}",
        dt * 1e3
    );
    Ok(())
}

#[cfg(not(feature = "nccl"))]
fn nccl_smoke(_: &Device, _: &[String]) -> Result<()> {
    candle_core::bail!("this cuda_check was built without the nccl feature (scripts/cuda/build.sh builds it with it)")
}

/// The bundled angiograms of the demo (data/samples; the labels `*_gt.png` left out).
fn demo_samples(root: &Path) -> Result<Vec<Sample>> {
    let folders = ["arcade-samples", "cadica-samples", "danilov-stenosis-samples", "fercer-xca80/Angios_40_training"];
    let mut out = Vec::new();
    for f in folders {
        let dir = root.join(f);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
                n.ends_with(".png") && !n.ends_with("_gt.png")
            })
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|image| Sample { image, map: None, frame: 0 }));
    }
    if out.is_empty() {
        candle_core::bail!("no angiograms under {}", root.display());
    }
    Ok(out)
}

fn pretrain(dev: &Device, args: &[String]) -> Result<()> {
    let seconds: f64 = arg(args, "--seconds", 120.0);
    let data: String = arg(args, "--data", "data/samples".to_string());
    let seg_path: String = arg(args, "--segmentor", "data/models/unext-s-demo.safetensors".to_string());
    let batch: usize = arg(args, "--batch", 64);
    let precision = Precision::resolve(&arg(args, "--precision", "auto".to_string()), dev)?;
    let samples = demo_samples(Path::new(&data))?;
    let cfg = MaeConfig {
        decoder_embed_dim: 128,
        decoder_depth: 2,
        decoder_num_heads: 4,
        ..MaeConfig::preset("tiny").expect("tiny preset")
    };
    let augment = Augment {
        size: cfg.img_size,
        random_crop: true,
        scale: (0.2, 1.0),
        ratio: (0.75, 4.0 / 3.0),
        hflip: 0.5,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    };
    let lc = LoaderConfig {
        batch_size: batch.min(samples.len()),
        seed: 0,
        shuffle: true,
        drop_last: true,
        rank: 0,
        world: 1,
        workers: 4,
        prefetch: 2,
        augment,
    };
    let n = samples.len();
    let loader = Arc::new(Loader::new(samples, lc).map_err(candle_core::Error::msg)?);
    let mut tr = PretrainTrainer::create(&cfg, dev, 0)?;
    tr.attach_segmentor(Path::new(&seg_path))?;
    tr.set_precision(precision);
    let p = StepParams {
        adamw: vasomim_core::optim::AdamWParams { lr: 1.5e-3, beta2: 0.95, weight_decay: 0.05, ..Default::default() },
        cons_weight: 1.0,
        ..StepParams::default()
    };
    eprintln!(
        "pretrain: demo model (ViT-Ti) on {n} bundled angiograms, batch {batch}, {} on {dev:?}",
        precision.name()
    );
    let mut rng = InitRng::new(7);
    let t0 = Instant::now();
    let (mut first, mut last, mut images) = (None, 0.0, 0usize);
    let mut epoch = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        let (mut sum, mut count) = (0.0, 0usize);
        for b in loader.epoch(epoch, 0) {
            let b = b.map_err(candle_core::Error::msg)?;
            let masks: Masking = random_masking(b.n, cfg.num_patches(), 0.75, &mut rng, &Device::Cpu)?;
            let keep = masks.ids_keep.flatten_all()?.to_vec1::<u32>()?;
            let restore = masks.ids_restore.flatten_all()?.to_vec1::<u32>()?;
            let mask = masks.mask.flatten_all()?.to_vec1::<f32>()?;
            tr.guidance_of(&b, 0.0)?;
            let st = tr.step_batch(
                &b,
                vasomim_core::trainer::pretrain::MaskArrays { ids_keep: &keep, ids_restore: &restore, mask: &mask },
                &p,
            )?;
            sum += st.loss;
            count += 1;
            images += b.n;
        }
        let mean = sum / count.max(1) as f64;
        first.get_or_insert(mean);
        last = mean;
        eprintln!(
            "epoch {epoch}: loss {mean:.4} ({:.0} s, {:.1} img/s)",
            t0.elapsed().as_secs_f64(),
            images as f64 / t0.elapsed().as_secs_f64()
        );
        println!("{{\"epoch\":{epoch},\"loss\":{mean:.6},\"seconds\":{:.1}}}", t0.elapsed().as_secs_f64());
        epoch += 1;
    }
    let first = first.unwrap_or(f64::NAN);
    let falling = last < first;
    println!(
        "{{\"pretrain\":\"demo\",\"epochs\":{epoch},\"first_loss\":{first:.6},\"last_loss\":{last:.6},\"loss_falling\":{falling},\"img_per_s\":{:.2}}}",
        images as f64 / t0.elapsed().as_secs_f64()
    );
    if !falling {
        candle_core::bail!("the loss did not fall: first epoch {first}, last {last}");
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("--help");
    if matches!(cmd, "--help" | "-h" | "help") {
        eprintln!(
            "{}",
            include_str!("cuda_check.rs")
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .map(|l| l.trim_start_matches("//! ").trim_start_matches("//!"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        return;
    }
    let dev = match device::resolve(&arg(&args, "--device", "cuda".to_string())) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cuda_check: {e}");
            std::process::exit(2);
        }
    };
    let out = match cmd {
        "correctness" => {
            correctness(&dev).and_then(|ok| if ok { Ok(()) } else { candle_core::bail!("some checks failed") })
        }
        "bench" => bench(&dev, &args),
        "nccl-smoke" => nccl_smoke(&dev, &args),
        "pretrain" => pretrain(&dev, &args),
        other => {
            eprintln!("cuda_check: unknown command {other:?} (correctness, bench, nccl-smoke, pretrain; --help)");
            std::process::exit(2);
        }
    };
    if let Err(e) = out {
        eprintln!("cuda_check {cmd}: {e}");
        std::process::exit(1);
    }
}
