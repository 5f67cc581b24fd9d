//! The ViTDet detector on a micro config: every trainable tensor gets a gradient from one step's
//! losses; central finite differences of the losses against the autograd gradient on sampled
//! elements of the backbone, pyramid, RPN and box head; 200 steps overfit two synthetic
//! frames (each detected at IoU > 0.5); save / load round trip and resume; encoder initialisation from an MAE checkpoint;
//! input checks that name the field.

use candle_core::{Device, Tensor};
use vasomim_core::data::rng::key;
use vasomim_core::detection::input::Placement;
use vasomim_core::detection::model::{DetectionConfig, ImageTarget};
use vasomim_core::nn::mae::MaskedAutoencoder;
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::InitRng;
use vasomim_core::trainer::detection::DetectionTrainer;

fn micro() -> DetectionConfig {
    let mut e = MaeConfig::preset("micro").unwrap();
    e.img_size = 64;
    e.in_chans = 1;
    let mut c = DetectionConfig::vitdet(e, 1);
    c.window_size = 2;
    c.global_blocks = vec![1];
    c.drop_path = 0.0;
    c.fpn_dim = 16;
    c.anchor_sizes = vec![8.0, 16.0, 32.0, 64.0, 128.0];
    // Every anchor (1,023 at 64²) in the sample: each level's objectness gets a gradient.
    c.rpn_batch = 1024;
    c.rpn_pre_nms_train = 200;
    c.rpn_pre_nms_test = 200;
    c.rpn_post_nms = 40;
    c.box_conv_dim = 8;
    c.box_convs = 1;
    c.box_fc_dim = 16;
    c.roi_batch = 32;
    c
}

/// Two 64² frames: a dark blob (a stenosis stand-in) on noise, with its box.
fn batch() -> (Vec<f32>, Vec<ImageTarget>) {
    let mut r = InitRng::new(5);
    let boxes = [[10.0f32, 14.0, 30.0, 28.0], [36.0, 30.0, 52.0, 50.0]];
    let mut x = vec![0f32; 2 * 64 * 64];
    for (i, b) in boxes.iter().enumerate() {
        for y in 0..64 {
            for xx in 0..64 {
                let inside = (xx as f32) >= b[0] && (xx as f32) < b[2] && (y as f32) >= b[1] && (y as f32) < b[3];
                x[i * 4096 + y * 64 + xx] = (r.uniform() as f32 - 0.5) * 0.5 + if inside { -1.5 } else { 0.5 };
            }
        }
    }
    let t = boxes.iter().map(|b| ImageTarget { boxes: vec![*b], classes: vec![0], size: (64, 64) }).collect();
    (x, t)
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    let t = DetectionTrainer::create(&micro(), &Device::Cpu, 3, 0.7).unwrap();
    let (x, tg) = batch();
    let img = t.images(&x).unwrap();
    let (loss, grads) = t.loss_and_grads(&img, &tg).unwrap();
    assert!(loss.loss.is_finite() && loss.rpn_cls > 0.0 && loss.cls > 0.0 && loss.box_reg > 0.0, "{loss:?}");
    let names: Vec<&str> = t.opt.vars().iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), grads.len());
    assert!(names.iter().any(|n| n.contains("rel_pos_h")) && names.iter().any(|n| n.starts_with("roi_heads.")));
    assert!(!names.contains(&"cls_token") && !names.iter().any(|n| n.starts_with("norm.")));
    for (n, g) in names.iter().zip(&grads) {
        let m = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(m > 0.0 && m.is_finite(), "{n}: no gradient (max |g| = {m})");
    }
}

