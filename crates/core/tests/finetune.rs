//! The segmentation ViT and its fine-tuning: shapes, gradients (every trainable tensor, finite
//! differences), the multi-class loss by hand, layer-decay scales, checkpoint round trips and
//! encoder initialisation from an MAE checkpoint.

use candle_core::{DType, Device, Tensor, Var};
use vasomim_core::checkpoint::{self, segmentation as ckpt};
use vasomim_core::nn::loss::segmentation_loss;
use vasomim_core::nn::mae::MaskedAutoencoder;
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::segmentation::{layer_decay_scale, layer_id, SegmentationConfig, SegmentationViT};
use vasomim_core::nn::InitRng;
use vasomim_core::trainer::segmentation::{ft_decays, resize_bilinear, SegmentationTrainer};

/// A micro encoder on 32² images with 16² patches (2×2 grid; the head needs patch 16).
fn micro_cfg(num_classes: usize) -> SegmentationConfig {
    SegmentationConfig {
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
            mlp_ratio: 2.0,
            norm_pix_loss: true,
        },
        num_classes,
        head_scale: 1.0 / 32.0,
        drop_path: 0.1,
    }
}

fn randn(rng: &mut InitRng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn binary_targets(b: usize, s: usize, seed: u64) -> Tensor {
    let mut rng = InitRng::new(seed);
    let v: Vec<f32> = (0..b * s * s).map(|_| if rng.uniform() < 0.3 { 1.0 } else { 0.0 }).collect();
    Tensor::from_vec(v, (b, 1, s, s), &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

#[test]
fn shapes_and_widths() {
    let cfg = micro_cfg(3);
    assert_eq!(cfg.widths(), [16, 8, 4, 4, 4]);
    let m = SegmentationViT::new(&cfg, &Device::Cpu, 0).unwrap();
    let x = randn(&mut InitRng::new(1), &[2, 1, 32, 32]);
    let y = m.forward(&x, true, Some(&mut InitRng::new(2))).unwrap();
    assert_eq!(y.dims(), [2, 3, 32, 32]);
    let p = m.predict(&x).unwrap();
    assert_eq!(p.dims(), [2, 3, 32, 32]);
    // softmax over classes sums to 1
    let s = p.sum(1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5));
    // 13 BatchNorms: branch4, 1+2+3 branch convs, stem, 4 decoder blocks × 2
    assert_eq!(m.batch_norms().len(), 1 + 6 + 1 + 8);
    // paper widths at head_scale 1; patch 8 is refused
    let mut c = micro_cfg(1);
    c.head_scale = 1.0;
    assert_eq!(c.widths(), [512, 256, 128, 64, 32]);
    c.encoder.patch_size = 8;
    assert!(c.validate().unwrap_err().contains("patch size must be 16"));
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    for k in [1, 3] {
        let ft = SegmentationTrainer::create(&micro_cfg(k), &Device::Cpu, 3, 0.75).unwrap();
        let x = randn(&mut InitRng::new(4), &[2, 1, 32, 32]);
        let maps = binary_targets(2, 32, 5);
        let maps = if k == 1 { maps } else { (maps * (2.0 / 255.0)).unwrap() };
        let t = ft.targets_from_maps(&maps).unwrap();
        let (loss, grads) = ft.loss_and_grads(&x, &t).unwrap();
        assert!(loss.loss.is_finite());
        let names: Vec<String> = ft.opt.vars().iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names.len(), ft.model.params.entries.len() - 2, "all but norm.weight/bias");
        assert!(!names.iter().any(|n| n.starts_with("norm.")));
        for (n, g) in names.iter().zip(&grads) {
            let a = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(a.is_finite() && a > 0.0, "{n}: zero or non-finite gradient ({a})");
        }
    }
}

/// Loss with drop-path off and BatchNorm in eval mode (a smooth function of the parameters).
fn eval_loss(m: &SegmentationViT, x: &Tensor, t: &Tensor) -> Tensor {
    segmentation_loss(&m.forward(x, false, None).unwrap(), t).unwrap().0
}

#[test]
fn gradients_match_finite_differences() {
    for k in [1, 3] {
        let mut cfg = micro_cfg(k);
        cfg.drop_path = 0.0;
        let m = SegmentationViT::new(&cfg, &Device::Cpu, 7).unwrap();
        // non-trivial running stats so eval-mode BN is not the identity
        for (i, (_, bn)) in m.batch_norms().iter().enumerate() {
            let mut r = bn.running();
            r.mean.iter_mut().enumerate().for_each(|(j, v)| *v = 0.1 * ((i + j) % 3) as f32);
            r.var.iter_mut().enumerate().for_each(|(j, v)| *v = 0.5 + 0.25 * ((i * j) % 4) as f32);
            bn.set_running(r).unwrap();
        }
        let x = randn(&mut InitRng::new(8), &[2, 1, 32, 32]);
        let maps = binary_targets(2, 32, 9);
        let t = if k == 1 {
            maps
        } else {
            let ft = SegmentationTrainer::new(m.clone(), 0.75, 0).unwrap();
            ft.targets_from_maps(&(maps * (2.0 / 255.0)).unwrap()).unwrap()
        };
        let grads = eval_loss(&m, &x, &t).backward().unwrap();
        let names = [
            "patch_embed.proj.weight",
            "cls_token",
            "blocks.0.attn.qkv.weight",
            "blocks.1.mlp.fc2.bias",
            "head.branch4.conv.weight",
            "head.branch1.2.bn.weight",
            "head.stem.conv.bias",
            "head.decoder.3.res.weight",
            "head.classifier.weight",
        ];
        let mut rng = InitRng::new(10);
        for name in names {
            let var: &Var = m.params.get(name).unwrap_or_else(|| panic!("{name}"));
            let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for _ in 0..3 {
                let i = (rng.next_u64() % base.len() as u64) as usize;
                let h = 1e-2f32;
                let at = |d: f32| {
                    let mut v = base.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap()).unwrap();
                    scalar(&eval_loss(&m, &x, &t))
                };
                let num = (at(h) - at(-h)) / (2.0 * h as f64);
                at(0.0);
                let an = g[i] as f64;
                let tol = 2e-3 + 0.05 * an.abs().max(num.abs());
                assert!((num - an).abs() < tol, "K={k} {name}[{i}]: numeric {num:.6e} analytic {an:.6e}");
            }
        }
    }
}

