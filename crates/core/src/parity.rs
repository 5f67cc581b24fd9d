//! Device parity: every op of the networks and a whole VasoMIM step on a *target* (a device, the
//! composite path, a precision) against the reference, the fused f32 CPU kernels.
//!
//! - [`op_cases`]: the catalogue, one entry per op and variant, with argument shapes.
//! - [`compare_op`]: forward and the gradients of Σ r·f(args) for one op on a [`Target`], as
//!   relative errors (max |a − b| / max |b|) against the reference.
//! - [`compare_adamw`]: one AdamW update on the target against the fused CPU update.
//! - [`compare_step`]: loss terms and every gradient of a pre-training step (MAE + L_cons
//!   through a frozen UNeXt-S) on the target against the CPU.
//! - [`compare_segmentor_step`]: the loss and every gradient of a `train-segmentor` step (UNeXt-S
//!   in train mode: BatchNorm with batch statistics, every conv's weight gradient) and the
//!   BatchNorm running statistics it updates, on the target against the CPU.
//!
//! The same code serves the cargo tests (target = the CPU with composites forced, f32 and bf16:
//! what CUDA runs, checked on a machine without a GPU) and the GPU check binary
//! (`examples/cuda_check.rs`, target = `cuda`).

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::device::Precision;
use crate::nn::kernels::activation::gelu_erf;
use crate::nn::kernels::attention::attention_qkv;
use crate::nn::kernels::conv::{conv2d, dwconv3x3_nhwc};
use crate::nn::kernels::host::{force_composite, Autocast};
use crate::nn::kernels::linear::{bias_add_residual, linear, Epilogue};
use crate::nn::kernels::norm::{batch_norm_eval, batch_norm_train, layer_norm};
use crate::nn::kernels::resample::{max_pool2x2, shift_chunks_nhwc, upsample_bilinear2x, upsample_nearest2x};
use crate::nn::mae::random_masking;
use crate::nn::presets::MaeConfig;
use crate::nn::unext::{UNext, UNextConfig};
use crate::nn::InitRng;
use crate::optim::{AdamW, AdamWParams};
use crate::trainer::pretrain::{guidance, Consistency, PretrainTrainer};
use crate::trainer::segmentor::SegmentorTrainer;

/// Where a computation runs: the device, whether the composite path is forced on the CPU (what
/// other devices run), and the precision.
#[derive(Clone, Debug)]
pub struct Target {
    pub device: Device,
    pub composite: bool,
    pub precision: Precision,
}

impl Target {
    /// The reference: fused f32 kernels on the CPU.
    pub fn reference() -> Target {
        Target { device: Device::Cpu, composite: false, precision: Precision::F32 }
    }

    /// Runs `f` with this target's composite switch and autocast set on the calling thread.
    fn run<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        force_composite(self.composite);
        self.precision.activate();
        let out = {
            let _autocast = Autocast::enter(self.precision.autocast());
            f()
        };
        Precision::F32.activate();
        force_composite(false);
        out
    }
}

/// One op of the catalogue: its arguments (shape, and whether it is an activation, which mixed
/// precision casts to the compute dtype before the op as the layer before it would have; the
/// others are f32 parameters) and the op.
pub struct OpCase {
    pub name: &'static str,
    pub args: Vec<(Vec<usize>, bool)>,
    pub op: fn(&[Tensor]) -> Result<Tensor>,
}

fn case(name: &'static str, args: &[(&[usize], bool)], op: fn(&[Tensor]) -> Result<Tensor>) -> OpCase {
    OpCase { name, args: args.iter().map(|(s, a)| (s.to_vec(), *a)).collect(), op }
}

