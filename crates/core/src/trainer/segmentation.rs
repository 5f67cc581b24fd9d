//! Fine-tuning the segmentation ViT ([`SegmentationViT`], VASOMIM.md §9): AdamW with layer-wise LR
//! decay, weight decay on weights only, drop-path drawn from a per-step RNG, the loss of
//! [`segmentation_loss`]. The learning-rate schedule (warm-up + cosine) is the caller's: each step takes
//! its lr.
//!
//! Targets come from the loader's maps (mask PNG / 255, nearest-resized with the image's crop
//! and flip): binary (1 class) = map > 0.5, i.e. mask pixels ≥ 128; multi-class = round(map·255)
//! as the class id, i.e. a mask PNG whose grey value *is* the class (0 = background).
//!
//! Drop-path RNG: step t draws from `InitRng::new(key(drop_seed, t))`, so the RNG state is
//! (`drop_seed`, optimizer step) — both saved with a checkpoint, a resumed run draws the same.

use candle_core::{DType, Device, Result, Tensor};

use crate::data::rng::key;
use crate::data::transforms::{normalise_into, resize_bicubic, CropBox, View};
use crate::nn::loss::segmentation_loss;
use crate::nn::segmentation::{layer_decay_scale, SegmentationConfig, SegmentationViT};
use crate::nn::InitRng;
use crate::optim::{AdamW, AdamWParams};
use crate::trainer::tune_allocator;

/// Default layer-wise LR decay (§9).
pub const LAYER_DECAY: f64 = 0.75;

/// MAE fine-tuning's weight-decay rule: none on biases, 1-D tensors (norms, BatchNorm) and the
/// position embedding / cls token (timm's `no_weight_decay()` = {pos_embed, cls_token}).
pub fn ft_decays(name: &str, rank: usize) -> bool {
    rank > 1 && !name.ends_with(".bias") && name != "cls_token" && name != "pos_embed"
}

/// Loss terms of one step (before the update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentationLoss {
    /// dice + ce.
    pub loss: f64,
    /// Soft-Dice loss term (1 − soft Dice).
    pub dice: f64,
    /// BCE-with-logits (binary) or cross-entropy (multi-class).
    pub ce: f64,
}

pub struct SegmentationTrainer {
    pub model: SegmentationViT,
    pub opt: AdamW,
    pub layer_decay: f64,
    /// Seed of the drop-path draws (see the module doc).
    pub drop_seed: u64,
}

impl SegmentationTrainer {
    /// Trains every parameter except the unused final encoder norm, with LR multipliers
    /// `layer_decay^(depth + 1 − layer_id)`.
    pub fn new(model: SegmentationViT, layer_decay: f64, drop_seed: u64) -> Result<Self> {
        tune_allocator();
        if !(layer_decay > 0.0 && layer_decay <= 1.0) {
            candle_core::bail!("layerDecay = {layer_decay} must be in (0, 1]");
        }
        let frozen: Vec<String> = crate::nn::segmentation::FROZEN
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut opt = AdamW::new(&model.params, &frozen)?;
        let depth = model.cfg.encoder.depth;
        opt.set_lr_scales(|n| layer_decay_scale(n, depth, layer_decay));
        opt.set_decays(ft_decays);
        Ok(SegmentationTrainer {
            model,
            opt,
            layer_decay,
            drop_seed,
        })
    }

    pub fn create(
        cfg: &SegmentationConfig,
        device: &Device,
        seed: u64,
        layer_decay: f64,
    ) -> Result<Self> {
        Self::new(SegmentationViT::new(cfg, device, seed)?, layer_decay, seed)
    }

    pub fn cfg(&self) -> &SegmentationConfig {
        &self.model.cfg
    }

    /// Targets from loader maps (B, 1, H, W) in [0, 1]: binary (B, 1, H, W) f32 in {0, 1} (map >
    /// 0.5) or class ids (B, H, W) u32 = round(map·255), an error naming the first id ≥ K.
    pub fn targets_from_maps(&self, maps: &Tensor) -> Result<Tensor> {
        let k = self.model.cfg.num_classes;
        let (b, c, h, w) = maps.dims4()?;
        if c != 1 {
            candle_core::bail!("maps must have 1 channel, got {c}");
        }
        if k == 1 {
            return maps.gt(0.5)?.to_dtype(DType::F32);
        }
        let v = maps.flatten_all()?.to_vec1::<f32>()?;
        let mut ids = Vec::with_capacity(v.len());
        for (i, &m) in v.iter().enumerate() {
            let id = (m * 255.0).round();
            if !(0.0..k as f32).contains(&id) {
                candle_core::bail!(
                    "mask value {id} at image {}, pixel {} is not a class id of a {k}-class model (0..{})",
                    i / (h * w),
                    i % (h * w),
                    k - 1
                );
            }
            ids.push(id as u32);
        }
        Tensor::from_vec(ids, (b, h, w), maps.device())
    }

