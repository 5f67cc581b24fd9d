//! The layers with parameters, each a thin module over its kernel in [`super::kernels`]:
//!
//! - [`Linear`] (and its fused epilogues), [`LayerNorm`] with [`LN_EPS`].
//! - [`Conv2d`], [`BatchNorm2d`] with its running statistics [`BnRunning`] and [`bn_buffers`]
//!   (the statistics as PyTorch buffers).
//! - [`nchw_to_tokens`] / [`tokens_to_nchw`]: between feature maps and token rows.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor};

use super::kernels::conv::conv2d;
use super::kernels::linear::{linear, matmul_t, Epilogue};
use super::kernels::norm::{batch_norm_eval, batch_norm_train, layer_norm};
use super::{Init, ParamBuilder};

/// `y = x Wᵀ + b` with PyTorch's (out, in) weight layout.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = pb.tensor("weight", &[out_dim, in_dim], Init::XavierUniform)?;
        let bias = pb.tensor("bias", &[out_dim], Init::Zeros)?;
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Epilogue::None)
    }

    /// `epilogue(x Wᵀ + b)` as one op ([`linear`]), for any number of leading dims.
    pub fn forward_act(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        if x.rank() == 2 {
            return linear(x, &self.weight, &self.bias, epilogue);
        }
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&1);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = linear(&x.reshape((rows, in_dim))?, &self.weight, &self.bias, epilogue)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out)
    }

    /// The product x Wᵀ followed by `epilogue(product, bias)` (bias add, or bias + GELU fused).
    pub fn forward_with(&self, x: &Tensor, epilogue: impl Fn(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        if x.rank() == 2 {
            return epilogue(&matmul_t(x, &self.weight)?, &self.bias);
        }
        // Fold the leading dims into one: a single 2-D product instead of a batched matmul over
        // a broadcast copy of the weight.
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&1);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = epilogue(&matmul_t(&x2, &self.weight)?, &self.bias)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// LayerNorm with eps 1e-6 (all LayerNorms of the ViT and the MAE decoder).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

pub const LN_EPS: f64 = 1e-6;

impl LayerNorm {
    pub fn new(pb: &ParamBuilder, dim: usize) -> Result<Self> {
        let weight = pb.tensor("weight", &[dim], Init::Ones)?;
        let bias = pb.tensor("bias", &[dim], Init::Zeros)?;
        Ok(LayerNorm { weight, bias })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, LN_EPS)
    }
}

// ---------------------------------------------------------------- Conv2d, BatchNorm2d

/// `nn.Conv2d` (groups 1, dilation 1) with weight (O, C, k, k) and an optional bias (O).
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// PyTorch's default init: weight and bias U(±1/sqrt(C·k·k)).
    pub fn new(
        pb: &ParamBuilder,
        in_c: usize,
        out_c: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / ((in_c * k * k) as f64).sqrt();
        let weight = pb.tensor("weight", &[out_c, in_c, k, k], Init::Uniform(bound))?;
        let bias = if bias { Some(pb.tensor("bias", &[out_c], Init::Uniform(bound))?) } else { None };
        Ok(Conv2d { weight, bias, stride, padding })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, self.bias.as_ref(), self.stride, self.padding)
    }
}

/// Running statistics of a [`BatchNorm2d`] (not trained; saved as PyTorch's buffers).
#[derive(Clone, Debug, PartialEq)]
pub struct BnRunning {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub num_batches_tracked: i64,
}

/// `nn.BatchNorm2d(C)` (affine, eps 1e-5, momentum 0.1, running stats).
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    pub momentum: f64,
    running: Arc<Mutex<BnRunning>>,
}

pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm2d {
    pub fn new(pb: &ParamBuilder, c: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: pb.tensor("weight", &[c], Init::Ones)?,
            bias: pb.tensor("bias", &[c], Init::Zeros)?,
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
            running: Arc::new(Mutex::new(BnRunning { mean: vec![0.0; c], var: vec![1.0; c], num_batches_tracked: 0 })),
        })
    }

    pub fn channels(&self) -> usize {
        self.weight.elem_count()
    }

    pub fn running(&self) -> BnRunning {
        self.running.lock().expect("BatchNorm state poisoned").clone()
    }

    pub fn set_running(&self, r: BnRunning) -> Result<()> {
        let c = self.channels();
        if r.mean.len() != c || r.var.len() != c {
            candle_core::bail!(
                "BatchNorm running stats have {} / {} values for {c} channels",
                r.mean.len(),
                r.var.len()
            );
        }
        *self.running.lock().expect("BatchNorm state poisoned") = r;
        Ok(())
    }

    /// `conv` followed by this layer in eval mode, as one conv: weight·s and (bias − μ)·s + β
    /// per output channel with s = γ/sqrt(running var + eps). The inference rewrite for a frozen
    /// network (equal up to rounding); tensor ops on the conv's device, no host round trip.
    pub fn fold_into(&self, conv: &Conv2d) -> Result<Conv2d> {
        let c = self.channels();
        if conv.weight.dim(0)? != c {
            candle_core::bail!("batch_norm: {c} channels after a conv with {} outputs", conv.weight.dim(0)?);
        }
        let r = self.running();
        let dev = conv.weight.device();
        let mean = Tensor::from_vec(r.mean, c, dev)?;
        let var = Tensor::from_vec(r.var, c, dev)?;
        let scale = self.weight.to_dtype(DType::F32)?.div(&(var + self.eps)?.sqrt()?)?;
        let weight = conv.weight.broadcast_mul(&scale.reshape((c, 1, 1, 1))?.to_dtype(conv.weight.dtype())?)?;
        let bias = match &conv.bias {
            Some(b) => (b.to_dtype(DType::F32)? - mean)?,
            None => mean.neg()?,
        };
        let bias = ((bias * scale)? + self.bias.to_dtype(DType::F32)?)?.to_dtype(conv.weight.dtype())?;
        Ok(Conv2d { weight, bias: Some(bias), stride: conv.stride, padding: conv.padding })
    }

    /// Train mode: normalise with the batch mean and biased variance, and update the running
    /// stats (momentum, unbiased variance, `num_batches_tracked` + 1). Eval mode: normalise with
    /// the running stats. Gradients flow to `x`, weight and bias in both modes.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels() {
            candle_core::bail!("batch_norm: input has {c} channels, the layer {}", self.channels());
        }
        let x3 = x.reshape((b, c, h * w))?;
        let y = if train {
            let n = b * h * w;
            if n < 2 {
                candle_core::bail!("batch_norm: training needs more than 1 value per channel");
            }
            let (y, stats) = batch_norm_train(&x3, &self.weight, &self.bias, self.eps)?;
            let mut r = self.running.lock().expect("BatchNorm state poisoned");
            let m = self.momentum;
            let unbias = n as f64 / (n - 1) as f64;
            for i in 0..c {
                r.mean[i] = ((1.0 - m) * r.mean[i] as f64 + m * stats.mean[i]) as f32;
                r.var[i] = ((1.0 - m) * r.var[i] as f64 + m * stats.var[i] * unbias) as f32;
            }
            r.num_batches_tracked += 1;
            y
        } else {
            let r = self.running();
            batch_norm_eval(&x3, &self.weight, &self.bias, &r.mean, &r.var, self.eps)?
        };
        y.reshape((b, c, h, w))
    }
}

/// Running statistics of BatchNorms as PyTorch buffers: `<name>.running_mean`,
/// `<name>.running_var` (f32, (C)) and `<name>.num_batches_tracked` (i64, 0-dim).
pub fn bn_buffers<'a, N: AsRef<str>>(
    bns: impl IntoIterator<Item = (N, &'a BatchNorm2d)>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, bn) in bns {
        let (name, dev) = (name.as_ref(), bn.weight.device());
        let r = bn.running();
        let c = r.mean.len();
        out.push((format!("{name}.running_mean"), Tensor::from_vec(r.mean, c, dev)?));
        out.push((format!("{name}.running_var"), Tensor::from_vec(r.var, c, dev)?));
        out.push((format!("{name}.num_batches_tracked"), Tensor::new(r.num_batches_tracked, dev)?));
    }
    Ok(out)
}