/// Every op of the networks, with shapes that cover tails and odd sizes.
pub fn op_cases() -> Vec<OpCase> {
    const A: bool = true;
    const P: bool = false;
    fn bn_eval(t: &[Tensor]) -> Result<Tensor> {
        let c = t[1].dim(0)?;
        let mean: Vec<f32> = (0..c).map(|i| 0.1 * i as f32 - 0.2).collect();
        let var: Vec<f32> = (0..c).map(|i| 0.5 + 0.1 * i as f32).collect();
        batch_norm_eval(&t[0], &t[1], &t[2], &mean, &var, 1e-5)
    }
    vec![
        case("layer_norm", &[(&[64, 96], A), (&[96], P), (&[96], P)], |t| layer_norm(&t[0], &t[1], &t[2], 1e-6)),
        case("linear", &[(&[64, 96], A), (&[160, 96], P), (&[160], P)], |t| {
            linear(&t[0], &t[1], &t[2], Epilogue::None)
        }),
        case("linear_gelu", &[(&[64, 96], A), (&[160, 96], P), (&[160], P)], |t| {
            linear(&t[0], &t[1], &t[2], Epilogue::Gelu)
        }),
        case("bias_add_residual", &[(&[64, 96], A), (&[96], P), (&[64, 96], P)], |t| {
            bias_add_residual(&t[0], &t[1], &t[2])
        }),
        case("attention_qkv", &[(&[2 * 50, 3 * 64], A)], |t| attention_qkv(&t[0], 2, 4, 0.25)),
        case("gelu", &[(&[64, 97], A)], |t| gelu_erf(&t[0])),
        case("conv2d_3x3", &[(&[2, 3, 16, 16], A), (&[8, 3, 3, 3], P), (&[8], P)], |t| {
            conv2d(&t[0], &t[1], Some(&t[2]), 1, 1)
        }),
        case("conv2d_patch", &[(&[2, 3, 16, 16], A), (&[8, 3, 4, 4], P)], |t| conv2d(&t[0], &t[1], None, 4, 0)),
        case("conv2d_1x1", &[(&[2, 8, 8, 8], A), (&[4, 8, 1, 1], P), (&[4], P)], |t| {
            conv2d(&t[0], &t[1], Some(&t[2]), 1, 0)
        }),
        case("conv2d_3x3_s2", &[(&[2, 4, 9, 9], A), (&[6, 4, 3, 3], P), (&[6], P)], |t| {
            conv2d(&t[0], &t[1], Some(&t[2]), 2, 1)
        }),
        case("dwconv3x3", &[(&[2, 8, 8, 12], A), (&[12, 1, 3, 3], P), (&[12], P)], |t| {
            dwconv3x3_nhwc(&t[0], &t[1], &t[2])
        }),
        case("batch_norm_train", &[(&[4, 6, 25], A), (&[6], P), (&[6], P)], |t| {
            Ok(batch_norm_train(&t[0], &t[1], &t[2], 1e-5)?.0)
        }),
        case("batch_norm_eval", &[(&[4, 6, 25], A), (&[6], P), (&[6], P)], bn_eval),
        case("max_pool2x2_relu", &[(&[2, 3, 8, 10], A)], |t| max_pool2x2(&t[0], true)),
        case("max_pool2x2_odd", &[(&[2, 3, 7, 9], A)], |t| max_pool2x2(&t[0], false)),
        case("upsample_bilinear2x", &[(&[2, 3, 5, 4], A)], |t| upsample_bilinear2x(&t[0], false)),
        case("upsample_bilinear2x_relu", &[(&[2, 3, 1, 6], A)], |t| upsample_bilinear2x(&t[0], true)),
        case("upsample_nearest2x", &[(&[2, 3, 5, 4], A)], |t| upsample_nearest2x(&t[0], true)),
        case("shift_h", &[(&[2, 5, 6, 11], A)], |t| shift_chunks_nhwc(&t[0], 1)),
        case("shift_w", &[(&[2, 3, 1, 12], A)], |t| shift_chunks_nhwc(&t[0], 2)),
    ]
}

/// Relative errors of one op against the reference: the output, then each argument's gradient.
#[derive(Clone, Debug)]
pub struct OpDiff {
    pub forward: f64,
    pub grads: Vec<f64>,
}

