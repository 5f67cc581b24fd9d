//! Gradients that can be trusted: the fused CPU ops against candle's composite (autograd)
//! versions, gradient coverage of a whole MAE step, and finite differences of the MAE loss.

use candle_core::{Device, Tensor, Var, D};
use vasomim_core::nn::kernels::activation::gelu_erf;
use vasomim_core::nn::kernels::attention::attention_qkv;
use vasomim_core::nn::kernels::linear::{bias_add_residual, linear, matmul_t, Epilogue};
use vasomim_core::nn::kernels::norm::{layer_norm, layer_norm_composite};
use vasomim_core::nn::mae::{random_masking, MaskedAutoencoder};
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::InitRng;

fn randn(rng: &mut InitRng, dims: &[usize], scale: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / scale).fold(0f32, f32::max)
}

/// Forward and all input gradients of `f` (fused) and `g` (composite) agree on random data,
/// with a random upstream gradient (so the test sees more than Σ of the output).
fn check_op(name: &str, inputs: Vec<Tensor>, f: impl Fn(&[Tensor]) -> Tensor, g: impl Fn(&[Tensor]) -> Tensor) {
    let mut rng = InitRng::new(7);
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let yf = f(&ts);
    let yg = g(&ts);
    assert!(max_rel(&yf, &yg) < 1e-5, "{name}: forward differs by {}", max_rel(&yf, &yg));
    let up = randn(&mut rng, yf.dims(), 1.0);
    let gf = (&yf * &up).unwrap().sum_all().unwrap().backward().unwrap();
    let gg = (&yg * &up).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, t) in ts.iter().enumerate() {
        let a = gf.get(t).unwrap_or_else(|| panic!("{name}: fused op gives no gradient for input {i}"));
        let b = gg.get(t).unwrap();
        let e = max_rel(a, b);
        assert!(e < 1e-4, "{name}: gradient of input {i} differs by {e} (relative to max)");
    }
}

#[test]
fn layer_norm_matches_composite() {
    let mut rng = InitRng::new(1);
    // A large offset checks the variance is not computed as E[x²] − E[x]² in f32.
    let x = (randn(&mut rng, &[3, 5, 48], 2.0) + 30.0).unwrap();
    let w = randn(&mut rng, &[48], 1.0);
    let b = randn(&mut rng, &[48], 1.0);
    check_op(
        "layer_norm",
        vec![x, w, b],
        |t| layer_norm(&t[0], &t[1], &t[2], 1e-6).unwrap(),
        |t| layer_norm_composite(&t[0], &t[1], &t[2], 1e-6).unwrap(),
    );
    // Large enough to take the multi-threaded path.
    let x = randn(&mut rng, &[64, 33, 40], 1.0);
    let w = randn(&mut rng, &[40], 1.0);
    let b = randn(&mut rng, &[40], 1.0);
    check_op(
        "layer_norm (parallel)",
        vec![x, w, b],
        |t| layer_norm(&t[0], &t[1], &t[2], 1e-6).unwrap(),
        |t| layer_norm_composite(&t[0], &t[1], &t[2], 1e-6).unwrap(),
    );
}

/// The bias gradient is a column sum in per-thread partials: a few rows and many.
#[test]
fn bias_add_residual_matches_broadcast_add() {
    let mut rng = InitRng::new(5);
    for rows in [3, 2000] {
        let y = randn(&mut rng, &[rows, 24], 1.0);
        let b = randn(&mut rng, &[24], 1.0);
        let r = randn(&mut rng, &[rows, 24], 1.0);
        check_op(
            "bias_add_residual",
            vec![y, b, r],
            |t| bias_add_residual(&t[0], &t[1], &t[2]).unwrap(),
            |t| (t[0].broadcast_add(&t[1]).unwrap() + &t[2]).unwrap(),
        );
    }
}