/// (B, C, H, W) → tokens (B, H·W, C), contiguous.
pub fn nchw_to_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// Tokens (B, H·W, C) → (B, C, H, W), contiguous.
pub fn tokens_to_nchw(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    if n != h * w {
        candle_core::bail!("{n} tokens do not form a {h}x{w} grid");
    }
    x.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::testing::{check, max_diff, rand};
    use candle_core::Device;

    fn bn_reference(x: &Tensor, w: &Tensor, b: &Tensor, train: bool, r: &BnRunning) -> Tensor {
        let c = w.dim(0).unwrap();
        let (mean, var) = if train {
            let m = x.mean_keepdim(0).unwrap().mean_keepdim(2).unwrap().mean_keepdim(3).unwrap();
            let d = x.broadcast_sub(&m).unwrap();
            let v = d.sqr().unwrap().mean_keepdim(0).unwrap().mean_keepdim(2).unwrap().mean_keepdim(3).unwrap();
            (m, v)
        } else {
            (
                Tensor::from_vec(r.mean.clone(), (1, c, 1, 1), &Device::Cpu).unwrap(),
                Tensor::from_vec(r.var.clone(), (1, c, 1, 1), &Device::Cpu).unwrap(),
            )
        };
        x.broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&(var + BN_EPS).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
    }

    #[test]
    fn batch_norm_matches_composite_and_updates_running_stats() {
        let pb = ParamBuilder::new(&Device::Cpu, 0);
        let bn = BatchNorm2d::new(&pb, 3).unwrap();
        let x = (rand(10, &[4, 3, 5, 6]) * 3.0).unwrap();
        let w = rand(11, &[3]);
        let b = rand(12, &[3]);
        for train in [true, false] {
            let r0 = bn.running();
            check(
                &[x.clone(), w.clone(), b.clone()],
                |t| {
                    BatchNorm2d { weight: t[1].clone(), bias: t[2].clone(), ..bn.clone() }
                        .forward(&t[0], train)
                        .unwrap()
                },
                |t| bn_reference(&t[0], &t[1], &t[2], train, &r0),
                1e-5,
            );
        }
        // One train forward above (the eval one changed nothing): check the update.
        let r = bn.running();
        assert_eq!(r.num_batches_tracked, 1);
        let xs = x.permute((1, 0, 2, 3)).unwrap().reshape((3, 120)).unwrap();
        let mean = xs.mean_keepdim(1).unwrap();
        let var_unbiased = (xs.broadcast_sub(&mean).unwrap().sqr().unwrap().sum(1).unwrap() / 119.0).unwrap();
        let mean = mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let var_u = var_unbiased.to_vec1::<f32>().unwrap();
        for i in 0..3 {
            assert!((r.mean[i] - 0.1 * mean[i]).abs() < 1e-6);
            assert!((r.var[i] - (0.9 + 0.1 * var_u[i])).abs() < 1e-5);
        }
    }
    /// The folded conv is conv → BatchNorm (eval) in one conv, with and without the conv's bias;
    /// a BatchNorm of another width is refused with both widths named.
    #[test]
    fn fold_into_equals_conv_then_eval_batch_norm_and_checks_channels() {
        let pb = ParamBuilder::new(&Device::Cpu, 3);
        let bn = BatchNorm2d::new(&pb.pp("bn"), 4).unwrap();
        bn.set_running(BnRunning {
            mean: vec![0.1, -0.2, 0.3, 0.0],
            var: vec![1.0, 0.5, 2.0, 1.5],
            num_batches_tracked: 3,
        })
        .unwrap();
        let x = rand(20, &[2, 3, 6, 5]);
        for bias in [true, false] {
            let conv = Conv2d::new(&pb.pp(if bias { "c1" } else { "c0" }), 3, 4, 3, 1, 1, bias).unwrap();
            let two = bn.forward(&conv.forward(&x).unwrap(), false).unwrap();
            let one = bn.fold_into(&conv).unwrap().forward(&x).unwrap();
            assert!(max_diff(&one, &two) < 1e-5, "bias {bias}: folded differs by {}", max_diff(&one, &two));
        }
        let wide = Conv2d::new(&pb.pp("c5"), 3, 5, 3, 1, 1, true).unwrap();
        let err = bn.fold_into(&wide).unwrap_err().to_string();
        assert!(err.contains("batch_norm: 4 channels after a conv with 5 outputs"), "{err}");
    }
}
