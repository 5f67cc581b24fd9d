//! UNeXt-S, VasoMIM's frozen vessel segmentor (METHOD.md §4), with the state-dict names of
//! the authors' `unext.pth` (101 entries with the BatchNorm buffers), so that file loads as is.
//!
//! At 224² input: three conv stages (conv3×3 → BatchNorm → max-pool 2×2 → ReLU; 8, 16, 32
//! channels), two tokenised stages (overlapping patch embed stride 2 → shifted-MLP block →
//! LayerNorm; 64 at 14², 128 at 7²), a decoder of conv3×3 → BatchNorm → bilinear ×2 → ReLU →
//! add the skip (with shifted blocks after the first two), a last conv3×3 (no BatchNorm) →
//! bilinear ×2 → ReLU and a 1×1 conv to one logit per pixel. Any input size divisible by 32 works.
//!
//! Tokens stay channels-last (B, H·W, C) through the shifted blocks: the shift, the depthwise
//! conv and the Linear layers all work on that layout without transposes.

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::kernels::activation::gelu_erf;
use super::kernels::conv::{conv3x3_max_pool_relu, dwconv3x3_nhwc};
use super::kernels::linear::bias_add_residual;
use super::kernels::norm::layer_norm;
use super::kernels::resample::{max_pool2x2, shift_chunks_nhwc, upsample_bilinear2x, upsample_relu_pointwise};
use super::layers::{bn_buffers, nchw_to_tokens, tokens_to_nchw, BatchNorm2d, BnRunning, Conv2d, Linear};
use super::{Init, ParamBuilder, ParamStore};

/// LayerNorm eps of UNeXt (PyTorch's default).
pub const UNEXT_LN_EPS: f64 = 1e-5;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UNextConfig {
    /// 3 as in the paper (grey replicated); 1 for grey-native mode.
    pub in_chans: usize,
}

impl Default for UNextConfig {
    fn default() -> Self {
        UNextConfig { in_chans: 3 }
    }
}

/// Stage widths of UNeXt-S: conv stages, then the two tokenised stages.
pub const CONV_DIMS: [usize; 3] = [8, 16, 32];
pub const EMBED_DIMS: [usize; 2] = [64, 128];

/// `nn.Linear` with PyTorch's default init (weight and bias U(±1/sqrt(in))).
fn linear(pb: &ParamBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    let a = 1.0 / (in_dim as f64).sqrt();
    Ok(Linear {
        weight: pb.tensor("weight", &[out_dim, in_dim], Init::Uniform(a))?,
        bias: pb.tensor("bias", &[out_dim], Init::Uniform(a))?,
    })
}

/// LayerNorm over the last dim, eps 1e-5.
#[derive(Clone, Debug)]
pub struct Ln {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Ln {
    fn new(pb: &ParamBuilder, dim: usize) -> Result<Self> {
        Ok(Ln { weight: pb.tensor("weight", &[dim], Init::Ones)?, bias: pb.tensor("bias", &[dim], Init::Zeros)? })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, UNEXT_LN_EPS)
    }
}

/// Shifted-MLP block (MLP ratio 1): x + MLP(LayerNorm(x)) with MLP = shift along H → fc1 →
/// depthwise conv3×3 → GELU → shift along W → fc2. Names: `norm2`, `mlp.fc1`,
/// `mlp.dwconv.dwconv`, `mlp.fc2`.
#[derive(Clone, Debug)]
pub struct ShiftedBlock {
    pub norm2: Ln,
    pub fc1: Linear,
    pub dw_weight: Tensor,
    pub dw_bias: Tensor,
    pub fc2: Linear,
}

impl ShiftedBlock {
    pub fn new(pb: &ParamBuilder, dim: usize) -> Result<Self> {
        let mlp = pb.pp("mlp");
        let norm2 = Ln::new(&pb.pp("norm2"), dim)?;
        let fc1 = linear(&mlp.pp("fc1"), dim, dim)?;
        let dw = mlp.pp("dwconv").pp("dwconv");
        // nn.Conv2d(dim, dim, 3, groups=dim): fan_in = 9.
        let a = 1.0 / 3.0;
        let dw_weight = dw.tensor("weight", &[dim, 1, 3, 3], Init::Uniform(a))?;
        let dw_bias = dw.tensor("bias", &[dim], Init::Uniform(a))?;
        let fc2 = linear(&mlp.pp("fc2"), dim, dim)?;
        Ok(ShiftedBlock { norm2, fc1, dw_weight, dw_bias, fc2 })
    }