impl OpDiff {
    pub fn max(&self) -> f64 {
        self.grads.iter().fold(self.forward, |a, &b| a.max(b))
    }
}

/// Uniform(−1, 1) f32 values on the host, deterministic in `seed`.
pub fn random(seed: u64, dims: &[usize]) -> Result<Tensor> {
    let mut r = InitRng::new(seed);
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect::<Vec<_>>(), dims, &Device::Cpu)
}

/// max |a − b| / max |b| over two tensors of one shape (compared in f64 on the host); 0 when
/// both are zero, infinite when a value is not finite.
pub fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let host = |t: &Tensor| -> Result<Vec<f64>> { t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>() };
    let (a, b) = (host(a)?, host(b)?);
    if a.len() != b.len() {
        candle_core::bail!("rel_error: {} vs {} values", a.len(), b.len());
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Ok(f64::INFINITY);
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(if scale == 0.0 { diff } else { diff / scale })
}

/// The output (f32, host) and the argument gradients (host) of Σ r·op(args) on `t`.
fn run_op(c: &OpCase, args: &[Tensor], r: &Tensor, t: &Target) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = args.iter().map(|a| Var::from_tensor(&a.to_device(&t.device)?)).collect::<Result<_>>()?;
    let (y, grads) = t.run(|| {
        let inputs: Vec<Tensor> = vars
            .iter()
            .zip(&c.args)
            .map(|(v, (_, act))| match (act, t.precision.autocast()) {
                (true, Some(dt)) => v.as_tensor().to_dtype(dt),
                _ => Ok(v.as_tensor().clone()),
            })
            .collect::<Result<_>>()?;
        let y = (c.op)(&inputs)?.to_dtype(DType::F32)?;
        let grads = (&y * r.to_device(&t.device)?)?.sum_all()?.backward()?;
        Ok((y, grads))
    })?;
    let grads = vars
        .iter()
        .enumerate()
        .map(|(i, v)| match grads.get(v.as_tensor()) {
            Some(g) => g.to_dtype(DType::F32)?.to_device(&Device::Cpu),
            None => candle_core::bail!("{}: no gradient reached argument {i}", c.name),
        })
        .collect::<Result<_>>()?;
    Ok((y.to_device(&Device::Cpu)?, grads))
}

/// One op on `target` against the reference, on random arguments drawn from `seed`.
pub fn compare_op(c: &OpCase, target: &Target, seed: u64) -> Result<OpDiff> {
    let args: Vec<Tensor> =
        c.args.iter().enumerate().map(|(i, (s, _))| random(seed + i as u64, s)).collect::<Result<_>>()?;
    let out_dims = Target::reference().run(|| (c.op)(&args))?.dims().to_vec();
    let r = random(seed + 100, &out_dims)?;
    let (y0, g0) = run_op(c, &args, &r, &Target::reference())?;
    let (y1, g1) = run_op(c, &args, &r, target)?;
    let forward = rel_error(&y1, &y0)?;
    let grads = g1.iter().zip(&g0).map(|(a, b)| rel_error(a, b)).collect::<Result<_>>()?;
    Ok(OpDiff { forward, grads })
}

