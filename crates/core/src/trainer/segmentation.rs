//! Fine-tuning the segmentation ViT ([`SegmentationViT`], METHOD.md §9): AdamW with layer-wise LR
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
//!
//! [`SegmentationTrainer::from_pretrained`] builds a model whose encoder comes from a
//! pre-trained checkpoint; the `*_arrays` / `step_batch` methods check flat inputs and loader
//! batches against the model, with errors that name the field.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use serde::Deserialize;

use crate::checkpoint::{segmentation as ckpt, LoadOptions, LoadReport};
use crate::data::rng::key;
use crate::data::transforms::{normalise_into, resize_bicubic, CropBox, View};
use crate::data::Batch;
use crate::device::Precision;
use crate::nn::kernels::host::Autocast;
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

/// Fine-tuning from a pre-trained checkpoint: the head's settings; the encoder's shape comes
/// from the file. camelCase in JSON; `layerDecay` defaults to [`LAYER_DECAY`].
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PretrainedInit {
    pub num_classes: usize,
    pub head_scale: f64,
    pub drop_path: f64,
    /// Input side (the position embedding is resampled when it differs from the file's).
    pub img_size: Option<usize>,
    /// Input channels (the patch embedding is adapted 3 ↔ 1 when they differ).
    pub in_chans: Option<usize>,
    /// Preset name for a bare file whose shapes do not name one.
    pub preset: Option<String>,
    #[serde(default = "layer_decay_default")]
    pub layer_decay: f64,
}

fn layer_decay_default() -> f64 {
    LAYER_DECAY
}

pub struct SegmentationTrainer {
    pub model: SegmentationViT,
    pub opt: AdamW,
    /// Optimizer steps taken in this lineage (saved with checkpoints).
    pub step: u64,
    pub layer_decay: f64,
    /// Seed of the drop-path draws (see the module doc).
    pub drop_seed: u64,
    precision: Precision,
}

impl SegmentationTrainer {
    /// Trains every parameter except the unused final encoder norm, with LR multipliers
    /// `layer_decay^(depth + 1 − layer_id)`.
    pub fn new(model: SegmentationViT, layer_decay: f64, drop_seed: u64) -> Result<Self> {
        tune_allocator();
        if !(layer_decay > 0.0 && layer_decay <= 1.0) {
            candle_core::bail!("layerDecay = {layer_decay} must be in (0, 1]");
        }
        let frozen: Vec<String> = crate::nn::segmentation::FROZEN.iter().map(|s| s.to_string()).collect();
        let mut opt = AdamW::new(&model.params, &frozen)?;
        let depth = model.cfg.encoder.depth;
        opt.set_lr_scales(|n| layer_decay_scale(n, depth, layer_decay));
        opt.set_decays(ft_decays);
        Ok(SegmentationTrainer { model, opt, step: 0, layer_decay, drop_seed, precision: Precision::F32 })
    }

    /// Compute in `p` from now on; weights and optimizer stay f32.
    pub fn set_precision(&mut self, p: Precision) {
        p.activate();
        self.precision = p;
    }

    pub fn create(cfg: &SegmentationConfig, device: &Device, seed: u64, layer_decay: f64) -> Result<Self> {
        Self::new(SegmentationViT::new(cfg, device, seed)?, layer_decay, seed)
    }

    /// A new model on `device` whose encoder is read from a pre-trained checkpoint (ours,
    /// `encoder.safetensors` of pre-training, MAE `.pth`, timm safetensors); the head is
    /// initialised from `seed`. Errors name the file.
    pub fn from_pretrained(
        path: &Path,
        init: &PretrainedInit,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let p = path.display().to_string();
        let named = |e: candle_core::Error| {
            let m = e.to_string();
            candle_core::Error::msg(if m.contains(&p) { m } else { format!("{p}: {m}") })
        };
        let opts = LoadOptions { preset: init.preset.clone(), img_size: init.img_size, in_chans: init.in_chans };
        let encoder = ckpt::encoder_config(path, &opts).map_err(named)?;
        let cfg = SegmentationConfig {
            encoder,
            num_classes: init.num_classes,
            head_scale: init.head_scale,
            drop_path: init.drop_path,
        };
        cfg.validate().map_err(|e| candle_core::Error::msg(format!("{p}: {e}")))?;
        let mut model = SegmentationViT::new(&cfg, device, seed)?;
        let report = ckpt::init_encoder(&mut model, path, init.preset.as_deref()).map_err(named)?;
        Ok((Self::new(model, init.layer_decay, seed)?, report))
    }