    /// Tokens (B, H·W, C) of an (H, W) grid → tokens.
    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        if n != h * w {
            candle_core::bail!("shifted block: {n} tokens do not form a {h}x{w} grid");
        }
        let t = self.norm2.forward(x)?.reshape((b, h, w, c))?;
        let t = shift_chunks_nhwc(&t, 1)?.reshape((b * n, c))?;
        let t = self.fc1.forward(&t)?.reshape((b, h, w, c))?;
        let t = dwconv3x3_nhwc(&t, &self.dw_weight, &self.dw_bias)?;
        let t = gelu_erf(&t)?;
        let t = shift_chunks_nhwc(&t, 2)?.reshape((b * n, c))?;
        let r = x.reshape((b * n, c))?;
        self.fc2.forward_with(&t, |p, bias| bias_add_residual(p, bias, &r))?.reshape((b, n, c))
    }
}

/// Overlapping patch embed: conv3×3 stride 2 pad 1, then LayerNorm on the tokens
/// (`proj`, `norm`).
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
    pub norm: Ln,
}

impl PatchEmbed {
    fn new(pb: &ParamBuilder, in_c: usize, out_c: usize) -> Result<Self> {
        Ok(PatchEmbed {
            proj: Conv2d::new(&pb.pp("proj"), in_c, out_c, 3, 2, 1, true)?,
            norm: Ln::new(&pb.pp("norm"), out_c)?,
        })
    }
    /// (B, C, H, W) → tokens (B, H/2·W/2, D) and the grid.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, usize, usize)> {
        let y = self.proj.forward(x)?;
        let (_, _, h, w) = y.dims4()?;
        Ok((self.norm.forward(&nchw_to_tokens(&y)?)?, h, w))
    }
}

pub struct UNext {
    pub params: ParamStore,
    pub cfg: UNextConfig,
    pub encoder1: Conv2d,
    pub encoder2: Conv2d,
    pub encoder3: Conv2d,
    pub ebn1: BatchNorm2d,
    pub ebn2: BatchNorm2d,
    pub ebn3: BatchNorm2d,
    pub patch_embed3: PatchEmbed,
    pub patch_embed4: PatchEmbed,
    pub block1: ShiftedBlock,
    pub block2: ShiftedBlock,
    pub dblock1: ShiftedBlock,
    pub dblock2: ShiftedBlock,
    pub norm3: Ln,
    pub norm4: Ln,
    pub dnorm3: Ln,
    pub dnorm4: Ln,
    pub decoder1: Conv2d,
    pub decoder2: Conv2d,
    pub decoder3: Conv2d,
    pub decoder4: Conv2d,
    pub decoder5: Conv2d,
    pub dbn1: BatchNorm2d,
    pub dbn2: BatchNorm2d,
    pub dbn3: BatchNorm2d,
    pub dbn4: BatchNorm2d,
    pub final_conv: Conv2d,
}

impl UNext {
    /// A new UNeXt-S with PyTorch's default init (convs and linears U(±1/sqrt(fan_in)),
    /// norms weight 1 bias 0, running mean 0 / var 1), deterministic in `seed`.
    pub fn new(cfg: &UNextConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::build(cfg, ParamBuilder::new(device, seed))
    }

    /// The same model for use as a fixed function (VasoMIM's frozen segmentor): its layers hold
    /// plain tensors, so backward through it gives the input gradient only and no parameter
    /// gradient. `params` still lists the weights (loading sets them); an optimizer over them
    /// would never see a gradient.
    pub fn new_frozen(cfg: &UNextConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::build(cfg, ParamBuilder::frozen(device, seed))
    }

