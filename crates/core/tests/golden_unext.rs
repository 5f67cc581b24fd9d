//! UNeXt-S parity with PyTorch: fixtures written by `scripts/golden/torch_unext.py` (an
//! independent float64 PyTorch implementation from the spec): train-mode logits, loss, every
//! gradient, running stats, eval-mode logits and input gradient, two Adam steps, and the import
//! of a `.pth` state dict. Plus a finite-difference check of the eval-mode input gradient and
//! checkpoint round trips. Runs without Python: the fixtures are committed.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use vasomim_core::checkpoint::segmentor;
use vasomim_core::nn::layers::BnRunning;
use vasomim_core::nn::loss::segmentor_loss;
use vasomim_core::nn::unext::{UNext, UNextConfig};
use vasomim_core::trainer::segmentor::SegmentorTrainer;

fn golden() -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/unext_s64.npz");
    Tensor::read_npz(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).into_iter().collect()
}

fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

/// SplitMix64 in counter mode, as `uniform01` in the script.
fn uniform01(seed: u64, n: usize) -> Vec<f64> {
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// Same closed form as `synthetic` in the script.
fn synthetic(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    uniform01(fnv1a(name), n)
        .into_iter()
        .map(|u| {
            let u = 2.0 * u - 1.0;
            (if shape.len() >= 2 {
                u / ((n / shape[0]) as f64).sqrt()
            } else if name.ends_with(".weight") {
                1.0 + 0.1 * u
            } else {
                0.1 * u
            }) as f32
        })
        .collect()
}

fn reference_model() -> UNext {
    let model = UNext::new(&UNextConfig { in_chans: 3 }, &Device::Cpu, 7).unwrap();
    for (name, v) in &model.params.entries {
        v.set(&Tensor::from_vec(synthetic(name, v.dims()), v.dims(), &Device::Cpu).unwrap()).unwrap();
    }
    model
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn scalar(g: &HashMap<String, Tensor>, k: &str) -> f64 {
    vec(&g[k])[0] as f64
}

/// Max |a − b| relative to max |b| of the tensor.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs() / scale).fold(0.0, f64::max)
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(x.abs() as f64))
}

fn close(what: &str, ours: f64, theirs: f64, rel: f64) {
    assert!((ours - theirs).abs() <= rel * theirs.abs().max(1e-12), "{what}: {ours} vs PyTorch {theirs}");
}

/// Observed on this machine (f32 against PyTorch's f64): logits ≈ 1e-6, gradients ≤ 2e-6 of
/// each tensor's max; the bounds leave 10× for other CPUs' summation orders.
const FWD_REL: f64 = 1e-5;
const GRAD_REL: f64 = 2e-5;

#[test]
fn state_dict_has_the_authors_101_names() {
    let m = UNext::new(&UNextConfig::default(), &Device::Cpu, 0).unwrap();
    let sd = m.state_dict().unwrap();
    assert_eq!(sd.len(), 101);
    assert_eq!(m.params.entries.len(), 80);
    let names: Vec<&str> = sd.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "encoder1.weight",
        "ebn1.running_mean",
        "ebn1.num_batches_tracked",
        "patch_embed3.proj.weight",
        "patch_embed4.norm.bias",
        "block1.0.norm2.weight",
        "block2.0.mlp.fc1.weight",
        "dblock1.0.mlp.dwconv.dwconv.weight",
        "dblock2.0.mlp.fc2.bias",
        "dnorm4.weight",
        "decoder5.bias",
        "final.weight",
    ] {
        assert!(names.contains(&want), "{want} missing");
    }
    let n = m.params.num_elements();
    assert!((240_000..270_000).contains(&n), "{n} parameters");
}

