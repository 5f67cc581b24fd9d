//! The VasoMIM step around the MAE: guidance mass, the consistency loss with gradients through
//! a frozen segmentor (finite differences), micro-batch accumulation equal to the full batch,
//! and the NaN guard leaving the weights untouched.

use candle_core::{Device, Result, Tensor, Var};
use vasomim_core::nn::loss::bce_with_logits;
use vasomim_core::nn::mae::{random_masking, Masking};
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::InitRng;
use vasomim_core::trainer::pretrain::{guidance, patch_mass, Consistency, VesselSegmentor};
use vasomim_core::trainer::pretrain::{PretrainTrainer, StepParams};

/// A stand-in segmentor with a non-linear, input-dependent response: logits = a·tanh(Σ_c w_c x_c) + b.
struct ToySeg {
    w: Tensor,
    a: f64,
    b: f64,
}

impl VesselSegmentor for ToySeg {
    fn logits(&self, imgs: &Tensor) -> Result<Tensor> {
        let s = imgs.broadcast_mul(&self.w)?.sum_keepdim(1)?;
        (s.tanh()? * self.a)? + self.b
    }
}

fn toy(c: usize) -> ToySeg {
    let w: Vec<f32> = (0..c).map(|i| 0.7 - 0.3 * i as f32).collect();
    ToySeg { w: Tensor::from_vec(w, (1, c, 1, 1), &Device::Cpu).unwrap(), a: 2.0, b: -0.3 }
}