/// The relative error of the parameter and both moments after one AdamW update (with weight
/// decay) on `target` against the fused CPU update.
pub fn compare_adamw(target: &Target, seed: u64) -> Result<f64> {
    let p = AdamWParams { lr: 1e-3, weight_decay: 0.05, ..AdamWParams::default() };
    let update = |dev: &Device, composite: bool| -> Result<Vec<Tensor>> {
        force_composite(composite);
        let pb = crate::nn::ParamBuilder::new(dev, seed);
        pb.var("w", &[33, 70], crate::nn::Init::Normal(0.5))?;
        pb.var("b", &[70], crate::nn::Init::Normal(0.5))?;
        let store = pb.into_store();
        let mut opt = AdamW::new(&store, &[])?;
        for k in 0..2u64 {
            let grads: Vec<Tensor> = opt
                .vars()
                .iter()
                .enumerate()
                .map(|(i, (_, v))| random(seed + 10 * k + i as u64, v.dims())?.to_device(dev))
                .collect::<Result<_>>()?;
            opt.step(&grads, &p)?;
        }
        force_composite(false);
        let mut out: Vec<Tensor> = opt.vars().iter().map(|(_, v)| v.as_tensor().clone()).collect();
        out.extend(opt.state_tensors().into_iter().map(|(_, t)| t));
        out.into_iter().map(|t| t.to_device(&Device::Cpu)).collect()
    };
    let (a, b) = (update(&target.device, target.composite)?, update(&Device::Cpu, false)?);
    a.iter().zip(&b).map(|(x, y)| rel_error(x, y)).try_fold(0f64, |m, e| Ok(m.max(e?)))
}

/// Relative errors of a pre-training step against the CPU: the loss terms and the worst
/// gradient (with its parameter's name).
#[derive(Clone, Debug)]
pub struct StepDiff {
    pub loss_rec: f64,
    pub loss_cons: f64,
    pub worst_grad: f64,
    pub worst_name: String,
    pub grads: usize,
}

/// Gradients under their parameters' names.
type NamedGrads = Vec<(String, Tensor)>;

/// `grads` (in `opt`'s slot order) on the host, under their parameters' names.
fn named_on_host(opt: &AdamW, grads: Vec<Tensor>) -> Result<NamedGrads> {
    opt.vars().iter().zip(grads).map(|((n, _), g)| Ok((n.to_string(), g.to_device(&Device::Cpu)?))).collect()
}

/// One VasoMIM step (mask 0.5, L_cons through a UNeXt-S of random weights, weight 0.1) of
/// `cfg` at batch `batch`, loss and gradients without the update, on `target` vs the CPU.
pub fn compare_step(cfg: &MaeConfig, batch: usize, target: &Target, seed: u64) -> Result<StepDiff> {
    let dims = [batch, cfg.in_chans, cfg.img_size, cfg.img_size];
    let imgs = random(seed, &dims)?;
    let mut rng = InitRng::new(seed + 1);
    let masks = random_masking(batch, cfg.num_patches(), 0.5, &mut rng, &Device::Cpu)?;
    let run = |t: &Target| -> Result<(f64, f64, NamedGrads)> {
        let dev = &t.device;
        let mut trainer = PretrainTrainer::create(cfg, dev, seed)?;
        trainer.set_precision(t.precision);
        let seg = UNext::new(&UNextConfig { in_chans: cfg.in_chans }, dev, seed + 2)?;
        let x = imgs.to_device(dev)?;
        let m = crate::nn::mae::Masking {
            ids_keep: masks.ids_keep.to_device(dev)?,
            ids_restore: masks.ids_restore.to_device(dev)?,
            mask: masks.mask.to_device(dev)?,
        };
        t.run(|| {
            let prob = guidance(Some(&seg), &x, None, 0.0, cfg.patch_size)?.prob.expect("P");
            let cons = Consistency { seg: &seg, prob: &prob, weight: 0.1 };
            let (st, grads) = trainer.pretrain_loss_and_grads(&x, &m, Some(&cons), 1)?;
            Ok((st.loss_rec, st.loss_cons.unwrap_or(0.0), named_on_host(&trainer.opt, grads)?))
        })
    };
    let (r0, c0, g0) = run(&Target::reference())?;
    let (r1, c1, g1) = run(target)?;
    let mut d = StepDiff {
        loss_rec: (r1 - r0).abs() / r0.abs().max(1e-12),
        loss_cons: (c1 - c0).abs() / c0.abs().max(1e-12),
        worst_grad: 0.0,
        worst_name: String::new(),
        grads: g0.len(),
    };
    (d.worst_grad, d.worst_name) = worst_grad(&g1, &g0)?;
    Ok(d)
}