#[test]
fn train_mode_logits_loss_and_every_gradient_match_pytorch() {
    let g = golden();
    let model = reference_model();
    let mut names: Vec<String> = model.params.entries.iter().map(|(n, _)| n.clone()).collect();
    let mut theirs: Vec<String> = g.keys().filter_map(|k| k.strip_prefix("grad.").map(String::from)).collect();
    names.sort();
    theirs.sort();
    assert_eq!(names, theirs, "parameter names differ from the PyTorch reference");

    let x = Var::from_tensor(&g["x"]).unwrap();
    let logits = model.forward(x.as_tensor(), true).unwrap();
    let e_fwd = rel_err(&vec(&logits), &vec(&g["logits_train"]));
    assert!(e_fwd <= FWD_REL, "train logits differ by {e_fwd:e}");
    let l = segmentor_loss(&logits, &g["y"]).unwrap();
    let s = |t: &Tensor| t.to_scalar::<f32>().unwrap() as f64;
    close("loss", s(&l.loss), scalar(&g, "loss"), 1e-5);
    close("bce", s(&l.bce), scalar(&g, "bce"), 1e-5);
    close("dice", s(&l.dice), scalar(&g, "dice"), 1e-5);

    let grads = l.loss.backward().unwrap();
    let global_max =
        model.params.entries.iter().map(|(n, _)| max_abs(&vec(&g[&format!("grad.{n}")]))).fold(0f64, f64::max);
    let mut worst = (0f64, String::new());
    let mut zero = Vec::new();
    for (name, v) in &model.params.entries {
        let ours = vec(grads.get(v.as_tensor()).expect("every parameter gets a gradient"));
        let theirs = vec(&g[&format!("grad.{name}")]);
        if max_abs(&theirs) < 1e-12 * global_max {
            // A conv bias right before a train-mode BatchNorm: the gradient is 0 in exact
            // arithmetic (the batch mean absorbs the bias); both sides are rounding noise.
            let m = max_abs(&ours);
            assert!(m <= 1e-6 * global_max, "{name}: gradient should vanish, max |g| = {m:e}");
            zero.push(name.clone());
            continue;
        }
        let e = rel_err(&ours, &theirs);
        assert!(e <= GRAD_REL, "{name}: gradient differs by {e:e} (relative to its max)");
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    zero.sort();
    assert_eq!(
        zero,
        [
            "decoder1.bias",
            "decoder2.bias",
            "decoder3.bias",
            "decoder4.bias",
            "encoder1.bias",
            "encoder2.bias",
            "encoder3.bias"
        ]
    );
    let ex = rel_err(&vec(grads.get(x.as_tensor()).unwrap()), &vec(&g["x_grad_train"]));
    assert!(ex <= GRAD_REL, "input gradient differs by {ex:e}");

    let mut worst_stat = 0f64;
    for (bn, layer) in model.batch_norms() {
        let r = layer.running();
        assert_eq!(r.num_batches_tracked, 1, "{bn}");
        for (k, ours) in [("running_mean", &r.mean), ("running_var", &r.var)] {
            let e = rel_err(ours, &vec(&g[&format!("{bn}.{k}")]));
            assert!(e <= FWD_REL, "{bn}.{k} differs by {e:e}");
            worst_stat = worst_stat.max(e);
        }
    }
    eprintln!(
        "UNeXt-S train parity: logits {e_fwd:.2e}, worst gradient {:.2e} ({}), input gradient \
         {ex:.2e}, running stats {worst_stat:.2e} (relative to each tensor's max)",
        worst.0, worst.1
    );
}

/// Running stats as PyTorch has them after the first train-mode forward.
fn set_golden_running(model: &UNext, g: &HashMap<String, Tensor>) {
    for (bn, _) in model.batch_norms() {
        model
            .set_running(
                bn,
                BnRunning {
                    mean: vec(&g[&format!("{bn}.running_mean")]),
                    var: vec(&g[&format!("{bn}.running_var")]),
                    num_batches_tracked: 1,
                },
            )
            .unwrap();
    }
}

#[test]
fn eval_mode_logits_and_input_gradient_match_pytorch() {
    let g = golden();
    let model = reference_model();
    set_golden_running(&model, &g);
    let before: Vec<BnRunning> = model.batch_norms().iter().map(|(_, b)| b.running()).collect();
    let x = Var::from_tensor(&g["x"]).unwrap();
    let logits = model.forward(x.as_tensor(), false).unwrap();
    let e = rel_err(&vec(&logits), &vec(&g["logits_eval"]));
    assert!(e <= FWD_REL, "eval logits differ by {e:e}");
    let grads = segmentor_loss(&logits, &g["y"]).unwrap().loss.backward().unwrap();
    let ex = rel_err(&vec(grads.get(x.as_tensor()).unwrap()), &vec(&g["x_grad_eval"]));
    assert!(ex <= GRAD_REL, "eval input gradient differs by {ex:e}");
    let after: Vec<BnRunning> = model.batch_norms().iter().map(|(_, b)| b.running()).collect();
    assert_eq!(before, after, "eval mode must not touch the running stats");
    eprintln!("UNeXt-S eval parity: logits {e:.2e}, input gradient {ex:.2e}");
}

/// Two Adam steps through `SegmentorTrainer` (forward, backward, update, forward, backward, update).
/// Adam divides by sqrt(v): an entry whose gradient is ~0 by cancellation gets a ±lr step of
/// float-noise sign in both frameworks, so entries are held to 1e-4 of the tensor's largest value
/// plus 2 % of the two steps' size (2·lr), and at most 0.5 % of a tensor's entries may use the
/// noise allowance (2·lr). The conv biases before a train-mode BatchNorm have gradient 0 in exact
/// arithmetic: Adam turns their rounding noise into steps of any size up to lr in both
/// frameworks, so they are only held to 2·lr.
#[test]
fn two_adam_steps_match_pytorch() {
    let g = golden();
    let mut tr = SegmentorTrainer::new(reference_model()).unwrap();
    let (x, y) = (&g["x"], &g["y"]);
    let l1 = tr.train_step(x, y, 1e-3).unwrap();
    close("step-1 loss", l1.loss, scalar(&g, "loss"), 1e-5);
    let l2 = tr.train_step(x, y, 1e-3).unwrap();
    close("step-2 loss", l2.loss, scalar(&g, "loss_step2"), 1e-4);
    let lr = 1e-3f64;
    let mut worst = 0f64;
    for (name, v) in &tr.model.params.entries {
        let theirs = vec(&g[&format!("adam2.{name}")]);
        let ours = &vec(v.as_tensor())[..theirs.len()];
        let scale = max_abs(&theirs);
        let tol = 1e-4 * scale + 0.02 * 2.0 * lr;
        let zero_grad = max_abs(&vec(&g[&format!("grad.{name}")])) < 1e-15;
        let mut noisy = 0;
        for (a, b) in ours.iter().zip(&theirs) {
            let d = (*a as f64 - *b as f64).abs();
            if d > tol {
                assert!(d <= 2.0 * lr + tol, "{name}: weight differs by {d:e} after 2 steps");
                noisy += 1;
            }
            if !zero_grad {
                worst = worst.max(d);
            }
        }
        assert!(
            zero_grad || noisy * 200 <= theirs.len().max(200),
            "{name}: {noisy} of {} weights differ by more than {tol:e}",
            theirs.len()
        );
    }
    eprintln!("UNeXt-S two Adam steps: losses {:.6} / {:.6}, worst weight difference {worst:.2e}", l1.loss, l2.loss);
}

/// Directional finite differences of an eval-mode functional Σ r·logits w.r.t. the input.
/// The logit differences are taken elementwise and dotted with r in f64 (no cancellation in a
/// large f32 sum); the median over three step sizes damps the ReLU / max-pool kinks a step may
/// cross.
#[test]
fn eval_input_gradient_matches_finite_differences() {
    let model = UNext::new(&UNextConfig { in_chans: 1 }, &Device::Cpu, 3).unwrap();
    // Non-trivial running stats: one train-mode forward on another batch.
    let rand = |seed: u64, n: usize, a: f32, b: f32| -> Vec<f32> {
        uniform01(seed, n).into_iter().map(|u| a * u as f32 + b).collect()
    };
    let dims = (2, 1, 32, 32);
    let n = 2 * 32 * 32;
    let warm = Tensor::from_vec(rand(11, n, 2.0, -1.0), dims, &Device::Cpu).unwrap();
    model.forward(&warm, true).unwrap();
    let x0 = rand(12, n, 2.0, -1.0);
    let r: Vec<f64> = rand(13, n, 1.0, -0.5).iter().map(|&v| v as f64).collect();
    let rt = Tensor::from_vec(r.iter().map(|&v| v as f32).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap();
    let x = Var::from_vec(x0.clone(), dims, &Device::Cpu).unwrap();
    let f = (model.forward(x.as_tensor(), false).unwrap() * &rt).unwrap().sum_all().unwrap();
    let grad = vec(f.backward().unwrap().get(x.as_tensor()).unwrap());
    for k in 0..4u64 {
        let d = rand(100 + k, n, 2.0, -1.0);
        let logits = |s: f32| {
            let v: Vec<f32> = x0.iter().zip(&d).map(|(a, b)| a + s * b).collect();
            vec(&model.forward(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap(), false).unwrap())
        };
        let mut fds: Vec<f64> = [1e-3f32, 5e-4, 2.5e-4]
            .iter()
            .map(|&eps| {
                let (p, m) = (logits(eps), logits(-eps));
                let dot: f64 = p.iter().zip(&m).zip(&r).map(|((a, b), w)| (*a as f64 - *b as f64) * w).sum();
                dot / (2.0 * eps as f64)
            })
            .collect();
        fds.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let fd = fds[1];
        let an: f64 = grad.iter().zip(&d).map(|(a, b)| *a as f64 * *b as f64).sum();
        eprintln!("direction {k}: finite differences {fds:?}, analytic {an}");
        assert!((fd - an).abs() <= 5e-2 * an.abs() + 1e-3, "direction {k}: finite difference {fd} vs analytic {an}");
    }
}

#[test]
fn grey_mode_and_other_sizes() {
    let m = UNext::new(&UNextConfig { in_chans: 1 }, &Device::Cpu, 1).unwrap();
    let x = Tensor::zeros((1, 1, 96, 64), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.forward(&x, false).unwrap().dims(), [1, 1, 96, 64]);
    let bad = Tensor::zeros((1, 1, 48, 64), DType::F32, &Device::Cpu).unwrap();
    let e = m.forward(&bad, false).unwrap_err().to_string();
    assert!(e.contains("multiple of 32"), "{e}");
    let wrong_c = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let e = m.forward(&wrong_c, false).unwrap_err().to_string();
    assert!(e.contains("3 channels"), "{e}");
}

#[test]
fn save_load_round_trip_keeps_weights_stats_and_optimizer() {
    let g = golden();
    let mut tr = SegmentorTrainer::new(reference_model()).unwrap();
    tr.train_step(&g["x"], &g["y"], 1e-3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seg.safetensors");
    segmentor::save(&p, &tr.model, Some(&tr.opt), 5).unwrap();
    let loaded = segmentor::load(&p, &Device::Cpu, true).unwrap();
    assert_eq!(loaded.report.config_source, "metadata");
    assert_eq!(loaded.step, 5);
    let sd0 = tr.model.state_dict().unwrap();
    let sd1: HashMap<String, Tensor> = loaded.model.state_dict().unwrap().into_iter().collect();
    for (n, t) in &sd0 {
        let u = &sd1[n];
        assert_eq!(t.dtype(), u.dtype(), "{n}");
        let (a, b) = (
            t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            u.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        );
        assert_eq!(a, b, "{n} changed in the round trip");
    }
    let p0 = tr.predict(&g["x"]).unwrap();
    let p1 = loaded.model.predict(&g["x"]).unwrap();
    assert_eq!(vec(&p0), vec(&p1));
    let (moments, opt_step) = loaded.optimizer.expect("optimizer state saved");
    assert_eq!(opt_step, 1);
    let mut tr2 = SegmentorTrainer::new(loaded.model).unwrap();
    tr2.opt.load_state(&moments, opt_step).unwrap();
    let a = tr.train_step(&g["x"], &g["y"], 1e-3).unwrap();
    let b = tr2.train_step(&g["x"], &g["y"], 1e-3).unwrap();
    assert_eq!(a, b, "training continues identically after a reload");
}

#[test]
fn pytorch_state_dict_with_seg_model_prefix_loads() {
    let g = golden();
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/unext_s64_state.pth");
    let l = segmentor::load(&p, &Device::Cpu, true).unwrap();
    assert!(l.report.missing.is_empty() && l.report.unexpected.is_empty(), "{:?}", l.report);
    assert_eq!(l.report.ignored_outside_prefix, 1);
    assert_eq!(l.model.cfg.in_chans, 3);
    for (name, v) in &l.model.params.entries {
        let e = rel_err(&vec(v.as_tensor()), &synthetic(name, v.dims()));
        assert!(e <= 1e-3, "{name}: {e:e} off the float16 copy");
    }
    for (bn, layer) in l.model.batch_norms() {
        let r = layer.running();
        assert_eq!(r.num_batches_tracked, 1);
        let e = rel_err(&r.var, &vec(&g[&format!("{bn}.running_var")]));
        assert!(e <= 1e-3, "{bn}.running_var: {e:e}");
    }
}

#[test]
fn bad_files_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let m = UNext::new(&UNextConfig::default(), &Device::Cpu, 0).unwrap();
    let mut sd = m.state_dict().unwrap();
    // A mis-shaped tensor and a missing one, in a file without our metadata.
    sd.retain(|(n, _)| n != "decoder5.bias");
    for (n, t) in sd.iter_mut() {
        if n == "block2.0.mlp.fc1.weight" {
            *t = Tensor::zeros((128, 64), DType::F32, &Device::Cpu).unwrap();
        }
    }
    sd.push(("head.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()));
    let p = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&sd.iter().cloned().collect::<HashMap<_, _>>(), &p).unwrap();
    let e = segmentor::load(&p, &Device::Cpu, false).err().unwrap().to_string();
    assert!(e.contains("block2.0.mlp.fc1.weight") && e.contains("[128, 64]"), "{e}");

    sd.retain(|(n, _)| n != "block2.0.mlp.fc1.weight");
    candle_core::safetensors::save(&sd.iter().cloned().collect::<HashMap<_, _>>(), &p).unwrap();
    let l = segmentor::load(&p, &Device::Cpu, false).unwrap();
    assert_eq!(l.report.missing, ["block2.0.mlp.fc1.weight", "decoder5.bias"]);
    assert_eq!(l.report.unexpected, ["head.weight"]);
    assert_eq!(l.report.config_source, "shapes (encoder1.weight)");
    let e = segmentor::load(&p, &Device::Cpu, true).err().unwrap().to_string();
    assert!(e.contains("missing: block2.0.mlp.fc1.weight, decoder5.bias"), "{e}");
    assert!(e.contains("unexpected: head.weight"), "{e}");
}

#[test]
fn segmentor_input_rules_name_the_field_and_the_step_is_counted() {
    use vasomim_core::trainer::segmentor::{check_lr, check_masks, config_from_json, image_dims};
    assert_eq!(image_dims(64, None).unwrap(), (64, 64));
    assert_eq!(image_dims(64, Some(96)).unwrap(), (64, 96));
    let e = image_dims(48, None).unwrap_err().to_string();
    assert!(e.contains("48x48: height and width must be positive multiples of 32"), "{e}");
    assert!(check_lr(-1.0).unwrap_err().to_string().contains("lr (-1)"));
    let e = check_masks(&[0.0, 2.0], 1, 1, 2).unwrap_err().to_string();
    assert!(e.contains("masks[1] = 2 is outside [0, 1]"), "{e}");
    assert!(check_masks(&[0.0], 1, 1, 2).unwrap_err().to_string().contains("masks has 1 values"));
    assert_eq!(config_from_json(serde_json::json!({ "inChans": 1 })).unwrap().in_chans, 1);
    let e = config_from_json(serde_json::json!({ "inChans": 2 })).unwrap_err().to_string();
    assert!(e.contains("inChans must be 1 or 3"), "{e}");
    let e = config_from_json(serde_json::json!({ "in_chans": 1 })).unwrap_err().to_string();
    assert!(e.contains("unknown field `in_chans`"), "{e}");

    let mut tr = SegmentorTrainer::create(&UNextConfig { in_chans: 1 }, &Device::Cpu, 0).unwrap();
    let x: Vec<f32> = (0..2 * 32 * 32).map(|i| (i % 7) as f32 / 7.0).collect();
    let y: Vec<f32> = (0..2 * 32 * 32).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let e = tr.step_arrays(&x[1..], &y, (32, 32), 1e-3).unwrap_err().to_string();
    assert!(e.contains("images has 2047 values"), "{e}");
    tr.step_arrays(&x, &y, (32, 32), 1e-3).unwrap();
    assert_eq!(tr.step, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    tr.save(&path, true).unwrap();
    let (back, _) = SegmentorTrainer::load(&path, &Device::Cpu, true).unwrap();
    assert_eq!(back.step, 1);
    assert_eq!(back.predict_arrays(&x, (32, 32)).unwrap(), tr.predict_arrays(&x, (32, 32)).unwrap());
}

/// Pre-training loads the segmentor frozen: backward through it (L_cons) reaches its input, the
/// reconstruction, but computes no parameter gradient; the input gradient is the trainable
/// model's, bit for bit.
#[test]
fn frozen_segmentor_gives_the_same_input_gradient_and_no_parameter_gradient() {
    let g = golden();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seg.safetensors");
    segmentor::save(&p, &reference_model(), None, 0).unwrap();
    let trainable = segmentor::load(&p, &Device::Cpu, true).unwrap().model;
    let frozen = segmentor::load_frozen(&p, &Device::Cpu, true).unwrap().model;
    assert_eq!(frozen.params.entries.len(), trainable.params.entries.len());

    let run = |m: &UNext| {
        let x = Var::from_tensor(&g["x"]).unwrap();
        let logits = m.forward(x.as_tensor(), false).unwrap();
        let loss = segmentor_loss(&logits, &g["y"]).unwrap().loss;
        let grads = loss.backward().unwrap();
        let with_grad = m.params.entries.iter().filter(|(_, v)| grads.get(v.as_tensor()).is_some()).count();
        (vec(&logits), vec(grads.get(x.as_tensor()).unwrap()), with_grad)
    };
    let (logits_t, dx_t, n_t) = run(&trainable);
    let (logits_f, dx_f, n_f) = run(&frozen);
    assert_eq!(n_t, trainable.params.entries.len(), "the trainable model has every parameter gradient");
    assert_eq!(n_f, 0, "the frozen model has {n_f} parameter gradients");
    assert!(max_abs(&dx_t) > 0.0);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&logits_f), bits(&logits_t), "frozen logits differ");
    assert_eq!(bits(&dx_f), bits(&dx_t), "frozen input gradient differs");
}