fn randn(rng: &mut InitRng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn setup(b: usize) -> (PretrainTrainer, Tensor, Masking, Tensor) {
    let cfg = MaeConfig::micro_test();
    let tr = PretrainTrainer::create(&cfg, &Device::Cpu, 3).unwrap();
    let mut rng = InitRng::new(11);
    let s = cfg.img_size;
    let imgs = randn(&mut rng, &[b, cfg.in_chans, s, s]);
    let m = random_masking(b, cfg.num_patches(), 0.5, &mut rng, &Device::Cpu).unwrap();
    let seg = toy(cfg.in_chans);
    let g = guidance(Some(&seg), &imgs, None, 0.0, cfg.patch_size).unwrap();
    (tr, imgs, m, g.prob.unwrap())
}

#[test]
fn patch_mass_sums_each_patch_in_row_major_order() {
    // 1 image 4×6, patches 2×2 → grid 2×3; value = row*10 + col
    let v: Vec<f32> = (0..24).map(|i| ((i / 6) * 10 + i % 6) as f32).collect();
    let map = Tensor::from_vec(v.clone(), (1, 1, 4, 6), &Device::Cpu).unwrap();
    let got = patch_mass(&map, 2).unwrap().to_vec2::<f32>().unwrap();
    let mut want = vec![0f32; 6];
    for r in 0..4 {
        for c in 0..6 {
            want[(r / 2) * 3 + c / 2] += v[r * 6 + c];
        }
    }
    assert_eq!(got[0], want);
    assert!(patch_mass(&map, 4).is_err(), "6 is not divisible by 4");
}

#[test]
fn guidance_mixes_map_and_probability() {
    let mut rng = InitRng::new(5);
    let imgs = randn(&mut rng, &[2, 1, 8, 8]);
    let maps = Tensor::from_vec(
        (0..128).map(|i| ((i * 7) % 3 == 0) as u8 as f32).collect::<Vec<_>>(),
        (2, 1, 8, 8),
        &Device::Cpu,
    )
    .unwrap();
    let seg = toy(1);
    let p = candle_nn::ops::sigmoid(&seg.logits(&imgs).unwrap()).unwrap();
    let g = guidance(Some(&seg), &imgs, Some(&maps), 0.5, 4).unwrap();
    let want = patch_mass(&((&maps * 0.5).unwrap() + (&p * 0.5).unwrap()).unwrap(), 4).unwrap();
    let d = (g.mass - want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    let v = g.vessel.unwrap().to_vec2::<f32>().unwrap();
    let vb = patch_mass(&maps, 4).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(v, vb);
    // eta = 1 is the paper's v1 (maps only); eta = 0 needs no maps.
    let g1 = guidance(None, &imgs, Some(&maps), 1.0, 4).unwrap();
    assert!(g1.prob.is_none());
    assert_eq!(g1.mass.to_vec2::<f32>().unwrap(), vb);
    let e = guidance(None, &imgs, Some(&maps), 0.5, 4).err().unwrap();
    assert!(e.to_string().contains("load a segmentor"), "{e}");
    let e = guidance(Some(&seg), &imgs, None, 0.5, 4).err().unwrap();
    assert!(e.to_string().contains("vessel maps"), "{e}");
    let e = guidance(Some(&seg), &imgs, None, 1.5, 4).err().unwrap();
    assert!(e.to_string().contains("eta = 1.5"), "{e}");
}

#[test]
fn consistency_loss_matches_its_definition_and_changes_the_gradients() {
    let (tr, imgs, m, prob) = setup(3);
    let seg = toy(1);
    let cons = Consistency { seg: &seg, prob: &prob, weight: 1.0 };
    let (st, g_cons) = tr.pretrain_loss_and_grads(&imgs, &m, Some(&cons), 1).unwrap();
    let (st0, g_rec) = tr.pretrain_loss_and_grads(&imgs, &m, None, 1).unwrap();
    assert_eq!(st0.loss_cons, None);
    assert!((st.loss_rec - st0.loss_rec).abs() < 1e-6);
    // L_cons by hand: BCE(S(recon), P).
    let out = tr.model.forward(&imgs, &m).unwrap();
    let recon = tr.model.reconstruct(&imgs, &out.pred).unwrap();
    let want = bce_with_logits(&seg.logits(&recon).unwrap(), &prob).unwrap().to_scalar::<f32>().unwrap() as f64;
    let lc = st.loss_cons.unwrap();
    assert!((lc - want).abs() < 1e-6, "L_cons {lc} vs {want}");
    assert!((st.loss - (st.loss_rec + lc)).abs() < 1e-6);
    // L_cons reaches the decoder head (and, through the reconstruction, nothing of S is trained).
    let names: Vec<String> = tr.opt.groups().into_iter().map(|(n, _)| n).collect();
    let i = names.iter().position(|n| n == "decoder_pred.weight").unwrap();
    let d = (&g_cons[i] - &g_rec[i]).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 1e-6, "L_cons left decoder_pred's gradient unchanged");
}

#[test]
fn consistency_gradient_matches_finite_differences() {
    let (tr, imgs, m, prob) = setup(2);
    let seg = toy(1);
    let cons = Consistency { seg: &seg, prob: &prob, weight: 1.0 };
    let (_, grads) = tr.pretrain_loss_and_grads(&imgs, &m, Some(&cons), 1).unwrap();
    let vars: Vec<(String, Var)> = tr.opt.vars().into_iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
    let mut checked = 0;
    for name in ["decoder_pred.bias", "decoder_pred.weight", "blocks.0.mlp.fc2.bias"] {
        let slot = vars.iter().position(|(n, _)| n == name).unwrap();
        let var = &vars[slot].1;
        let g = grads[slot].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // the entries with the largest analytic gradient, where f32 differences are meaningful
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &k in idx.iter().take(3) {
            let h = 1e-2f32;
            let at = |delta: f32| {
                let mut v = base.clone();
                v[k] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                let (st, _) = tr.pretrain_loss_and_grads(&imgs, &m, Some(&cons), 1).unwrap();
                st.loss
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            let an = g[k] as f64;
            assert!(
                (fd - an).abs() <= 2e-2 * an.abs().max(1e-3),
                "{name}[{k}]: finite difference {fd} vs analytic {an}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

#[test]
fn micro_batches_accumulate_to_the_full_batch() {
    let (tr, imgs, m, prob) = setup(4);
    let seg = toy(1);
    let cons = Consistency { seg: &seg, prob: &prob, weight: 0.7 };
    let (a, ga) = tr.pretrain_loss_and_grads(&imgs, &m, Some(&cons), 1).unwrap();
    let (b, gb) = tr.pretrain_loss_and_grads(&imgs, &m, Some(&cons), 3).unwrap();
    assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
    assert!((a.loss_cons.unwrap() - b.loss_cons.unwrap()).abs() < 1e-6);
    for (x, y) in ga.iter().zip(&gb) {
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let s = x.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-4 * s.max(1e-6), "accumulated gradient differs by {d} (max {s})");
    }
}

#[test]
fn a_non_finite_loss_leaves_the_weights_untouched() {
    let (mut tr, imgs, m, prob) = setup(2);
    let seg = toy(1);
    let bad = (prob * f64::NAN).unwrap();
    let cons = Consistency { seg: &seg, prob: &bad, weight: 1.0 };
    let before: Vec<Vec<f32>> =
        tr.opt.vars().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
    let e = tr.pretrain_step(&imgs, &m, Some(&cons), &StepParams::default()).err().unwrap();
    assert!(e.to_string().contains("non-finite loss"), "{e}");
    let after: Vec<Vec<f32>> =
        tr.opt.vars().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
    assert_eq!(before, after);
    assert_eq!(tr.opt.step, 0);
}

mod trainer_state {
    //! The trainer's own state: one step function behind the flat-array and loader-batch paths,
    //! the guidance cache keyed by the batch, the step counter, input checks naming the field.

    use super::*;
    use vasomim_core::data::Batch;
    use vasomim_core::trainer::pretrain::MaskArrays;

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn arrays(m: &Masking) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
        (
            flat(&m.ids_keep.to_dtype(candle_core::DType::F32).unwrap()).iter().map(|&v| v as u32).collect(),
            flat(&m.ids_restore.to_dtype(candle_core::DType::F32).unwrap()).iter().map(|&v| v as u32).collect(),
            flat(&m.mask),
        )
    }

    fn loader_batch(imgs: &Tensor, epoch: u64, index: usize) -> Batch {
        let (n, c, s, _) = imgs.dims4().unwrap();
        Batch {
            epoch,
            index,
            n,
            channels: c,
            size: s,
            images: flat(imgs),
            maps: None,
            samples: (0..n).collect(),
            crops: vec![],
            skipped: vec![],
        }
    }

    fn trainer() -> PretrainTrainer {
        let mut tr = PretrainTrainer::create(&MaeConfig::micro_test(), &Device::Cpu, 3).unwrap();
        tr.set_segmentor(Box::new(toy(MaeConfig::micro_test().in_chans)));
        tr
    }

    fn weights(tr: &PretrainTrainer) -> Vec<Vec<f32>> {
        tr.opt.vars().iter().map(|(_, v)| flat(v.as_tensor())).collect()
    }

    #[test]
    fn array_and_batch_paths_are_one_step_with_or_without_the_cached_p() {
        let (_, imgs, m, _) = setup(2);
        let (k, r, mask) = arrays(&m);
        let masks = MaskArrays { ids_keep: &k, ids_restore: &r, mask: &mask };
        let p = StepParams { cons_weight: 0.7, ..Default::default() };
        let batch = loader_batch(&imgs, 0, 0);

        let mut a = trainer();
        let sa = a.step(&flat(&imgs), masks, &p).unwrap();
        let mut b = trainer();
        b.guidance_of(&batch, 0.0).unwrap();
        let sb = b.step_batch(&batch, masks, &p).unwrap();
        let mut c = trainer();
        let sc = c.step_batch(&batch, masks, &p).unwrap();
        assert!(sa.loss_cons.is_some());
        for s in [sb, sc] {
            assert_eq!((s.loss, s.loss_rec, s.loss_cons), (sa.loss, sa.loss_rec, sa.loss_cons));
        }
        assert_eq!(weights(&a), weights(&b));
        assert_eq!(weights(&a), weights(&c));
        assert_eq!((a.step, b.step, c.step), (1, 1, 1));
    }

    #[test]
    fn a_cached_p_serves_only_its_own_batch() {
        let (_, imgs, m, _) = setup(2);
        let (k, r, mask) = arrays(&m);
        let masks = MaskArrays { ids_keep: &k, ids_restore: &r, mask: &mask };
        let p = StepParams { cons_weight: 1.0, ..Default::default() };
        let other = (imgs.clone() * -1.0).unwrap();
        let mut a = trainer();
        // P of another batch at the same (epoch, index) but other samples must not be reused.
        let mut stale = loader_batch(&other, 0, 0);
        stale.samples = vec![7, 8];
        a.guidance_of(&stale, 0.0).unwrap();
        let sa = a.step_batch(&loader_batch(&imgs, 0, 0), masks, &p).unwrap();
        let mut b = trainer();
        let sb = b.step(&flat(&imgs), masks, &p).unwrap();
        assert_eq!(sa.loss_cons, sb.loss_cons);
    }

    #[test]
    fn cons_weight_needs_a_segmentor_and_bad_inputs_name_the_field() {
        let (mut tr, imgs, m, _) = setup(2);
        let (k, r, mask) = arrays(&m);
        let x = flat(&imgs);
        let masks = MaskArrays { ids_keep: &k, ids_restore: &r, mask: &mask };
        let p = StepParams { cons_weight: 1.0, ..Default::default() };
        let e = tr.step(&x, masks, &p).unwrap_err().to_string();
        assert!(e.contains("consWeight > 0 needs a segmentor"), "{e}");
        assert_eq!(tr.step, 0);
        let e = tr.step(&x[1..], masks, &StepParams::default()).unwrap_err().to_string();
        assert!(e.contains("images has"), "{e}");
        let short = MaskArrays { mask: &mask[1..], ..masks };
        let e = tr.step(&x, short, &StepParams::default()).unwrap_err().to_string();
        assert!(e.contains("idsRestore") && e.contains("mask"), "{e}");
        let bad: Vec<u32> = k.iter().map(|_| 999).collect();
        let e = tr.check_masking(2, MaskArrays { ids_keep: &bad, ..masks }).unwrap_err().to_string();
        assert!(e.contains("patch index 999 out of range"), "{e}");
        for (field, p) in [
            (
                "lr",
                StepParams {
                    adamw: vasomim_core::optim::AdamWParams { lr: -1.0, ..Default::default() },
                    ..Default::default()
                },
            ),
            (
                "beta2",
                StepParams {
                    adamw: vasomim_core::optim::AdamWParams { beta2: 1.0, ..Default::default() },
                    ..Default::default()
                },
            ),
            ("consWeight", StepParams { cons_weight: f64::NAN, ..Default::default() }),
            ("microBatches", StepParams { micro_batches: 0, ..Default::default() }),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        tr.step(&x, masks, &StepParams::default()).unwrap();
        assert_eq!(tr.step, 1);
        let mut wrong = loader_batch(&imgs, 0, 0);
        wrong.size = 64;
        let e = tr.check_loader_batch(&wrong).unwrap_err().to_string();
        assert!(e.contains("the model takes"), "{e}");
    }

    #[test]
    fn save_and_load_keep_the_step_and_the_device() {
        let (mut tr, imgs, m, _) = setup(2);
        let (k, r, mask) = arrays(&m);
        let masks = MaskArrays { ids_keep: &k, ids_restore: &r, mask: &mask };
        tr.step(&flat(&imgs), masks, &StepParams::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        tr.save(&path, Some("{\"epoch\":1}")).unwrap();
        let dev = vasomim_core::device::resolve("cpu").unwrap();
        let l = PretrainTrainer::load(&path, &Default::default(), &[], &dev).unwrap();
        assert_eq!(l.trainer.step, 1);
        assert_eq!(l.loop_state.as_deref(), Some("{\"epoch\":1}"));
        assert!(l.trainer.device().same_device(&dev));
    }
}

#[test]
fn step_params_read_camel_case_json_and_name_bad_fields() {
    let p: StepParams = serde_json::from_value(serde_json::json!({
        "lr": 1e-3, "weightDecay": 0.05, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
        "clipGrad": 1.0, "microBatches": 2, "consWeight": 0.5
    }))
    .unwrap();
    assert_eq!((p.adamw.lr, p.adamw.beta2, p.clip_grad), (1e-3, 0.95, Some(1.0)));
    assert_eq!((p.micro_batches, p.cons_weight), (2, 0.5));
    let base = serde_json::json!({
        "lr": 1e-3, "weightDecay": 0.05, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
        "microBatches": 1, "consWeight": 0.0
    });
    let p: StepParams = serde_json::from_value(base.clone()).unwrap();
    assert_eq!(p.clip_grad, None);
    let with = |k: &str, v: serde_json::Value| {
        let mut o = base.clone();
        o[k] = v;
        serde_json::from_value::<StepParams>(o).unwrap_err().to_string()
    };
    assert!(with("clipGrads", 1.0.into()).contains("unknown field `clipGrads`"));
    let mut o = base.clone();
    o.as_object_mut().unwrap().remove("beta1");
    let e = serde_json::from_value::<StepParams>(o).unwrap_err().to_string();
    assert!(e.contains("missing field `beta1`"), "{e}");
}