/// The largest relative error over named gradients (NaN wins), and its name. A gradient that is
/// zero up to rounding in the reference (below 1e-6 of the step's largest: a conv bias before a
/// train-mode BatchNorm, which the normalisation cancels) is rounding on both sides; its error is
/// measured against the step's largest gradient instead of its own size.
fn worst_grad(a: &NamedGrads, b: &NamedGrads) -> Result<(f64, String)> {
    let abs_max = |t: &Tensor| -> Result<f64> { t.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>() };
    let global = b.iter().map(|(_, t)| abs_max(t)).try_fold(0f64, |m, v| Ok::<_, candle_core::Error>(m.max(v?)))?;
    let mut worst = (0f64, String::new());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let e = if abs_max(y)? < 1e-6 * global {
            let d = abs_max(&(x.to_dtype(DType::F64)? - y.to_dtype(DType::F64)?)?)?;
            if d.is_finite() {
                d / global
            } else {
                f64::INFINITY
            }
        } else {
            rel_error(x, y)?
        };
        if e > worst.0 || e.is_nan() {
            worst = (e, name.clone());
        }
    }
    Ok(worst)
}

/// Relative errors of a `train-segmentor` step against the CPU: the loss, the worst gradient
/// (with its parameter's name), the whole gradient (‖a − b‖ / ‖b‖ over every parameter), and
/// the worst BatchNorm running statistic after the step.
///
/// The tolerances are looser than the pre-training step's: the gradient of a conv weight before a
/// train-mode BatchNorm is a sum over every position that cancels to a small remainder (it is
/// orthogonal to the weight, by BatchNorm's scale invariance). Measured with the CPU composites
/// against the fused kernels at 64², batch 4, both in f32: loss 1.4e-6, whole gradient 9.7e-5,
/// those conv weights 1.3–2.9e-3 each (the last conv, without a BatchNorm after it, 1.4e-4), and
/// both paths keep W·dW = 0 equally well (1e-5 of |W|·|dW|): rounding, not a wrong formula. In
/// bf16 single tensors differ by 0.1–0.4 at init while the whole gradient agrees to 1e-2.
#[derive(Clone, Debug)]
pub struct SegmentorStepDiff {
    pub loss: f64,
    pub worst_grad: f64,
    pub worst_name: String,
    pub whole_grad: f64,
    pub grads: usize,
    pub running: f64,
}

