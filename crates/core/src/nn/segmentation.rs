//! Downstream segmentation (METHOD.md §9): the pre-trained ViT encoder and the U-Net adapter
//! head of the CheXWorld code the paper builds on.
//!
//! ```text
//! image ─ ViT (patch embed, pos, blocks; no final norm) ─ tokens (B, D, g, g)
//!   branch4: 1×1 conv → w0                         (g)
//!   branch3: [×2 nearest, 3×3 conv] → w1           (2g)
//!   branch2: [×2 nearest, 3×3 conv] ×2 → w2        (4g)
//!   branch1: [×2 nearest, 3×3 conv] ×3 → w3        (8g)
//!   stem:    3×3 conv on the image → w4            (16g = input size)
//! decoder: d = branch4; for each skip in (branch3, branch2, branch1, stem):
//!   d = Block(cat(×2 nearest(d), skip)),  Block(x) = [conv3×3, BN, GELU]×2 + 1×1 conv(x)
//! classifier: 1×1 conv → K logits at the input size.
//! ```
//! Widths (w0 … w4) = (512, 256, 128, 64, 32) × `head_scale` (the paper's head at 1.0). Every
//! branch conv is followed by BatchNorm and GELU. Drop-path (stochastic depth) on the encoder's
//! residual branches while training, with a linear rule over depth as timm.
//!
//! Keys: the encoder keeps timm's names (so `vasomim export` files and MAE checkpoints load into
//! it), the head lives under `head.*`. The encoder's final `norm` is kept (a saved encoder is a
//! complete timm encoder) but not used: the head reads the tokens before it, so it is frozen
//! ([`FROZEN`]) — trained, it would never receive a gradient.

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::kernels::activation::gelu_erf;
use super::kernels::resample::upsample_nearest2x;
use super::layers::{bn_buffers, BatchNorm2d, Conv2d};
use super::presets::MaeConfig;
use super::vit::VisionTransformer;
use super::{InitRng, ParamBuilder, ParamStore};

/// Parameter prefixes that the forward pass does not use (the encoder's final LayerNorm).
pub const FROZEN: &[&str] = &["norm"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentationConfig {
    /// Encoder shape (the decoder fields of an MAE config are ignored).
    pub encoder: MaeConfig,
    /// 1: binary (sigmoid); ≥ 2: classes with softmax (class 0 = background).
    pub num_classes: usize,
    /// Multiplier of the head widths (512, 256, 128, 64, 32); 1.0 is the paper's head.
    pub head_scale: f64,
    /// Largest drop-path rate (last block), timm's linear rule over depth.
    pub drop_path: f64,
}

impl SegmentationConfig {
    pub fn widths(&self) -> [usize; 5] {
        [512, 256, 128, 64, 32].map(|w| ((w as f64 * self.head_scale).round() as usize).max(4))
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        self.encoder.validate()?;
        if self.num_classes == 0 {
            return Err("numClasses must be >= 1".into());
        }
        if !(self.head_scale > 0.0 && self.head_scale <= 4.0) {
            return Err(format!("headScale = {} must be in (0, 4]", self.head_scale));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(format!("dropPath = {} must be in [0, 1)", self.drop_path));
        }
        if self.encoder.img_size / self.encoder.patch_size * 16 != self.encoder.img_size {
            return Err(format!(
                "the U-Net adapter upsamples the patch grid 16×: patch size must be 16, got {}",
                self.encoder.patch_size
            ));
        }
        Ok(())
    }
}

/// conv → BatchNorm → GELU.
#[derive(Clone, Debug)]
struct ConvBnAct {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBnAct {
    fn new(pb: &ParamBuilder, cin: usize, cout: usize, k: usize) -> Result<Self> {
        Ok(ConvBnAct {
            conv: Conv2d::new(&pb.pp("conv"), cin, cout, k, 1, k / 2, true)?,
            bn: BatchNorm2d::new(&pb.pp("bn"), cout)?,
        })
    }
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        gelu_erf(&self.bn.forward(&self.conv.forward(x)?, train)?)
    }
}

/// The decoder stage: [conv3×3, BN, GELU] ×2 plus a 1×1 residual conv of the input.
#[derive(Clone, Debug)]
struct DecoderBlock {
    a: ConvBnAct,
    b: ConvBnAct,
    res: Conv2d,
}

impl DecoderBlock {
    fn new(pb: &ParamBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(DecoderBlock {
            a: ConvBnAct::new(&pb.pp("conv1"), cin, cout, 3)?,
            b: ConvBnAct::new(&pb.pp("conv2"), cout, cout, 3)?,
            res: Conv2d::new(&pb.pp("res"), cin, cout, 1, 1, 0, true)?,
        })
    }
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.b.forward(&self.a.forward(x, train)?, train)?;
        y + self.res.forward(x)?
    }
}