/// x·Wᵀ of the residual Linears (dx and dW straight from the upstream gradient) against candle's
/// matmul of the transposed weight, on a few rows and on enough to split across threads.
#[test]
fn matmul_t_matches_transposed_matmul() {
    let mut rng = InitRng::new(8);
    for rows in [3, 2000] {
        let x = randn(&mut rng, &[rows, 40], 1.0);
        let w = randn(&mut rng, &[24, 40], 0.5);
        check_op(
            "matmul_t",
            vec![x, w],
            |t| matmul_t(&t[0], &t[1]).unwrap(),
            |t| t[0].matmul(&t[1].t().unwrap()).unwrap(),
        );
    }
    let (x, w) = (randn(&mut rng, &[3, 40], 1.0), randn(&mut rng, &[24, 39], 1.0));
    let e = matmul_t(&x, &w).unwrap_err().to_string();
    assert!(e.contains("matmul_t: x [3, 40], weight [24, 39]"), "{e}");
}

/// A tensor used twice gets the sum of its two gradients: exactly 2u + u for 2x + x, on a
/// tensor small enough for candle's add and on one large enough for the parallel sum the
/// vendored autograd uses (vendor/candle-core/VASOMIM.md).
#[test]
fn gradients_of_a_reused_tensor_are_summed() {
    let mut rng = InitRng::new(9);
    for n in [100, 70_001] {
        let x = Var::from_tensor(&randn(&mut rng, &[n], 1.0)).unwrap();
        let up = randn(&mut rng, &[n], 1.0);
        let y = ((x.as_tensor() * 2.0).unwrap() + x.as_tensor()).unwrap();
        let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let got = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = up.to_vec1::<f32>().unwrap().iter().map(|u| 2.0 * u + u).collect();
        assert_eq!(got, want, "n = {n}");
    }
}

/// The GELU epilogue's backward (gelu' and the bias gradient in per-thread partials) on a few
/// rows and on many.
#[test]
fn linear_gelu_matches_composite() {
    let mut rng = InitRng::new(6);
    for rows in [3, 2000] {
        let x = randn(&mut rng, &[rows, 16], 1.0);
        let w = randn(&mut rng, &[24, 16], 0.5);
        let b = randn(&mut rng, &[24], 1.0);
        check_op(
            "linear + GELU",
            vec![x, w, b],
            |t| linear(&t[0], &t[1], &t[2], Epilogue::Gelu).unwrap(),
            |t| t[0].matmul(&t[1].t().unwrap()).unwrap().broadcast_add(&t[2]).unwrap().gelu_erf().unwrap(),
        );
    }
}

/// The attention core against candle's composite; the last case has wide score rows of large
/// logits (softmax rows of 50 with scores of std ~2).
#[test]
fn attention_from_fused_qkv_matches_composite() {
    let mut rng = InitRng::new(9);
    for (b, n, h, hd, std) in [(1, 3, 1, 2, 1.0), (2, 17, 3, 8, 1.0), (3, 50, 2, 16, 1.0), (4, 50, 3, 16, 1.5)] {
        let d = h * hd;
        let qkv = randn(&mut rng, &[b * n, 3 * d], std);
        let scale = (hd as f64).powf(-0.5);
        check_op(
            "attention_qkv",
            vec![qkv],
            |t| attention_qkv(&t[0], b, h, scale).unwrap(),
            |t| attention_reference(&t[0], b, h, scale),
        );
    }
}