#[test]
fn losses_match_finite_differences() {
    let t = DetectionTrainer::create(&micro(), &Device::Cpu, 4, 0.7).unwrap();
    let (x, tg) = batch();
    let img = t.images(&x).unwrap();
    let vars: Vec<(String, candle_core::Var)> =
        t.opt.vars().iter().map(|(n, v)| (n.to_string(), (*v).clone())).collect();
    // The GT boxes join the proposals with zero regression targets and the deltas start near 0:
    // a bias moves them off the L1 kink so that differences are smooth.
    let bias = &vars.iter().find(|(n, _)| n == "roi_heads.box_predictor.bbox_pred.bias").unwrap().1;
    bias.set(&(bias.as_tensor().ones_like().unwrap() * 0.37).unwrap()).unwrap();
    // The same draws for every evaluation (the step's RNG); proposals depend on the weights but
    // carry no gradient, so the backbone side is checked on the RPN losses and the box head
    // (which leaves the proposals alone) on its own losses.
    let part = |rpn_only: bool| -> Tensor {
        let mut rng = InitRng::new(key(t.seed, &[1]));
        let l = t.model.losses(&img, &tg, &mut rng).unwrap();
        if rpn_only {
            (&l.rpn_cls + &l.rpn_loc).unwrap()
        } else {
            (&l.cls + &l.box_reg).unwrap()
        }
    };
    let eval = |rpn_only: bool| part(rpn_only).to_scalar::<f32>().unwrap() as f64;
    let (rpn_grads, box_grads) = (part(true).backward().unwrap(), part(false).backward().unwrap());
    let picks = [
        ("blocks.0.attn.qkv.weight", true),
        ("blocks.1.attn.rel_pos_w", true),
        ("blocks.0.mlp.fc2.weight", true),
        ("pyramid.p2.up1.weight", true),
        ("pyramid.p5.output.weight", true),
        ("rpn.conv.weight", true),
        ("rpn.anchor_deltas.weight", true),
        ("roi_heads.box_head.fc1.weight", false),
        ("roi_heads.box_predictor.cls_score.weight", false),
        ("roi_heads.box_predictor.bbox_pred.weight", false),
    ];
    let mut checked = 0;
    for (name, rpn_only) in picks {
        let k = vars.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}: no such parameter"));
        let var = &vars[k].1;
        let store = if rpn_only { &rpn_grads } else { &box_grads };
        let g: Vec<f32> = store.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // The element with the largest gradient: its finite difference stands well above f32 noise.
        let i = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-2f32;
        let at = |d: f32| {
            let mut v = base.clone();
            v[i] += d;
            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap()).unwrap();
            eval(rpn_only)
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        var.set(&Tensor::from_vec(base, var.dims(), &Device::Cpu).unwrap()).unwrap();
        let ag = g[i] as f64;
        assert!((fd - ag).abs() <= 0.05 * ag.abs() + 1e-4, "{name}[{i}]: finite difference {fd}, autograd {ag}");
        checked += 1;
    }
    assert_eq!(checked, picks.len());
}

/// The batch's frames as 8-bit grey with their boxes (frame pixels).
fn grey_frames() -> (Vec<Vec<u8>>, Vec<Vec<[f32; 4]>>) {
    let (x, t) = batch();
    let px = x.chunks(4096).map(|c| c.iter().map(|v| ((v + 2.0) * 60.0).clamp(0.0, 255.0) as u8).collect()).collect();
    (px, t.into_iter().map(|t| t.boxes).collect())
}

#[test]
fn two_hundred_steps_overfit_two_frames() {
    let mut t = DetectionTrainer::create(&micro(), &Device::Cpu, 7, 1.0).unwrap();
    let (px, boxes) = grey_frames();
    let frames: Vec<(&[u8], usize, usize)> = px.iter().map(|p| (p.as_slice(), 64, 64)).collect();
    let places = vec![Placement::fit(64, 64, 64); 2];
    let classes = vec![vec![0]; 2];
    let norm: (&[f32], &[f32]) = (&[0.5], &[0.25]);
    let first = t.step_frames(&frames, &places, &boxes, &classes, norm, 1e-3, 0.0).unwrap();
    let mut last = first;
    for _ in 0..199 {
        last = t.step_frames(&frames, &places, &boxes, &classes, norm, 1e-3, 0.0).unwrap();
    }
    assert!(last.loss < 0.5 * first.loss, "loss {} -> {}", first.loss, last.loss);
    let dets = t.detect_frames(&frames, norm.0, norm.1).unwrap();
    for (d, b) in dets.iter().zip(&boxes) {
        assert!(!d.boxes.is_empty(), "no detection");
        let iou = vasomim_core::detection::boxes::iou(&d.boxes[0], &b[0]);
        assert!(iou > 0.5, "best detection {:?} (score {}) vs {:?}: IoU {iou}", d.boxes[0], d.scores[0], b[0]);
    }
}