#[test]
#[allow(clippy::needless_range_loop)]
fn multiclass_loss_matches_a_hand_computation() {
    // B = 1, K = 3, 1×2 pixels; logits per pixel, labels (0, 2).
    let l = [[1.0f64, 2.0, 0.5], [0.0, -1.0, 3.0]];
    let labels = [0usize, 2];
    let logits = Tensor::from_vec(
        vec![l[0][0] as f32, l[1][0] as f32, l[0][1] as f32, l[1][1] as f32, l[0][2] as f32, l[1][2] as f32],
        (1, 3, 1, 2),
        &Device::Cpu,
    )
    .unwrap();
    let t = Tensor::from_vec(vec![0u32, 2], (1, 1, 2), &Device::Cpu).unwrap();
    let (total, dice, ce) = segmentation_loss(&logits, &t).unwrap();
    let sm = |px: &[f64; 3]| {
        let z: f64 = px.iter().map(|v| v.exp()).sum();
        px.map(|v| v.exp() / z)
    };
    let p = [sm(&l[0]), sm(&l[1])];
    let ce_hand = -(p[0][labels[0]].ln() + p[1][labels[1]].ln()) / 2.0;
    // foreground classes 1 and 2, smoothing 1
    let mut d = 0.0;
    for c in 1..3 {
        let inter: f64 = (0..2).map(|i| p[i][c] * (labels[i] == c) as u8 as f64).sum();
        let ps: f64 = (0..2).map(|i| p[i][c]).sum();
        let ts: f64 = (0..2).map(|i| (labels[i] == c) as u8 as f64).sum();
        d += 1.0 - (2.0 * inter + 1.0) / (ps + ts + 1.0);
    }
    let dice_hand = d / 2.0;
    assert!((scalar(&ce) - ce_hand).abs() < 1e-5, "{} vs {ce_hand}", scalar(&ce));
    assert!((scalar(&dice) - dice_hand).abs() < 1e-5, "{} vs {dice_hand}", scalar(&dice));
    assert!((scalar(&total) - ce_hand - dice_hand).abs() < 1e-5);
    // wrong target shapes are errors
    let bad = Tensor::zeros((1, 2, 1), DType::U32, &Device::Cpu).unwrap();
    assert!(segmentation_loss(&logits, &bad).is_err());
}

