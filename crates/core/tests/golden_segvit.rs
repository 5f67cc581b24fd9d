//! Fine-tuning model parity with PyTorch: the segmentation ViT + U-Net adapter head against
//! `scripts/golden/torch_segvit.py` (an independent float64 PyTorch model from the spec, the
//! same closed-form weights): train-mode logits, the Dice + BCE loss, every parameter gradient
//! relative to its tensor's largest, and the largest entries of every gradient each to a tight
//! relative tolerance of its own. Runs without Python: the fixture is committed.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::synthetic;
use vasomim_core::nn::loss::segmentation_loss;
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::segmentation::{SegmentationConfig, SegmentationViT};

// Tolerances at about 10x the errors measured against PyTorch's float64 (2026-11-29, AVX-512):
// logits 3.1e-7 and loss terms 6.4e-7 relative; gradients 1.1e-5 of each tensor's largest entry;
// the TOP largest entries of every gradient 3.6e-5 of themselves; conv biases before a
// train-mode BatchNorm 1.3e-8 of the largest gradient.
const FWD_REL: f64 = 3e-6;
const LOSS_REL: f64 = 6e-6;
const GRAD_REL: f64 = 1e-4;
const TOP: usize = 4;
const TOP_REL: f64 = 4e-4;
const BN_BIAS_REL: f64 = 1.5e-7;

fn golden() -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/segvit_micro.npz");
    Tensor::read_npz(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).into_iter().collect()
}

/// The script's model: 32² grey input, patch 16, embed 16, 2 blocks of 2 heads, MLP ratio 4,
/// head widths (512, …, 32) / 32 clamped at 4, one class, no drop-path.
fn reference_model() -> SegmentationViT {
    let cfg = SegmentationConfig {
        encoder: MaeConfig {
            img_size: 32,
            patch_size: 16,
            in_chans: 1,
            embed_dim: 16,
            depth: 2,
            num_heads: 2,
            decoder_embed_dim: 16,
            decoder_depth: 1,
            decoder_num_heads: 2,
            mlp_ratio: 4.0,
            norm_pix_loss: false,
        },
        num_classes: 1,
        head_scale: 1.0 / 32.0,
        drop_path: 0.0,
    };
    let m = SegmentationViT::new(&cfg, &Device::Cpu, 0).unwrap();
    for (name, v) in &m.params.entries {
        v.set(&Tensor::from_vec(synthetic(name, v.dims()), v.dims(), &Device::Cpu).unwrap()).unwrap();
    }
    m
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(x.abs() as f64))
}

#[test]
fn train_mode_loss_and_every_gradient_match_pytorch() {
    let g = golden();
    let m = reference_model();
    let logits = m.forward(&g["x"], true, None).unwrap();
    let ref_logits = vec(&g["logits"]);
    let e_fwd = vec(&logits).iter().zip(&ref_logits).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max)
        / max_abs(&ref_logits);
    let (loss, dice, bce) = segmentation_loss(&logits, &g["y"]).unwrap();
    let s = |t: &Tensor| t.to_scalar::<f32>().unwrap() as f64;
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    let e_loss = rel(s(&loss), vec(&g["loss"])[0] as f64)
        .max(rel(s(&dice), vec(&g["dice"])[0] as f64))
        .max(rel(s(&bce), vec(&g["bce"])[0] as f64));
    let grads = loss.backward().unwrap();

    let mut theirs: Vec<&str> = g.keys().filter_map(|k| k.strip_prefix("grad.")).collect();
    theirs.sort();
    let mut ours: Vec<&str> =
        m.params.entries.iter().map(|(n, _)| n.as_str()).filter(|n| SegmentationViT::is_trainable(n)).collect();
    ours.sort();
    assert_eq!(ours, theirs, "trainable parameters differ from the PyTorch reference");

    // A conv bias right before a train-mode BatchNorm has gradient 0 in exact arithmetic (the
    // batch mean absorbs it): PyTorch's f64 gives ~1e-17, ours f32 rounding; held near 0.
    let before_bn = |n: &str| n.starts_with("head.") && n.ends_with(".conv.bias");
    let global = g.iter().filter(|(k, _)| k.starts_with("grad.")).map(|(_, t)| max_abs(&vec(t))).fold(0.0, f64::max);
    let (mut e_tensor, mut e_top, mut e_bn) = (0f64, 0f64, 0f64);
    let mut worst = String::new();
    for (name, var) in &m.params.entries {
        let Some(want) = g.get(&format!("grad.{name}")) else { continue };
        let want = vec(want);
        let got = vec(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient")));
        if before_bn(name) {
            e_bn = e_bn.max(max_abs(&got) / global);
            continue;
        }
        let scale = max_abs(&want);
        assert!(scale > 0.0, "{name}: the reference gradient is zero");
        let e = got.iter().zip(&want).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max) / scale;
        assert!(e <= GRAD_REL, "{name}: gradient differs by {e:.2e} of its largest entry");
        e_tensor = e_tensor.max(e);
        // The TOP largest entries of each tensor, each relative to itself.
        let mut idx: Vec<usize> = (0..want.len()).collect();
        idx.sort_by(|&a, &b| want[b].abs().total_cmp(&want[a].abs()));
        for &i in idx.iter().take(TOP) {
            let e = (got[i] - want[i]).abs() as f64 / want[i].abs() as f64;
            assert!(e <= TOP_REL, "{name}[{i}]: {} vs PyTorch {} (relative {e:.2e})", got[i], want[i]);
            if e > e_top {
                e_top = e;
                worst = format!("{name}[{i}]");
            }
        }
    }
    eprintln!(
        "segvit: logits {e_fwd:.2e}, loss {e_loss:.2e}, gradients {e_tensor:.2e} of each tensor's max, largest \
         entries {e_top:.2e} ({worst}), biases before BatchNorm {e_bn:.2e} of the largest gradient"
    );
    assert!(e_fwd <= FWD_REL, "logits differ by {e_fwd:.2e}");
    assert!(e_loss <= LOSS_REL, "loss terms differ by {e_loss:.2e}");
    assert!(e_bn <= BN_BIAS_REL, "a conv bias before BatchNorm has gradient {e_bn:.2e} of the largest");
}