#[test]
fn save_load_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (x, tg) = batch();
    let mut a = DetectionTrainer::create(&micro(), &Device::Cpu, 9, 0.7).unwrap();
    for _ in 0..2 {
        a.step_arrays(&x, &tg, 1e-3, 0.1).unwrap();
    }
    let path = dir.path().join("det.safetensors");
    a.save(&path, Some("{\"classes\":[\"stenosis\"]}")).unwrap();
    let (mut b, extra) = DetectionTrainer::load(&path, &Device::Cpu).unwrap();
    assert_eq!(extra.as_deref(), Some("{\"classes\":[\"stenosis\"]}"));
    assert_eq!((b.step, b.cfg()), (2, a.cfg()));
    let la = a.step_arrays(&x, &tg, 1e-3, 0.1).unwrap();
    let lb = b.step_arrays(&x, &tg, 1e-3, 0.1).unwrap();
    assert_eq!(la, lb);
    let e = DetectionTrainer::load(&dir.path().join("nope.safetensors"), &Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("nope.safetensors"), "{e}");
}

#[test]
fn encoder_initialises_from_an_mae_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = MaeConfig::preset("micro").unwrap();
    cfg.in_chans = 1;
    let mae = MaskedAutoencoder::new(&cfg, &Device::Cpu, 11).unwrap();
    let path = dir.path().join("mae.safetensors");
    vasomim_core::checkpoint::save(&path, &mae, None, 0).unwrap();
    let (t, report) = DetectionTrainer::from_pretrained(&path, &micro(), None, 1, 0.7, &Device::Cpu).unwrap();
    let get = |s: &vasomim_core::nn::ParamStore, n: &str| {
        s.get(n).unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    for n in ["blocks.1.attn.qkv.weight", "patch_embed.proj.weight", "blocks.0.mlp.fc1.bias"] {
        assert_eq!(get(&t.model.params, n), get(&mae.params, n), "{n}");
    }
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    assert!(report.adapted.iter().any(|a| a.contains("pos_embed")), "{:?}", report.adapted);
    assert!(report.unexpected.iter().any(|u| u.starts_with("decoder")), "{:?}", report.unexpected);
    assert_eq!(t.model.backbone.vit.pos_embed.dims(), &[1, 1 + 16, 64]);
}

#[test]
fn bad_inputs_name_the_field() {
    let mut t = DetectionTrainer::create(&micro(), &Device::Cpu, 1, 0.7).unwrap();
    let (x, mut tg) = batch();
    let e = t.step_arrays(&x[..100], &tg, 1e-3, 0.0).unwrap_err().to_string();
    assert!(e.contains("images has 100 values"), "{e}");
    tg[1].boxes[0] = [50.0, 50.0, 70.0, 60.0];
    let e = t.step_arrays(&x, &tg, 1e-3, 0.0).unwrap_err().to_string();
    assert!(e.contains("targets[1].boxes[0]") && e.contains("outside the 64x64 image"), "{e}");
    tg[1].boxes[0] = [5.0, 5.0, 9.0, 9.0];
    tg[1].classes[0] = 3;
    let e = t.step_arrays(&x, &tg, 1e-3, 0.0).unwrap_err().to_string();
    assert!(e.contains("targets[1]: class 3 of a 1-class detector"), "{e}");
    let mut bad = micro();
    bad.global_blocks = vec![5];
    let e = DetectionTrainer::create(&bad, &Device::Cpu, 1, 0.7).err().unwrap().to_string();
    assert!(e.contains("globalBlocks: block 5 does not exist"), "{e}");
    // Negatives (frames without boxes) are allowed.
    tg[1].boxes.clear();
    tg[1].classes.clear();
    assert!(t.step_arrays(&x, &tg, 1e-3, 0.0).unwrap().loss.is_finite());
}