    fn build(cfg: &UNextConfig, pb: ParamBuilder) -> Result<Self> {
        if cfg.in_chans == 0 {
            candle_core::bail!("UNeXt: in_chans must be at least 1");
        }
        let [c1, c2, c3] = CONV_DIMS;
        let [e1, e2] = EMBED_DIMS;
        let conv3 = |name: &str, i: usize, o: usize| Conv2d::new(&pb.pp(name), i, o, 3, 1, 1, true);
        let bn = |name: &str, c: usize| BatchNorm2d::new(&pb.pp(name), c);
        // Creation order = the authors' state-dict order.
        let encoder1 = conv3("encoder1", cfg.in_chans, c1)?;
        let encoder2 = conv3("encoder2", c1, c2)?;
        let encoder3 = conv3("encoder3", c2, c3)?;
        let ebn1 = bn("ebn1", c1)?;
        let ebn2 = bn("ebn2", c2)?;
        let ebn3 = bn("ebn3", c3)?;
        let norm3 = Ln::new(&pb.pp("norm3"), e1)?;
        let norm4 = Ln::new(&pb.pp("norm4"), e2)?;
        let dnorm3 = Ln::new(&pb.pp("dnorm3"), e1)?;
        let dnorm4 = Ln::new(&pb.pp("dnorm4"), c3)?;
        let block1 = ShiftedBlock::new(&pb.pp("block1").pp(0), e1)?;
        let block2 = ShiftedBlock::new(&pb.pp("block2").pp(0), e2)?;
        let dblock1 = ShiftedBlock::new(&pb.pp("dblock1").pp(0), e1)?;
        let dblock2 = ShiftedBlock::new(&pb.pp("dblock2").pp(0), c3)?;
        let patch_embed3 = PatchEmbed::new(&pb.pp("patch_embed3"), c3, e1)?;
        let patch_embed4 = PatchEmbed::new(&pb.pp("patch_embed4"), e1, e2)?;
        let decoder1 = conv3("decoder1", e2, e1)?;
        let decoder2 = conv3("decoder2", e1, c3)?;
        let decoder3 = conv3("decoder3", c3, c2)?;
        let decoder4 = conv3("decoder4", c2, c1)?;
        let decoder5 = conv3("decoder5", c1, c1)?;
        let dbn1 = bn("dbn1", e1)?;
        let dbn2 = bn("dbn2", c3)?;
        let dbn3 = bn("dbn3", c2)?;
        let dbn4 = bn("dbn4", c1)?;
        let final_conv = Conv2d::new(&pb.pp("final"), c1, 1, 1, 1, 0, true)?;
        Ok(UNext {
            params: pb.into_store(),
            cfg: cfg.clone(),
            encoder1,
            encoder2,
            encoder3,
            ebn1,
            ebn2,
            ebn3,
            patch_embed3,
            patch_embed4,
            block1,
            block2,
            dblock1,
            dblock2,
            norm3,
            norm4,
            dnorm3,
            dnorm4,
            decoder1,
            decoder2,
            decoder3,
            decoder4,
            decoder5,
            dbn1,
            dbn2,
            dbn3,
            dbn4,
            final_conv,
        })
    }

    /// The BatchNorm layers under their state-dict prefixes.
    pub fn batch_norms(&self) -> [(&'static str, &BatchNorm2d); 7] {
        [
            ("ebn1", &self.ebn1),
            ("ebn2", &self.ebn2),
            ("ebn3", &self.ebn3),
            ("dbn1", &self.dbn1),
            ("dbn2", &self.dbn2),
            ("dbn3", &self.dbn3),
            ("dbn4", &self.dbn4),
        ]
    }

    /// Running statistics as PyTorch buffers: `<bn>.running_mean`, `<bn>.running_var` (f32,
    /// (C)) and `<bn>.num_batches_tracked` (i64, 0-dim).
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        bn_buffers(self.batch_norms())
    }