#[test]
fn targets_from_maps_binary_and_class_ids() {
    let bin = SegmentationTrainer::create(&micro_cfg(1), &Device::Cpu, 0, 0.75).unwrap();
    let maps = Tensor::from_vec(vec![0.0f32, 0.49, 0.51, 1.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let t = bin.targets_from_maps(&maps).unwrap();
    assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0.0, 0.0, 1.0, 1.0]);
    let mc = SegmentationTrainer::create(&micro_cfg(3), &Device::Cpu, 0, 0.75).unwrap();
    let maps =
        Tensor::from_vec(vec![0.0f32, 1.0 / 255.0, 2.0 / 255.0, 1.0 / 255.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let t = mc.targets_from_maps(&maps).unwrap();
    assert_eq!(t.dims(), [1, 2, 2]);
    assert_eq!(t.flatten_all().unwrap().to_vec1::<u32>().unwrap(), [0, 1, 2, 1]);
    let maps = Tensor::from_vec(vec![0.0f32, 3.0 / 255.0, 0.0, 0.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let e = mc.targets_from_maps(&maps).unwrap_err().to_string();
    assert!(e.contains("mask value 3") && e.contains("3-class"), "{e}");
}

#[test]
fn layer_decay_scales_and_weight_decay_groups() {
    let depth = 12;
    assert_eq!(layer_id("cls_token", depth), 0);
    assert_eq!(layer_id("patch_embed.proj.weight", depth), 0);
    assert_eq!(layer_id("blocks.0.attn.qkv.weight", depth), 1);
    assert_eq!(layer_id("blocks.11.mlp.fc1.bias", depth), 12);
    assert_eq!(layer_id("head.decoder.0.conv1.conv.weight", depth), 13);
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    close(layer_decay_scale("patch_embed.proj.bias", depth, 0.75), 0.75f64.powi(13));
    close(layer_decay_scale("blocks.4.norm1.weight", depth, 0.75), 0.75f64.powi(8));
    close(layer_decay_scale("head.classifier.weight", depth, 0.75), 1.0);
    // the trainer applies them
    let ft = SegmentationTrainer::create(&micro_cfg(1), &Device::Cpu, 0, 0.5).unwrap();
    for (n, s) in ft.opt.lr_scales() {
        let want = if n.starts_with("blocks.1.") {
            0.5
        } else if n.starts_with("blocks.0.") {
            0.25
        } else if n.starts_with("head.") {
            1.0
        } else {
            0.125
        };
        close(s, want);
    }
    for (n, d) in ft.opt.groups() {
        let rank = ft.model.params.get(&n).unwrap().rank();
        assert_eq!(d, rank > 1 && !n.ends_with(".bias") && n != "cls_token", "{n}");
        assert_eq!(d, ft_decays(&n, rank));
    }
    assert!(!ft_decays("head.stem.bn.weight", 1));
    assert!(ft_decays("blocks.0.attn.qkv.weight", 2));
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vasomim-ft-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn save_load_round_trip_gives_equal_predictions_and_training() {
    let mut ft = SegmentationTrainer::create(&micro_cfg(1), &Device::Cpu, 11, 0.75).unwrap();
    let x = randn(&mut InitRng::new(12), &[2, 1, 32, 32]);
    let t = binary_targets(2, 32, 13);
    for _ in 0..3 {
        ft.train_step(&x, &t, 1e-3, 0.05).unwrap();
    }
    let dir = tmp("roundtrip");
    let path = dir.join("m.safetensors");
    ckpt::save(&path, &ft, 3, Some("{\"task\":\"vessel\"}")).unwrap();
    let mut back = ckpt::load(&path, &Device::Cpu).unwrap();
    assert!(back.report.unexpected.is_empty(), "{:?}", back.report.unexpected);
    assert_eq!(back.step, 3);
    assert_eq!(back.extra.as_deref(), Some("{\"task\":\"vessel\"}"));
    assert_eq!(back.tuner.opt.step, 3);
    for ((_, a), (_, b)) in ft.model.batch_norms().iter().zip(back.tuner.model.batch_norms().iter()) {
        assert_eq!(a.running(), b.running());
    }
    let p0 = ft.predict(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let p1 = back.tuner.predict(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(p0, p1);
    // the next step (same drop-path draw, same moments) is identical
    let l0 = ft.train_step(&x, &t, 1e-3, 0.05).unwrap();
    let l1 = back.tuner.train_step(&x, &t, 1e-3, 0.05).unwrap();
    assert_eq!(l0, l1);
    let p0 = ft.predict(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let p1 = back.tuner.predict(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(p0, p1);
    // an MAE checkpoint is not a segmentation model
    let mae = MaskedAutoencoder::new(&micro_cfg(1).encoder, &Device::Cpu, 0).unwrap();
    let mp = dir.join("mae.safetensors");
    checkpoint::save(&mp, &mae, None, 0).unwrap();
    let e = ckpt::load(&mp, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("not a fine-tuned segmentation model"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn encoder_init_from_an_mae_checkpoint_equals_the_source() {
    let cfg = micro_cfg(1);
    let mae = MaskedAutoencoder::new(&cfg.encoder, &Device::Cpu, 21).unwrap();
    let dir = tmp("init");
    let path = dir.join("mae.safetensors");
    checkpoint::save(&path, &mae, None, 0).unwrap();
    let mut m = SegmentationViT::new(&cfg, &Device::Cpu, 22).unwrap();
    let head_before =
        m.params.get("head.classifier.weight").unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let r = ckpt::init_encoder(&mut m, &path, None).unwrap();
    assert!(r.missing.is_empty(), "{:?}", r.missing);
    assert!(
        r.unexpected.iter().any(|n| n == "mask_token") && r.unexpected.iter().any(|n| n.starts_with("decoder_blocks."))
    );
    assert!(!r.unexpected.iter().any(|n| n.starts_with("blocks.")));
    let mut n = 0;
    for (name, v) in &m.params.entries {
        let got = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if name.starts_with("head.") {
            continue;
        }
        let want = mae.params.get(name).unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, want, "{name}");
        n += 1;
    }
    assert_eq!(n, 3 + 12 * 2 + 2); // patch embed w/b, cls, 12 tensors × 2 blocks, norm w/b
    let pe = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(pe(&m.encoder.pos_embed), pe(&mae.encoder.pos_embed));
    let hb =
        m.params.get("head.classifier.weight").unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(hb, head_before, "the head is not touched");
    // encoder-only timm export: nothing missing, nothing unexpected
    let exp = dir.join("encoder.safetensors");
    checkpoint::export_timm(&exp, &mae).unwrap();
    let mut m2 = SegmentationViT::new(&cfg, &Device::Cpu, 23).unwrap();
    let r2 = ckpt::init_encoder(&mut m2, &exp, None).unwrap();
    assert!(r2.missing.is_empty() && r2.unexpected.is_empty(), "{r2:?}");
    let a = m.predict(&randn(&mut InitRng::new(1), &[1, 1, 32, 32])).unwrap();
    assert_eq!(a.dims(), [1, 1, 32, 32]);
    // a wider encoder does not fit
    let mut wide = cfg.clone();
    wide.encoder.embed_dim = 32;
    let mut m3 = SegmentationViT::new(&wide, &Device::Cpu, 0).unwrap();
    assert!(ckpt::init_encoder(&mut m3, &path, None).is_err());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bilinear_resize_matches_hand_values() {
    // 2×2 → 4×4, align_corners = false: edges clamp, inner taps at ¼ / ¾.
    let src = [0.0f32, 1.0, 2.0, 3.0];
    let out = resize_bilinear(&src, 2, 2, 4, 4);
    let row0 = [0.0, 0.25, 0.75, 1.0];
    for (i, v) in row0.iter().enumerate() {
        assert!((out[i] - v).abs() < 1e-6);
    }
    // row 1 sits at y = 0.25: 0.75·row0 + 0.25·(row0 + 2)
    for (i, v) in row0.iter().enumerate() {
        assert!((out[4 + i] - (v + 0.5)).abs() < 1e-6);
    }
    assert_eq!(resize_bilinear(&src, 2, 2, 2, 2), src);
}

#[test]
fn predict_grey_resizes_in_and_out() {
    let ft = SegmentationTrainer::create(&micro_cfg(2), &Device::Cpu, 0, 0.75).unwrap();
    let img: Vec<u8> = (0..50 * 40).map(|i| (i % 251) as u8).collect();
    let out = ft.predict_grey(&[(&img, 50, 40)], &[0.45], &[0.22]).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 2 * 50 * 40);
    for i in 0..50 * 40 {
        assert!((out[0][i] + out[0][2000 + i] - 1.0).abs() < 1e-4);
    }
    assert!(ft.predict_grey(&[(&img, 50, 40)], &[0.4, 0.4, 0.4], &[0.2; 3]).is_err());
}

/// Timing of a train step at the table's scale (run with --ignored).
#[test]
#[ignore]
fn timing_train_step_224() {
    let img = std::env::var("FT_IMG").ok().and_then(|s| s.parse().ok()).unwrap_or(224);
    let hs = std::env::var("FT_HS").ok().and_then(|s| s.parse().ok()).unwrap_or(0.5);
    let b = std::env::var("FT_B").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut enc = MaeConfig::preset("tiny").unwrap();
    enc.img_size = img;
    let cfg = SegmentationConfig { encoder: enc, num_classes: 1, head_scale: hs, drop_path: 0.1 };
    let mut ft = SegmentationTrainer::create(&cfg, &Device::Cpu, 0, 0.75).unwrap();
    let x = randn(&mut InitRng::new(1), &[b, 3, img, img]);
    let t = binary_targets(b, img, 2);
    for i in 0..3 {
        let t0 = std::time::Instant::now();
        ft.train_step(&x, &t, 1e-4, 0.05).unwrap();
        eprintln!("step {i}: {:.2} s for {b} images", t0.elapsed().as_secs_f64());
    }
    let t0 = std::time::Instant::now();
    ft.predict(&x).unwrap();
    eprintln!("predict: {:.2} s for {b} images", t0.elapsed().as_secs_f64());
}

#[test]
fn trainer_checks_inputs_loads_encoders_and_counts_steps() {
    use vasomim_core::trainer::segmentation::PretrainedInit;
    let mut ft = SegmentationTrainer::create(&micro_cfg(1), &Device::Cpu, 0, 0.75).unwrap();
    let s = micro_cfg(1).encoder.img_size;
    let c = micro_cfg(1).encoder.in_chans;
    let (x, m) = (vec![0.1f32; c * s * s], vec![1.0f32; s * s]);
    let e = ft.step_arrays(&x[1..], &m, 1e-3, 0.0).unwrap_err().to_string();
    assert!(e.contains("not a positive multiple of C*S*S"), "{e}");
    let mut bad = m.clone();
    bad[3] = 1.5;
    let e = ft.step_arrays(&x, &bad, 1e-3, 0.0).unwrap_err().to_string();
    assert!(e.contains("maps[3] = 1.5 is outside [0, 1]"), "{e}");
    let e = ft.step_arrays(&x, &m, 1e-3, -0.1).unwrap_err().to_string();
    assert!(e.starts_with("weightDecay (-0.1)"), "{e}");
    ft.step_arrays(&x, &m, 1e-3, 0.0).unwrap();
    assert_eq!(ft.step, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ft.safetensors");
    ft.save(&path, Some("{}")).unwrap();
    let (back, extra) = SegmentationTrainer::load(&path, &Device::Cpu).unwrap();
    assert_eq!((back.step, extra.as_deref()), (1, Some("{}")));
    assert_eq!(back.predict_arrays(&x).unwrap(), ft.predict_arrays(&x).unwrap());

    // An encoder from a pre-training checkpoint; a missing file is an error naming it.
    let mae = MaskedAutoencoder::new(&micro_cfg(1).encoder, &Device::Cpu, 5).unwrap();
    let mp = dir.path().join("mae.safetensors");
    checkpoint::save(&mp, &mae, None, 0).unwrap();
    let init = PretrainedInit {
        num_classes: 2,
        head_scale: micro_cfg(1).head_scale,
        drop_path: 0.0,
        img_size: None,
        in_chans: None,
        preset: None,
        layer_decay: 0.75,
    };
    let (t, r) = SegmentationTrainer::from_pretrained(&mp, &init, 1, &Device::Cpu).unwrap();
    assert_eq!((t.cfg().num_classes, t.step), (2, 0));
    assert!(r.missing.is_empty(), "{:?}", r.missing);
    let gone = dir.path().join("gone.safetensors");
    let e = SegmentationTrainer::from_pretrained(&gone, &init, 1, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("gone.safetensors"), "{e}");
}

#[test]
fn pretrained_init_reads_camel_case_json_and_names_bad_fields() {
    use vasomim_core::trainer::segmentation::{PretrainedInit, LAYER_DECAY};
    let o = serde_json::json!({ "numClasses": 2, "headScale": 1, "dropPath": 0.1, "imgSize": 64 });
    let p: PretrainedInit = serde_json::from_value(o).unwrap();
    assert_eq!((p.num_classes, p.img_size, p.in_chans), (2, Some(64), None));
    assert_eq!((p.head_scale, p.layer_decay), (1.0, LAYER_DECAY));
    let o = serde_json::json!({ "numClasses": 2, "headScale": 1, "dropPath": 0.1, "inChan": 1 });
    let e = serde_json::from_value::<PretrainedInit>(o).unwrap_err().to_string();
    assert!(e.contains("unknown field `inChan`"), "{e}");
}