#[derive(Clone, Debug)]
pub struct SegmentationViT {
    pub cfg: SegmentationConfig,
    pub encoder: VisionTransformer,
    branch4: ConvBnAct,
    /// branches 3, 2, 1: 1, 2, 3 (upsample, conv) steps.
    branches: Vec<Vec<ConvBnAct>>,
    stem: ConvBnAct,
    decoder: Vec<DecoderBlock>,
    classifier: Conv2d,
    pub params: ParamStore,
}

impl SegmentationViT {
    pub fn new(cfg: &SegmentationConfig, device: &Device, seed: u64) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let pb = ParamBuilder::new(device, seed);
        let encoder = VisionTransformer::new(&pb, &cfg.encoder)?;
        let d = cfg.encoder.embed_dim;
        let w = cfg.widths();
        let h = pb.pp("head");
        let branch4 = ConvBnAct::new(&h.pp("branch4"), d, w[0], 1)?;
        let branches = (1..=3)
            .map(|steps| {
                let out = w[steps];
                (0..steps)
                    .map(|s| {
                        let cin = if s == 0 { d } else { out };
                        ConvBnAct::new(&h.pp(format!("branch{}", 4 - steps)).pp(s), cin, out, 3)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let stem = ConvBnAct::new(&h.pp("stem"), cfg.encoder.in_chans, w[4], 3)?;
        let decoder = (0..4)
            .map(|i| DecoderBlock::new(&h.pp("decoder").pp(i), w[i] + w[i + 1], w[i + 1]))
            .collect::<Result<Vec<_>>>()?;
        let classifier = Conv2d::new(&h.pp("classifier"), w[4], cfg.num_classes, 1, 1, 0, true)?;
        Ok(SegmentationViT {
            cfg: cfg.clone(),
            encoder,
            branch4,
            branches,
            stem,
            decoder,
            classifier,
            params: pb.into_store(),
        })
    }

    /// Every BatchNorm of the head under its state-dict prefix (running stats are buffers).
    pub fn batch_norms(&self) -> Vec<(String, &BatchNorm2d)> {
        let mut out = vec![("head.branch4.bn".to_string(), &self.branch4.bn)];
        for (k, br) in self.branches.iter().enumerate() {
            for (s, c) in br.iter().enumerate() {
                out.push((format!("head.branch{}.{s}.bn", 3 - k), &c.bn));
            }
        }
        out.push(("head.stem.bn".into(), &self.stem.bn));
        for (i, blk) in self.decoder.iter().enumerate() {
            out.push((format!("head.decoder.{i}.conv1.bn"), &blk.a.bn));
            out.push((format!("head.decoder.{i}.conv2.bn"), &blk.b.bn));
        }
        out
    }

    /// Running statistics of every BatchNorm as PyTorch buffers (`<bn>.running_mean`,
    /// `<bn>.running_var` f32 (C), `<bn>.num_batches_tracked` i64 0-dim).
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        bn_buffers(self.batch_norms())
    }

    /// Parameters, the position-embedding buffer `pos_embed` and the BatchNorm buffers.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.params.tensors();
        out.push(("pos_embed".into(), self.encoder.pos_embed.clone()));
        out.extend(self.buffers()?);
        Ok(out)
    }

    /// Whether a parameter is trained (everything except [`FROZEN`]).
    pub fn is_trainable(name: &str) -> bool {
        !FROZEN.iter().any(|f| name == *f || name.starts_with(&format!("{f}.")))
    }

    /// Encoder tokens after the last block, before the final norm, as a (B, D, g, g) grid.
    /// `drop` = Some(rng) applies drop-path (training).
    fn encoder_grid(&self, imgs: &Tensor, drop: Option<&mut InitRng>) -> Result<Tensor> {
        let x = self.encoder.embed_tokens(imgs, None)?; // [B, 1 + L, D]
        let (b, n, d) = x.dims3()?;
        let mut x = x.reshape((b * n, d))?;
        let depth = self.encoder.blocks.len();
        let mut rng = drop;
        for (i, blk) in self.encoder.blocks.iter().enumerate() {
            let rate = if depth > 1 { self.cfg.drop_path * i as f64 / (depth - 1) as f64 } else { self.cfg.drop_path };
            match rng.as_deref_mut() {
                Some(r) if rate > 0.0 => {
                    // Branches back in the residual stream's dtype (f32, also under bf16 autocast).
                    let a = blk.attn.forward_rows(&blk.norm1.forward(&x)?, b, n)?.to_dtype(x.dtype())?;
                    x = (&x + drop_path(&a, b, n, rate, r)?)?;
                    let m = blk.mlp.forward(&blk.norm2.forward(&x)?)?.to_dtype(x.dtype())?;
                    x = (&x + drop_path(&m, b, n, rate, r)?)?;
                }
                _ => x = blk.forward_rows(&x, b, n)?,
            }
        }
        let g = ((n - 1) as f64).sqrt().round() as usize;
        x.reshape((b, n, d))?.narrow(1, 1, n - 1)?.transpose(1, 2)?.contiguous()?.reshape((b, d, g, g))
    }

    /// Class logits (B, K, H, W). `train`: BatchNorm batch statistics (and their running update)
    /// and drop-path drawn from `rng`.
    pub fn forward(&self, imgs: &Tensor, train: bool, rng: Option<&mut InitRng>) -> Result<Tensor> {
        let t = self.encoder_grid(imgs, if train { rng } else { None })?;
        let f4 = self.branch4.forward(&t, train)?;
        let mut skips = Vec::with_capacity(4);
        for br in &self.branches {
            let mut y = t.clone();
            for c in br {
                y = c.forward(&upsample_nearest2x(&y, false)?, train)?;
            }
            skips.push(y);
        }
        skips.push(self.stem.forward(imgs, train)?);
        let mut d = f4;
        for (blk, skip) in self.decoder.iter().zip(&skips) {
            let up = upsample_nearest2x(&d, false)?;
            d = blk.forward(&Tensor::cat(&[&up, skip], 1)?, train)?;
        }
        // Logits in f32 whatever the autocast dtype (the losses are f32).
        self.classifier.forward(&d)?.to_dtype(DType::F32)
    }

    /// Probabilities (B, K, H, W) in eval mode: sigmoid (K = 1) or softmax over classes.
    pub fn predict(&self, imgs: &Tensor) -> Result<Tensor> {
        let logits = self.forward(imgs, false, None)?;
        if self.cfg.num_classes == 1 {
            candle_nn::ops::sigmoid(&logits)
        } else {
            candle_nn::ops::softmax(&logits, 1)
        }
    }
}

/// Stochastic depth on a residual branch stored as rows (B·N, D): each image's branch is kept
/// with probability 1 − p and scaled by 1/(1 − p).
fn drop_path(x: &Tensor, b: usize, n: usize, p: f64, rng: &mut InitRng) -> Result<Tensor> {
    let keep: Vec<f32> = (0..b)
        .flat_map(|_| {
            let k = if rng.uniform() >= p { (1.0 / (1.0 - p)) as f32 } else { 0.0 };
            std::iter::repeat_n(k, n)
        })
        .collect();
    x.broadcast_mul(&Tensor::from_vec(keep, (b * n, 1), x.device())?.to_dtype(x.dtype())?)
}

/// Layer id for layer-wise LR decay (BEiT / MAE fine-tuning): 0 for the patch embed, position
/// embedding and cls token, i + 1 for block i, depth + 1 for everything after the blocks.
pub fn layer_id(name: &str, depth: usize) -> usize {
    if name.starts_with("cls_token") || name.starts_with("pos_embed") || name.starts_with("patch_embed") {
        0
    } else if let Some(rest) = name.strip_prefix("blocks.") {
        rest.split('.').next().and_then(|i| i.parse::<usize>().ok()).map_or(depth + 1, |i| i + 1)
    } else {
        depth + 1
    }
}

/// The LR multiplier of a parameter: decay^(depth + 1 − layer_id).
pub fn layer_decay_scale(name: &str, depth: usize, decay: f64) -> f64 {
    decay.powi((depth + 1 - layer_id(name, depth)) as i32)
}