    /// Parameters then buffers, under the authors' state-dict names (101 entries).
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.params.tensors();
        out.extend(self.buffers()?);
        Ok(out)
    }

    /// Sets the running stats of the BatchNorm named `bn` (`ebn1` …).
    pub fn set_running(&self, bn: &str, r: BnRunning) -> Result<()> {
        match self.batch_norms().iter().find(|(n, _)| *n == bn) {
            Some((_, layer)) => layer.set_running(r),
            None => candle_core::bail!("no BatchNorm named {bn}"),
        }
    }

    /// Logits (B, 1, H, W) of images (B, in_chans, H, W), H and W divisible by 32.
    ///
    /// `train = true`: BatchNorm uses batch statistics and updates the running stats.
    /// `train = false`: BatchNorm uses the running stats and nothing changes; gradients still
    /// flow to `x` (and to the parameters) — pre-training backpropagates through the frozen
    /// segmentor into the reconstructed image.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != self.cfg.in_chans {
            candle_core::bail!("UNeXt: input has {c} channels, the model takes {}", self.cfg.in_chans);
        }
        if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 {
            candle_core::bail!("UNeXt: input size {h}x{w} must be a positive multiple of 32");
        }
        if x.dtype() != DType::F32 {
            candle_core::bail!("UNeXt: f32 input expected, got {:?}", x.dtype());
        }
        // Conv then BatchNorm; in eval mode (VasoMIM's frozen segmentor, prediction) one conv with
        // the BatchNorm folded in (differentiable in both): a full-resolution op and its gradient
        // fewer.
        let conv_bn = |x: &Tensor, conv: &Conv2d, bn: &BatchNorm2d| -> Result<Tensor> {
            if !train {
                bn.fold_into(conv)?.forward(x)
            } else {
                bn.forward(&conv.forward(x)?, train)
            }
        };
        // Conv → BatchNorm → max-pool → ReLU; in eval mode the folded conv and the pooling as one
        // op (the full-resolution conv output is never stored).
        let stage = |x: &Tensor, conv: &Conv2d, bn: &BatchNorm2d| -> Result<Tensor> {
            if train {
                return max_pool2x2(&conv_bn(x, conv, bn)?, true);
            }
            let folded = bn.fold_into(conv)?;
            conv3x3_max_pool_relu(x, &folded.weight, folded.bias.as_ref().expect("fold_into sets a bias"))
        };
        let up = |x: &Tensor, conv: &Conv2d, bn: &BatchNorm2d| -> Result<Tensor> {
            upsample_bilinear2x(&conv_bn(x, conv, bn)?, true)
        };
        // Encoder.
        let t1 = stage(x, &self.encoder1, &self.ebn1)?;
        let t2 = stage(&t1, &self.encoder2, &self.ebn2)?;
        let t3 = stage(&t2, &self.encoder3, &self.ebn3)?;
        let (tok, gh, gw) = self.patch_embed3.forward(&t3)?;
        let tok = self.norm3.forward(&self.block1.forward(&tok, gh, gw)?)?;
        let t4 = tokens_to_nchw(&tok, gh, gw)?;
        let (tok, bh, bw) = self.patch_embed4.forward(&t4)?;
        let tok = self.norm4.forward(&self.block2.forward(&tok, bh, bw)?)?;
        let out = tokens_to_nchw(&tok, bh, bw)?;
        // Decoder.
        let out = (up(&out, &self.decoder1, &self.dbn1)? + &t4)?;
        let (_, _, h4, w4) = out.dims4()?;
        let tok = self.dnorm3.forward(&self.dblock1.forward(&nchw_to_tokens(&out)?, h4, w4)?)?;
        let out = tokens_to_nchw(&tok, h4, w4)?;
        let out = (up(&out, &self.decoder2, &self.dbn2)? + &t3)?;
        let (_, _, h3, w3) = out.dims4()?;
        let tok = self.dnorm4.forward(&self.dblock2.forward(&nchw_to_tokens(&out)?, h3, w3)?)?;
        let out = tokens_to_nchw(&tok, h3, w3)?;
        let out = (up(&out, &self.decoder3, &self.dbn3)? + &t2)?;
        let out = (up(&out, &self.decoder4, &self.dbn4)? + &t1)?;
        // decoder5 → bilinear ×2 → ReLU → the 1×1 `final` conv, the last three as one op (the
        // 8-channel map at full resolution is never stored). Logits in f32 whatever the autocast
        // dtype (the losses and P are f32).
        let out = self.decoder5.forward(&out)?;
        let Some(bias) = &self.final_conv.bias else { candle_core::bail!("UNeXt: the final conv has no bias") };
        upsample_relu_pointwise(&out, &self.final_conv.weight, bias)?.to_dtype(DType::F32)
    }

    /// Vessel probabilities sigmoid(logits) in eval mode.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.forward(x, false)?)
    }
}
