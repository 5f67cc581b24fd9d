//! Checkpoint round trips, foreign formats, adaptation rules and error messages; training-step
//! invariants (accumulation, clipping, optimizer state restore).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use vasomim_core::checkpoint::{self, LoadOptions};
use vasomim_core::nn::mae::{random_masking, MaskedAutoencoder, Masking};
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::InitRng;
use vasomim_core::trainer::pretrain::{PretrainTrainer, StepParams};

fn imgs(cfg: &MaeConfig, b: usize, seed: u64) -> Tensor {
    let mut rng = InitRng::new(seed);
    let n = b * cfg.in_chans * cfg.img_size * cfg.img_size;
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, (b, cfg.in_chans, cfg.img_size, cfg.img_size), &Device::Cpu).unwrap()
}

fn masking(cfg: &MaeConfig, b: usize, seed: u64) -> Masking {
    random_masking(b, cfg.num_patches(), 0.75, &mut InitRng::new(seed), &Device::Cpu).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    vec(a).iter().zip(vec(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

#[test]
fn save_load_round_trip_continues_training_identically() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = MaeConfig::micro_test();
    let x = imgs(&cfg, 4, 1);
    let m = masking(&cfg, 4, 2);
    let p = StepParams::default();
    let mut a = PretrainTrainer::create(&cfg, &Device::Cpu, 3).unwrap();
    a.pretrain_step(&x, &m, None, &p).unwrap();
    let path = dir.path().join("a.safetensors");
    checkpoint::save(&path, &a.model, Some(&a.opt), 1).unwrap();

    let loaded = checkpoint::load(&path, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(loaded.report.config_source, "metadata");
    assert!(loaded.report.missing.is_empty() && loaded.report.unexpected.is_empty(), "{:?}", loaded.report);
    assert_eq!(loaded.step, 1);
    assert_eq!(loaded.model.cfg, cfg);
    let mut b = PretrainTrainer::new(loaded.model, &[]).unwrap();
    let (state, s) = loaded.optimizer.expect("optimizer state saved");
    b.opt.load_state(&state, s).unwrap();
    assert_eq!(b.opt.step, 1);
    // Same next step, bit for bit: parameters, buffers and moments all came back.
    let sa = a.pretrain_step(&x, &m, None, &p).unwrap();
    let sb = b.pretrain_step(&x, &m, None, &p).unwrap();
    assert_eq!(sa.loss_rec, sb.loss_rec);
    for ((n, va), (_, vb)) in a.model.params.entries.iter().zip(&b.model.params.entries) {
        assert_eq!(max_abs_diff(va.as_tensor(), vb.as_tensor()), 0.0, "{n}");
    }
}

#[test]
fn mis_shaped_key_names_the_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = MaeConfig::micro_test();
    let model = MaskedAutoencoder::new(&cfg, &Device::Cpu, 0).unwrap();
    let mut sd: HashMap<String, Tensor> = checkpoint::state_dict(&model).into_iter().collect();
    sd.insert(
        "blocks.1.mlp.fc1.weight".into(),
        Tensor::zeros((100, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let path = dir.path().join("bad.safetensors");
    let meta: HashMap<String, String> = [("config".to_string(), serde_json::to_string(&cfg).unwrap())].into();
    let bytes = safetensors::tensor::serialize(sd.iter().map(|(k, v)| (k.as_str(), v)), Some(meta)).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let e = checkpoint::load(&path, &LoadOptions::default(), &Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("blocks.1.mlp.fc1.weight") && e.contains("[100, 32]") && e.contains("[128, 32]"), "{e}");

    std::fs::write(dir.path().join("junk.safetensors"), b"not a checkpoint at all").unwrap();
    let e = checkpoint::load(&dir.path().join("junk.safetensors"), &LoadOptions::default(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a safetensors or PyTorch file"), "{e}");
}

#[test]
fn mae_pth_checkpoint_loads_and_gives_pytorchs_loss() {
    // Written by scripts/golden/torch_mae.py: {"model": state_dict, "epoch": 3} of the micro
    // reference with its closed-form weights; its loss on the fixture batch is in the npz.
    let opts = LoadOptions { preset: Some("micro".into()), ..Default::default() };
    let e = checkpoint::load(&golden("mae_micro_state.pth"), &opts, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("preset micro has embed 64"), "{e}");
    // The micro reference is narrower than the micro preset: no preset matches by shape either.
    let e = checkpoint::load(&golden("mae_micro_state.pth"), &LoadOptions::default(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no preset has embed 32 and depth 2"), "{e}");

    let (tensors, _) = checkpoint::read_tensors(&golden("mae_micro_state.pth")).unwrap();
    assert_eq!(tensors["patch_embed.proj.weight"].dims(), &[32, 3, 8, 8]);
    let g: HashMap<String, Tensor> = Tensor::read_npz(golden("mae_micro.npz")).unwrap().into_iter().collect();
    let cfg = MaeConfig { in_chans: 3, ..MaeConfig::micro_test() };
    let model = MaskedAutoencoder::new(&cfg, &Device::Cpu, 0).unwrap();
    for (n, v) in &model.params.entries {
        v.set(&tensors[n]).unwrap();
    }
    assert!(max_abs_diff(&tensors["pos_embed"], &model.encoder.pos_embed) < 1e-6, "PyTorch sin-cos table equals ours");
    assert!(max_abs_diff(&tensors["decoder_pos_embed"], &model.decoder_pos_embed) < 1e-6);
    let m = Masking {
        ids_keep: g["ids_keep"].to_dtype(candle_core::DType::U32).unwrap(),
        ids_restore: g["ids_restore"].to_dtype(candle_core::DType::U32).unwrap(),
        mask: g["mask"].clone(),
    };
    let n = 2 * 3 * 32 * 32;
    let x: Vec<f32> = (0..n).map(|i| ((0.37 * i as f64 + 0.5).sin() + 0.3 * (0.011 * i as f64).cos()) as f32).collect();
    let x = Tensor::from_vec(x, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let loss = model.forward(&x, &m).unwrap().loss.to_scalar::<f32>().unwrap();
    let expect = vec(&g["loss"])[0];
    assert!((loss - expect).abs() <= 1e-4 * expect, "{loss} vs {expect}");
}

#[test]
fn bare_file_is_recognised_and_adapted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = MaeConfig { img_size: 64, in_chans: 3, ..MaeConfig::preset("micro").unwrap() };
    let src = MaskedAutoencoder::new(&cfg, &Device::Cpu, 5).unwrap();
    let path = dir.path().join("timm.safetensors");
    checkpoint::export_timm(&path, &src).unwrap();
    let (t, _) = checkpoint::read_tensors(&path).unwrap();
    let mut keys: Vec<&String> = t.keys().collect();
    keys.sort();
    assert!(keys.iter().all(|k| !k.starts_with("decoder") && *k != "mask_token"), "{keys:?}");
    assert_eq!(t.len(), 4 + 12 * cfg.depth + 2);

    // Export metadata carries our config: load it without (bare) by stripping metadata.
    let bytes = safetensors::tensor::serialize(t.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    let bare = dir.path().join("bare.safetensors");
    std::fs::write(&bare, bytes).unwrap();
    let l = checkpoint::load(&bare, &LoadOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(l.report.config_source, "preset micro (by shapes)");
    assert_eq!((l.model.cfg.img_size, l.model.cfg.patch_size, l.model.cfg.in_chans), (64, 16, 3));
    assert!(l.report.missing.iter().all(|k| k.starts_with("decoder") || k == "mask_token"));
    let x = imgs(&cfg, 2, 9);
    assert!(max_abs_diff(&src.encoder.embed(&x).unwrap(), &l.model.encoder.embed(&x).unwrap()) < 1e-6);

    // 3 -> 1 channels and 64² -> 32²: a grey image replicated gives the same patch embedding sum;
    // the position embedding is resampled.
    let opts = LoadOptions { img_size: Some(32), in_chans: Some(1), ..Default::default() };
    let l1 = checkpoint::load(&bare, &opts, &Device::Cpu).unwrap();
    assert!(
        l1.report.adapted.contains(&"patch_embed.proj.weight: 3 -> 1 channels".to_string()),
        "{:?}",
        l1.report.adapted
    );
    assert!(l1.report.adapted.contains(&"pos_embed: grid 4 -> 2".to_string()), "{:?}", l1.report.adapted);
    let grey = imgs(&MaeConfig { in_chans: 1, img_size: 32, ..cfg.clone() }, 1, 4);
    let rgb = Tensor::cat(&[&grey, &grey, &grey], 1).unwrap();
    let small_src =
        checkpoint::load(&bare, &LoadOptions { img_size: Some(32), ..Default::default() }, &Device::Cpu).unwrap();
    let a = small_src.model.encoder.patch_embed(&rgb).unwrap();
    let b = l1.model.encoder.patch_embed(&grey).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn accumulated_micro_batches_equal_the_full_batch() {
    let cfg = MaeConfig::micro_test();
    let tr = PretrainTrainer::create(&cfg, &Device::Cpu, 8).unwrap();
    let x = imgs(&cfg, 5, 3);
    let m = masking(&cfg, 5, 4);
    let (l1, g1) = tr.loss_and_grads(&x, &m, 1).unwrap();
    let (l3, g3) = tr.loss_and_grads(&x, &m, 3).unwrap();
    assert!((l1 - l3).abs() < 1e-6 * l1.abs(), "{l1} vs {l3}");
    for (a, b) in g1.iter().zip(&g3) {
        let scale = vec(a).iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max_abs_diff(a, b) <= 1e-5 * scale.max(1e-12));
    }
}

#[test]
fn clipping_bounds_the_update_and_reports_the_norm() {
    let cfg = MaeConfig::micro_test();
    let x = imgs(&cfg, 2, 3);
    let m = masking(&cfg, 2, 4);
    let mut a = PretrainTrainer::create(&cfg, &Device::Cpu, 8).unwrap();
    let (_, g) = a.loss_and_grads(&x, &m, 1).unwrap();
    let norm = vasomim_core::optim::global_norm(&g).unwrap();
    // The norm is the f64 one of all entries (the CPU path sums chunks in parallel).
    let exact: f64 = g.iter().flat_map(vec).map(|v| v as f64 * v as f64).sum::<f64>().sqrt();
    assert!((norm - exact).abs() <= 1e-12 * exact, "{norm} vs {exact}");
    let mut clipped = g.clone();
    let before = vasomim_core::optim::clip_grad_norm(&mut clipped, norm / 4.0).unwrap();
    assert!((before - norm).abs() < 1e-9);
    let after = vasomim_core::optim::global_norm(&clipped).unwrap();
    assert!((after - norm / 4.0).abs() < 1e-4 * norm, "{after} vs {}", norm / 4.0);
    let s = a.pretrain_step(&x, &m, None, &StepParams { clip_grad: Some(norm / 4.0), ..Default::default() }).unwrap();
    assert!((s.grad_norm - norm).abs() < 1e-6 * norm);
}

#[test]
fn frozen_tensors_are_not_optimized() {
    let cfg = MaeConfig::micro_test();
    let x = imgs(&cfg, 2, 3);
    let m = masking(&cfg, 2, 4);
    let mut tr = PretrainTrainer::new(
        MaskedAutoencoder::new(&cfg, &Device::Cpu, 1).unwrap(),
        &["patch_embed".into(), "blocks.0".into()],
    )
    .unwrap();
    let before: Vec<(String, Tensor)> =
        tr.model.params.entries.iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect();
    tr.pretrain_step(&x, &m, None, &StepParams::default()).unwrap();
    for ((n, b), (_, v)) in before.iter().zip(&tr.model.params.entries) {
        let frozen = n.starts_with("patch_embed.") || n.starts_with("blocks.0.");
        let moved = max_abs_diff(b, v.as_tensor()) > 0.0;
        assert_eq!(moved, !frozen, "{n}");
    }
}
