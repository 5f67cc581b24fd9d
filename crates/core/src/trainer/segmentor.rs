//! Training the UNeXt-S segmentor on (image, vessel map) pairs (METHOD.md §4): loss
//! 0.5·BCE-with-logits + 0.5·(1 − soft Dice) with a batch-global Dice, Adam (= AdamW without
//! weight decay, β = (0.9, 0.999), ε = 1e-8). The learning-rate schedule (poly decay) is the
//! caller's: each step takes its lr.
//!
//! Input rules of UNeXt-S ([`image_dims`], [`SegmentorTrainer::batch_of`], [`check_masks`],
//! [`check_lr`]) are checked here, with errors that name the offending field.

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::segmentor::{self as ckpt, SegmentorLoadReport};
use crate::data::Batch;
use crate::device::Precision;
use crate::nn::kernels::host::Autocast;
use crate::nn::loss::segmentor_loss;
use crate::nn::unext::{UNext, UNextConfig};
use crate::optim::{AdamW, AdamWParams};
use crate::trainer::tune_allocator;

/// Adam with PyTorch's defaults at learning rate `lr`.
pub fn adam_params(lr: f64) -> AdamWParams {
    AdamWParams { lr, weight_decay: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
}

/// Loss terms of one step (before the update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentorLoss {
    pub loss: f64,
    pub bce: f64,
    /// Soft Dice coefficient; loss = 0.5·bce + 0.5·(1 − dice).
    pub dice: f64,
}

/// The segmentor's configuration as JS spells it (`{ inChans }`): the checkpoint metadata keeps
/// [`UNextConfig`]'s own snake_case names, so the camelCase shape is a serde remote definition.
#[derive(Serialize, Deserialize)]
#[serde(remote = "UNextConfig", rename_all = "camelCase", deny_unknown_fields)]
pub struct UNextConfigJs {
    pub in_chans: usize,
}

/// [`UNextConfig`] from its camelCase JSON, checked (1 or 3 input channels).
pub fn config_from_json(v: serde_json::Value) -> Result<UNextConfig> {
    let cfg = UNextConfigJs::deserialize(v).map_err(|e| candle_core::Error::msg(format!("segmentor config: {e}")))?;
    if cfg.in_chans != 1 && cfg.in_chans != 3 {
        candle_core::bail!("inChans must be 1 or 3, got {}", cfg.in_chans);
    }
    Ok(cfg)
}

/// [`UNextConfig`] as camelCase JSON.
pub fn config_to_json(cfg: &UNextConfig) -> serde_json::Value {
    UNextConfigJs::serialize(cfg, serde_json::value::Serializer).expect("a config serialises")
}

/// Height and width of a batch: `size` × `size`, or `size` (height) × `width`; UNeXt-S halves
/// them five times, so both must be positive multiples of 32.
pub fn image_dims(size: usize, width: Option<usize>) -> Result<(usize, usize)> {
    let (h, w) = (size, width.unwrap_or(size));
    if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 {
        candle_core::bail!("image size {h}x{w}: height and width must be positive multiples of 32");
    }
    Ok((h, w))
}

/// Masks (B, 1, H, W) must have B·H·W values in [0, 1].
pub fn check_masks(masks: &[f32], b: usize, h: usize, w: usize) -> Result<()> {
    if masks.len() != b * h * w {
        candle_core::bail!("masks has {} values, expected B*1*H*W = {b}*1*{h}*{w} = {}", masks.len(), b * h * w);
    }
    if let Some(i) = masks.iter().position(|v| !(0.0..=1.0).contains(v)) {
        candle_core::bail!("masks[{i}] = {} is outside [0, 1] (vessel maps are 0/1)", masks[i]);
    }
    Ok(())
}

pub fn check_lr(lr: f64) -> Result<()> {
    if !lr.is_finite() || lr < 0.0 {
        candle_core::bail!("lr ({lr}) must be finite and >= 0");
    }
    Ok(())
}

/// UNeXt-S, its Adam state, the step counter and the device.
pub struct SegmentorTrainer {
    pub model: UNext,
    pub opt: AdamW,
    /// Optimizer steps taken in this lineage (saved with checkpoints).
    pub step: u64,
    device: Device,
    precision: Precision,
}