    /// Load a fine-tuned model saved by [`SegmentationTrainer::save`] onto `device`; returns
    /// the caller's `extra` JSON with it.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, Option<String>)> {
        let l = ckpt::load(path, device)?;
        Ok((l.tuner, l.extra))
    }

    /// Save weights, BatchNorm buffers, AdamW state, config, step and `extra` atomically.
    pub fn save(&self, path: &Path, extra: Option<&str>) -> Result<()> {
        ckpt::save(path, self, self.step, extra)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))
    }

    pub fn device(&self) -> &Device {
        self.model.encoder.cls_token.device()
    }

    /// Batch size of flat normalised images (B, C, S, S), or an error naming the layout.
    pub fn batch_of(&self, images: &[f32]) -> Result<usize> {
        let e = &self.model.cfg.encoder;
        let per = e.in_chans * e.img_size * e.img_size;
        if images.is_empty() || !images.len().is_multiple_of(per) {
            candle_core::bail!(
                "images has {} values, not a positive multiple of C*S*S = {}*{}*{} = {per}",
                images.len(),
                e.in_chans,
                e.img_size,
                e.img_size
            );
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            candle_core::bail!("images[{i}] is not finite");
        }
        Ok(images.len() / per)
    }

    /// Maps (B, 1, S, S) must have B·S·S values in [0, 1].
    pub fn check_maps(&self, maps: &[f32], b: usize) -> Result<()> {
        let s = self.model.cfg.encoder.img_size;
        if maps.len() != b * s * s {
            candle_core::bail!("maps has {} values, expected B*1*S*S = {b}*1*{s}*{s}", maps.len());
        }
        if let Some(i) = maps.iter().position(|v| !(0.0..=1.0).contains(v)) {
            candle_core::bail!("maps[{i}] = {} is outside [0, 1]", maps[i]);
        }
        Ok(())
    }

    /// A loader batch must have masks and the model's channels and input side.
    pub fn check_loader_batch(&self, b: &Batch) -> Result<()> {
        if b.maps.is_none() {
            candle_core::bail!("the batch has no masks (the loader needs a map for every sample)");
        }
        let e = &self.model.cfg.encoder;
        if b.channels != e.in_chans || b.size != e.img_size {
            candle_core::bail!(
                "the batch is {} channel(s) at {}², the model takes {} at {}²",
                b.channels,
                b.size,
                e.in_chans,
                e.img_size
            );
        }
        Ok(())
    }

    fn images(&self, images: &[f32]) -> Result<Tensor> {
        let b = self.batch_of(images)?;
        let e = &self.model.cfg.encoder;
        Tensor::from_slice(images, (b, e.in_chans, e.img_size, e.img_size), self.device())
    }

    /// One step on flat arrays: images (B, C, S, S) normalised, maps (B, 1, S, S) in [0, 1]
    /// (mask / 255); targets as [`SegmentationTrainer::targets_from_maps`].
    pub fn step_arrays(
        &mut self,
        images: &[f32],
        maps: &[f32],
        lr: f64,
        weight_decay: f64,
    ) -> Result<SegmentationLoss> {
        check_step_options(lr, weight_decay)?;
        let x = self.images(images)?;
        let b = x.dim(0)?;
        self.check_maps(maps, b)?;
        let s = self.model.cfg.encoder.img_size;
        let m = Tensor::from_slice(maps, (b, 1, s, s), self.device())?;
        let t = self.targets_from_maps(&m)?;
        self.train_step(&x, &t, lr, weight_decay)
    }

    /// One step on a loader batch: its images and maps.
    pub fn step_batch(&mut self, batch: &Batch, lr: f64, weight_decay: f64) -> Result<SegmentationLoss> {
        self.check_loader_batch(batch)?;
        let maps = batch.maps.as_deref().unwrap_or_default();
        self.step_arrays(&batch.images, maps, lr, weight_decay)
    }

    /// Eval-mode probabilities (B, K, S, S) of flat normalised images (B, C, S, S), flat.
    pub fn predict_arrays(&self, images: &[f32]) -> Result<Vec<f32>> {
        self.predict(&self.images(images)?)?.flatten_all()?.to_vec1::<f32>()
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
    pub fn loss_and_grads(&self, images: &Tensor, targets: &Tensor) -> Result<(SegmentationLoss, Vec<Tensor>)> {
        let _ac = Autocast::enter(self.precision.autocast());
        let mut rng = InitRng::new(key(self.drop_seed, &[self.opt.step + 1]));
        let logits = self.model.forward(images, true, Some(&mut rng))?;
        let (loss, dice, ce) = segmentation_loss(&logits, targets)?;
        let grads = self.opt.collect(&loss.backward()?)?;
        let s = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        Ok((SegmentationLoss { loss: s(&loss)?, dice: s(&dice)?, ce: s(&ce)? }, grads))
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
        self.step += 1;
        Ok(loss)
    }

    /// Eval-mode probabilities (B, K, H, W): sigmoid (K = 1) or softmax.
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        let _ac = Autocast::enter(self.precision.autocast());
        self.model.predict(&images.detach())?.detach().contiguous()
    }

    /// Probabilities of grey 8-bit images of any size at their own size: each image is resized
    /// to the model's input (Pillow bicubic, as the loader), normalised with `mean` / `std` (one
    /// value per input channel, the grey plane replicated), predicted in one batch, and each of
    /// the K probability maps resized back bilinearly (`align_corners = false`). Returns one
    /// class-major (K, h, w) vector per image.
    pub fn predict_grey(&self, images: &[(&[u8], usize, usize)], mean: &[f32], std: &[f32]) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.model.cfg.encoder;
        let (s, c) = (cfg.img_size, cfg.in_chans);
        if mean.len() != c || std.len() != c || std.iter().any(|v| v.is_nan() || *v <= 0.0) {
            candle_core::bail!(
                "mean / std have {} / {} values, the model takes {c} channel(s) (std > 0)",
                mean.len(),
                std.len()
            );
        }
        let mut x = vec![0f32; images.len() * c * s * s];
        for (i, &(px, w, h)) in images.iter().enumerate() {
            if px.len() != w * h || w == 0 || h == 0 {
                candle_core::bail!("image {i}: {} pixels for {w}x{h}", px.len());
            }
            let view = View { pixels: px, stride: w, crop: CropBox { top: 0, left: 0, height: h, width: w } };
            let r = resize_bicubic(view, s, s);
            normalise_into(&r, mean, std, &mut x[i * c * s * s..(i + 1) * c * s * s]);
        }
        let t = Tensor::from_vec(x, (images.len(), c, s, s), self.device())?;
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

/// The learning rate and weight decay of a step must be finite and >= 0.
pub fn check_step_options(lr: f64, weight_decay: f64) -> Result<()> {
    if let Some((name, v)) =
        [("lr", lr), ("weightDecay", weight_decay)].into_iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0))
    {
        candle_core::bail!("{name} ({v}) must be finite and >= 0");
    }
    Ok(())
}

/// AdamW with the fine-tuning betas (BEiT / MAE fine-tuning: β = (0.9, 0.999), ε = 1e-8).
pub fn adamw_params(lr: f64, weight_decay: f64) -> AdamWParams {
    AdamWParams { lr, weight_decay, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
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