/// ‖a − b‖ / ‖b‖ over all the named gradients together (in f64).
fn whole_grad_error(a: &NamedGrads, b: &NamedGrads) -> Result<f64> {
    let (mut num, mut den) = (0f64, 0f64);
    for ((_, x), (_, y)) in a.iter().zip(b) {
        let (x, y) = (x.to_dtype(DType::F64)?, y.to_dtype(DType::F64)?);
        num += (&x - &y)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        den += y.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    Ok(if num.is_finite() { (num / den.max(f64::MIN_POSITIVE)).sqrt() } else { f64::INFINITY })
}

/// One UNeXt-S training step (train mode, BCE + Dice on random binary masks) on images of
/// `size`² at batch `batch`: loss, every gradient and the updated running statistics, without
/// the Adam update, on `target` vs the CPU.
pub fn compare_segmentor_step(batch: usize, size: usize, target: &Target, seed: u64) -> Result<SegmentorStepDiff> {
    let cfg = UNextConfig { in_chans: 1 };
    let imgs = random(seed, &[batch, 1, size, size])?;
    let masks = random(seed + 1, &[batch, 1, size, size])?.gt(0.0)?.to_dtype(DType::F32)?;
    let run = |t: &Target| -> Result<(f64, NamedGrads, Vec<f32>)> {
        let dev = &t.device;
        let mut trainer = SegmentorTrainer::create(&cfg, dev, seed + 2)?;
        trainer.set_precision(t.precision);
        let (x, m) = (imgs.to_device(dev)?, masks.to_device(dev)?);
        t.run(|| {
            let (loss, grads) = trainer.loss_and_grads(&x, &m)?;
            let grads = named_on_host(&trainer.opt, grads)?;
            let running = trainer
                .model
                .batch_norms()
                .iter()
                .flat_map(|(_, bn)| {
                    let r = bn.running();
                    r.mean.into_iter().chain(r.var)
                })
                .collect();
            Ok((loss.loss, grads, running))
        })
    };
    let (l0, g0, r0) = run(&Target::reference())?;
    let (l1, g1, r1) = run(target)?;
    let (worst_grad, worst_name) = worst_grad(&g1, &g0)?;
    let running = rel_error(&Tensor::new(r1, &Device::Cpu)?, &Tensor::new(r0, &Device::Cpu)?)?;
    Ok(SegmentorStepDiff {
        loss: (l1 - l0).abs() / l0.abs().max(1e-12),
        worst_grad,
        worst_name,
        whole_grad: whole_grad_error(&g1, &g0)?,
        grads: g0.len(),
        running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composite(precision: Precision) -> Target {
        Target { device: Device::Cpu, composite: true, precision }
    }

    /// The composite path of every op (what CUDA runs) equals the fused CPU kernel, forward and
    /// backward, in f32 — and stays within bf16's precision under bf16 autocast.
    #[test]
    fn composites_match_fused_kernels() {
        for c in op_cases() {
            let d = compare_op(&c, &composite(Precision::F32), 7).unwrap();
            assert!(d.max() <= 1e-5, "{} f32 composite: {d:?}", c.name);
            let d = compare_op(&c, &composite(Precision::Bf16), 7).unwrap();
            assert!(d.max() <= 2e-2, "{} bf16 composite: {d:?}", c.name);
            assert!(
                d.max() > 0.0
                    || c.name.starts_with("max_pool")
                    || c.name.starts_with("shift")
                    || c.name.starts_with("upsample_nearest"),
                "{} bf16 composite is bit-identical to f32: autocast did not reach it",
                c.name
            );
        }
    }

    #[test]
    fn adamw_composite_matches_fused() {
        assert!(compare_adamw(&composite(Precision::F32), 3).unwrap() <= 1e-6);
    }

    /// A whole VasoMIM step through the composites equals the fused CPU step (f32), and under
    /// bf16 autocast stays within bf16's precision.
    #[test]
    fn segmentor_step_composite_matches_fused() {
        let d = compare_segmentor_step(4, 64, &composite(Precision::F32), 7).unwrap();
        assert!(d.loss <= 1e-5 && d.worst_grad <= 1e-2 && d.whole_grad <= 1e-3 && d.running <= 1e-5, "{d:?}");
        assert!(d.grads > 30, "{d:?}");
        let d = compare_segmentor_step(4, 64, &composite(Precision::Bf16), 7).unwrap();
        assert!(d.loss <= 2e-2 && d.whole_grad <= 5e-2 && d.running <= 2e-2, "{d:?}");
        assert!(d.whole_grad > 0.0, "bf16 segmentor step bit-identical to f32: autocast did not reach it");
    }

    #[test]
    fn step_composite_matches_fused() {
        let cfg = MaeConfig { img_size: 32, in_chans: 1, ..MaeConfig::micro_test() };
        let d = compare_step(&cfg, 2, &composite(Precision::F32), 5).unwrap();
        assert!(d.loss_rec <= 1e-5 && d.loss_cons <= 1e-5 && d.worst_grad <= 1e-4, "{d:?}");
        let d = compare_step(&cfg, 2, &composite(Precision::Bf16), 5).unwrap();
        assert!(d.loss_rec <= 2e-2 && d.loss_cons <= 2e-2 && d.worst_grad <= 5e-2, "{d:?}");
        assert!(d.worst_grad > 0.0, "bf16 step bit-identical to f32: autocast did not reach it");
    }
}