impl SegmentorTrainer {
    pub fn new(model: UNext) -> Result<Self> {
        tune_allocator();
        let opt = AdamW::new(&model.params, &[])?;
        let device = model.params.entries[0].1.device().clone();
        Ok(SegmentorTrainer { model, opt, step: 0, device, precision: Precision::F32 })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute in `p` from now on; weights and optimizer stay f32.
    pub fn set_precision(&mut self, p: Precision) {
        p.activate();
        self.precision = p;
    }

    pub fn create(cfg: &UNextConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::new(UNext::new(cfg, device, seed)?)
    }

    /// Load our safetensors or a PyTorch state dict (see [`ckpt::load`]) onto `device`, with
    /// the Adam moments and step when the file has them.
    pub fn load(path: &Path, device: &Device, strict: bool) -> Result<(Self, SegmentorLoadReport)> {
        let l = ckpt::load(path, device, strict)?;
        let mut t = Self::new(l.model)?;
        if let Some((state, s)) = &l.optimizer {
            t.opt.load_state(state, *s).map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))?;
        }
        t.step = l.step;
        Ok((t, l.report))
    }

    /// Save weights, BatchNorm running stats, config, step and (with `with_optimizer`) the Adam
    /// moments, atomically.
    pub fn save(&self, path: &Path, with_optimizer: bool) -> Result<()> {
        ckpt::save(path, &self.model, with_optimizer.then_some(&self.opt), self.step)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))
    }

    pub fn cfg(&self) -> &UNextConfig {
        &self.model.cfg
    }

    /// Batch size of flat images (B, C, H, W), or an error naming the expected layout.
    pub fn batch_of(&self, images: &[f32], h: usize, w: usize) -> Result<usize> {
        let c = self.model.cfg.in_chans;
        let per = c * h * w;
        if images.is_empty() || !images.len().is_multiple_of(per) {
            candle_core::bail!(
                "images has {} values, not a positive multiple of C*H*W = {c}*{h}*{w} = {per}",
                images.len()
            );
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            candle_core::bail!("images[{i}] is not finite");
        }
        Ok(images.len() / per)
    }

    /// A loader batch must have vessel maps and the segmentor's channels; its side must suit
    /// UNeXt-S. Returns (H, W).
    pub fn check_loader_batch(&self, b: &Batch) -> Result<(usize, usize)> {
        if b.maps.is_none() {
            candle_core::bail!("the batch has no vessel maps (the loader needs a maps folder)");
        }
        if b.channels != self.model.cfg.in_chans {
            candle_core::bail!(
                "the batch has {} channels, the segmentor takes {}",
                b.channels,
                self.model.cfg.in_chans
            );
        }
        image_dims(b.size, None)
    }

    fn tensors(&self, images: &[f32], masks: &[f32], h: usize, w: usize) -> Result<(Tensor, Tensor)> {
        let b = self.batch_of(images, h, w)?;
        check_masks(masks, b, h, w)?;
        let c = self.model.cfg.in_chans;
        Ok((
            Tensor::from_slice(images, (b, c, h, w), &self.device)?,
            Tensor::from_slice(masks, (b, 1, h, w), &self.device)?,
        ))
    }

    /// One step on flat images (B, C, H, W, normalised) and masks (B, 1, H, W, in {0, 1}).
    pub fn step_arrays(
        &mut self,
        images: &[f32],
        masks: &[f32],
        (h, w): (usize, usize),
        lr: f64,
    ) -> Result<SegmentorLoss> {
        check_lr(lr)?;
        let (x, y) = self.tensors(images, masks, h, w)?;
        self.train_step(&x, &y, lr)
    }

    /// One step on a loader batch: its images and vessel maps.
    pub fn step_batch(&mut self, batch: &Batch, lr: f64) -> Result<SegmentorLoss> {
        let hw = self.check_loader_batch(batch)?;
        let maps = batch.maps.as_deref().unwrap_or_default();
        self.step_arrays(&batch.images, maps, hw, lr)
    }

    /// Eval-mode vessel probabilities (B, 1, H, W) of flat images (B, C, H, W), flat.
    pub fn predict_arrays(&self, images: &[f32], (h, w): (usize, usize)) -> Result<Vec<f32>> {
        let b = self.batch_of(images, h, w)?;
        let x = Tensor::from_slice(images, (b, self.model.cfg.in_chans, h, w), &self.device)?;
        self.predict(&x)?.flatten_all()?.to_vec1::<f32>()
    }

    /// Train-mode forward (updates the BatchNorm running stats), loss and gradients in the
    /// optimizer's slot order, without updating the weights.
    pub fn loss_and_grads(&self, images: &Tensor, masks: &Tensor) -> Result<(SegmentorLoss, Vec<Tensor>)> {
        let _ac = Autocast::enter(self.precision.autocast());
        let logits = self.model.forward(images, true)?;
        let l = segmentor_loss(&logits, masks)?;
        let grads = self.opt.collect(&l.loss.backward()?)?;
        let s = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        Ok((SegmentorLoss { loss: s(&l.loss)?, bce: s(&l.bce)?, dice: s(&l.dice)? }, grads))
    }

    /// One Adam step at learning rate `lr` on images (B, C, H, W) and masks (B, 1, H, W).
    pub fn train_step(&mut self, images: &Tensor, masks: &Tensor, lr: f64) -> Result<SegmentorLoss> {
        let (loss, grads) = self.loss_and_grads(images, masks)?;
        if !loss.loss.is_finite() {
            candle_core::bail!("non-finite segmentation loss {}: step skipped", loss.loss);
        }
        self.opt.step(&grads, &adam_params(lr))?;
        self.step += 1;
        Ok(loss)
    }

    /// Eval-mode vessel probabilities (B, 1, H, W).
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        let _ac = Autocast::enter(self.precision.autocast());
        self.model.predict(&images.detach())?.detach().contiguous()
    }
}