/// softmax(scale·q·kᵀ)·v from candle primitives, heads split from and merged into rows.
fn attention_reference(qkv: &Tensor, b: usize, h: usize, scale: f64) -> Tensor {
    let (rows, three_d) = qkv.dims2().unwrap();
    let (n, d) = (rows / b, three_d / 3);
    let x = qkv.reshape((b, n, 3, h, d / h)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
    let q = x.get(0).unwrap().contiguous().unwrap();
    let k = x.get(1).unwrap().contiguous().unwrap();
    let v = x.get(2).unwrap().contiguous().unwrap();
    let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
    let y = candle_nn::ops::softmax(&s, D::Minus1).unwrap().matmul(&v).unwrap();
    y.transpose(1, 2).unwrap().contiguous().unwrap().reshape((rows, d)).unwrap()
}

#[test]
fn gelu_matches_candle() {
    let mut rng = InitRng::new(3);
    for n in [100, 40_000] {
        let x = randn(&mut rng, &[n], 3.0);
        check_op("gelu", vec![x], |t| gelu_erf(&t[0]).unwrap(), |t| t[0].gelu_erf().unwrap());
    }
}

#[test]
fn custom_ops_work_on_strided_input() {
    let mut rng = InitRng::new(4);
    let x = randn(&mut rng, &[6, 8], 1.0).t().unwrap(); // not contiguous
    let (w, b) = (randn(&mut rng, &[6], 1.0), randn(&mut rng, &[6], 1.0));
    let a = layer_norm(&x, &w, &b, 1e-6).unwrap();
    let r = layer_norm_composite(&x.contiguous().unwrap(), &w, &b, 1e-6).unwrap();
    assert!(max_rel(&a, &r) < 1e-6);
    let qkv = randn(&mut rng, &[12, 10], 1.0).t().unwrap(); // (10 rows, 3·4) strided
    let a = attention_qkv(&qkv, 2, 2, 0.5).unwrap();
    let r = attention_reference(&qkv.contiguous().unwrap(), 2, 2, 0.5);
    assert!(max_rel(&a, &r) < 1e-5);
}

fn micro_batch(cfg: &MaeConfig, b: usize, seed: u64) -> Tensor {
    let mut rng = InitRng::new(seed);
    randn(&mut rng, &[b, cfg.in_chans, cfg.img_size, cfg.img_size], 1.0)
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    for cfg in [MaeConfig::micro_test(), MaeConfig { in_chans: 3, img_size: 48, ..MaeConfig::micro_test() }] {
        let model = MaskedAutoencoder::new(&cfg, &Device::Cpu, 0).unwrap();
        let imgs = micro_batch(&cfg, 2, 1);
        let m = random_masking(2, cfg.num_patches(), 0.75, &mut InitRng::new(5), &Device::Cpu).unwrap();
        let out = model.forward(&imgs, &m).unwrap();
        let grads = out.loss.backward().unwrap();
        assert!(!model.params.entries.is_empty());
        for (name, v) in &model.params.entries {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
            let n = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n > 0.0 && n.is_finite(), "{name}: gradient norm² {n}");
        }
        // 2 + 12 per block + 2 (encoder: patch embed, cls, blocks, norm), decoder: 2 + 1 + 12 + 2 + 2
        assert_eq!(model.params.entries.len(), 3 + 12 * cfg.depth + 2 + 2 + 1 + 12 * cfg.decoder_depth + 4);
    }
}

#[test]
fn loss_gradient_matches_finite_differences() {
    let cfg = MaeConfig::micro_test();
    let model = MaskedAutoencoder::new(&cfg, &Device::Cpu, 11).unwrap();
    let imgs = micro_batch(&cfg, 2, 12);
    let m = random_masking(2, cfg.num_patches(), 0.5, &mut InitRng::new(13), &Device::Cpu).unwrap();
    let loss_of = || model.forward(&imgs, &m).unwrap().loss.to_scalar::<f32>().unwrap() as f64;
    let grads = model.forward(&imgs, &m).unwrap().loss.backward().unwrap();
    let mut rng = InitRng::new(14);
    let mut checked = 0;
    for (name, v) in &model.params.entries {
        let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // The entry with the largest gradient and one at random.
        let imax = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        for i in [imax, (rng.next_u64() % g.len() as u64) as usize] {
            let h = 1e-2f32;
            let mut p = base.clone();
            p[i] = base[i] + h;
            v.set(&Tensor::from_vec(p.clone(), v.shape(), &Device::Cpu).unwrap()).unwrap();
            let lp = loss_of();
            p[i] = base[i] - h;
            v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap()).unwrap();
            let lm = loss_of();
            v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu).unwrap()).unwrap();
            let fd = (lp - lm) / (2.0 * h as f64);
            let an = g[i] as f64;
            assert!(
                (fd - an).abs() <= 2e-4 + 3e-2 * an.abs(),
                "{name}[{i}]: analytic {an:e}, finite difference {fd:e}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40);
}