    /// Train-mode forward (BatchNorm batch statistics, running stats updated; drop-path of the
    /// next step's draws), the loss and the gradients in the optimizer's slot order. No update.
    pub fn loss_and_grads(
        &self,
        images: &Tensor,
        targets: &Tensor,
    ) -> Result<(SegmentationLoss, Vec<Tensor>)> {
        let mut rng = InitRng::new(key(self.drop_seed, &[self.opt.step + 1]));
        let logits = self.model.forward(images, true, Some(&mut rng))?;
        let (loss, dice, ce) = segmentation_loss(&logits, targets)?;
        let grads = self.opt.collect(&loss.backward()?)?;
        let s = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        Ok((
            SegmentationLoss {
                loss: s(&loss)?,
                dice: s(&dice)?,
                ce: s(&ce)?,
            },
            grads,
        ))
    }

    /// One AdamW step (β = (0.9, 0.999), ε = 1e-8, the given lr and weight decay; per-tensor lr
    /// multipliers from the layer decay). A non-finite loss leaves everything untouched.
    pub fn train_step(
        &mut self,
        images: &Tensor,
        targets: &Tensor,
        lr: f64,
        weight_decay: f64,
    ) -> Result<SegmentationLoss> {
        let (loss, grads) = self.loss_and_grads(images, targets)?;
        if !loss.loss.is_finite() {
            candle_core::bail!("non-finite fine-tuning loss {}: step skipped", loss.loss);
        }
        self.opt.step(&grads, &adamw_params(lr, weight_decay))?;
        Ok(loss)
    }

    /// Eval-mode probabilities (B, K, H, W): sigmoid (K = 1) or softmax.
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        self.model.predict(&images.detach())?.detach().contiguous()
    }

    /// Probabilities of grey 8-bit images of any size at their own size: each image is resized
    /// to the model's input (Pillow bicubic, as the loader), normalised with `mean` / `std` (one
    /// value per input channel, the grey plane replicated), predicted in one batch, and each of
    /// the K probability maps resized back bilinearly (`align_corners = false`). Returns one
    /// class-major (K, h, w) vector per image.
    pub fn predict_grey(
        &self,
        images: &[(&[u8], usize, usize)],
        mean: &[f32],
        std: &[f32],
    ) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.model.cfg.encoder;
        let (s, c) = (cfg.img_size, cfg.in_chans);
        if mean.len() != c || std.len() != c {
            candle_core::bail!(
                "mean / std have {} / {} values, the model takes {c} channel(s)",
                mean.len(),
                std.len()
            );
        }
        let mut x = vec![0f32; images.len() * c * s * s];
        for (i, &(px, w, h)) in images.iter().enumerate() {
            if px.len() != w * h || w == 0 || h == 0 {
                candle_core::bail!("image {i}: {} pixels for {w}x{h}", px.len());
            }
            let view = View {
                pixels: px,
                stride: w,
                crop: CropBox {
                    top: 0,
                    left: 0,
                    height: h,
                    width: w,
                },
            };
            let r = resize_bicubic(view, s, s);
            normalise_into(&r, mean, std, &mut x[i * c * s * s..(i + 1) * c * s * s]);
        }
        let dev = self.model.encoder.cls_token.device().clone();
        let t = Tensor::from_vec(x, (images.len(), c, s, s), &dev)?;
        let p = self.predict(&t)?;
        let k = p.dim(1)?;
        let p = p.flatten_all()?.to_vec1::<f32>()?;
        Ok(images
            .iter()
            .enumerate()
            .map(|(i, &(_, w, h))| {
                let mut out = Vec::with_capacity(k * w * h);
                for ch in 0..k {
                    let off = (i * k + ch) * s * s;
                    out.extend(resize_bilinear(&p[off..off + s * s], s, s, w, h));
                }
                out
            })
            .collect())
    }
}

/// AdamW with the fine-tuning betas (BEiT / MAE fine-tuning: β = (0.9, 0.999), ε = 1e-8).
pub fn adamw_params(lr: f64, weight_decay: f64) -> AdamWParams {
    AdamWParams {
        lr,
        weight_decay,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    }
}

/// Bilinear resize of a (h, w) plane to (oh, ow), `F.interpolate(mode="bilinear",
/// align_corners=False)` sampling (no antialiasing): src = (o + ½)·in/out − ½ clamped at 0.
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|o| {
                let x = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
                let i0 = (x.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, (x - i0 as f64) as f32)
            })
            .collect()
    };
    let (ys, xs) = (taps(h, oh), taps(w, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let a = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
            let b = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
            out.push(a * (1.0 - fy) + b * fy);
        }
    }
    out
}
