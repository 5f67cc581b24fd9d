//! Training the UNeXt-S segmentor on (image, vessel map) pairs (method notes §4): loss
//! 0.5·BCE-with-logits + 0.5·(1 − soft Dice) with a batch-global Dice, Adam (= AdamW without
//! weight decay, β = (0.9, 0.999), ε = 1e-8). The learning-rate schedule (poly decay) is the
//! caller's: each step takes its lr.

use candle_core::{Device, Result, Tensor};

use crate::nn::mae::bce_with_logits;
use crate::nn::unext::{UNext, UNextConfig};
use crate::optim::{AdamW, AdamWParams};
use crate::train::tune_allocator;

/// Smoothing of the batch-global soft Dice.
pub const DICE_SMOOTH: f64 = 1e-5;

/// Adam with PyTorch's defaults at learning rate `lr`.
pub fn adam_params(lr: f64) -> AdamWParams {
    AdamWParams {
        lr,
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    }
}

/// Soft Dice coefficient over the whole batch: (2Σpy + s)/(Σp + Σy + s), p = sigmoid(logit),
/// s = 1e-5 (one sum over every pixel of every image, not a per-image mean).
pub fn soft_dice_global(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    let inter = (&p * targets)?.sum_all()?;
    let denom = (p.sum_all()? + targets.sum_all()?)?;
    ((inter * 2.0)? + DICE_SMOOTH)?.div(&(denom + DICE_SMOOTH)?)
}

/// The three scalars of the segmentation loss (graph tensors).
pub struct SegLossTensors {
    /// 0.5·bce + 0.5·(1 − dice).
    pub loss: Tensor,
    pub bce: Tensor,
    /// Soft Dice coefficient (higher is better).
    pub dice: Tensor,
}

pub fn seg_loss(logits: &Tensor, targets: &Tensor) -> Result<SegLossTensors> {
    if logits.dims() != targets.dims() {
        candle_core::bail!(
            "segmentation loss: logits {:?} and targets {:?} differ in shape",
            logits.dims(),
            targets.dims()
        );
    }
    let bce = bce_with_logits(logits, targets)?;
    let dice = soft_dice_global(logits, targets)?;
    let loss = ((&bce * 0.5)? + ((1.0 - &dice)? * 0.5)?)?;
    Ok(SegLossTensors { loss, bce, dice })
}

/// Loss terms of one step (before the update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegLoss {
    pub loss: f64,
    pub bce: f64,
    /// Soft Dice coefficient; loss = 0.5·bce + 0.5·(1 − dice).
    pub dice: f64,
}

pub struct SegTrainer {
    pub model: UNext,
    pub opt: AdamW,
}

impl SegTrainer {
    pub fn new(model: UNext) -> Result<Self> {
        tune_allocator();
        let opt = AdamW::new(&model.params, &[])?;
        Ok(SegTrainer { model, opt })
    }

    pub fn create(cfg: &UNextConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::new(UNext::new(cfg, device, seed)?)
    }

    /// Train-mode forward (updates the BatchNorm running stats), loss and gradients in the
    /// optimizer's slot order, without updating the weights.
    pub fn loss_and_grads(
        &self,
        images: &Tensor,
        masks: &Tensor,
    ) -> Result<(SegLoss, Vec<Tensor>)> {
        let logits = self.model.forward(images, true)?;
        let l = seg_loss(&logits, masks)?;
        let grads = self.opt.collect(&l.loss.backward()?)?;
        let s = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        Ok((
            SegLoss {
                loss: s(&l.loss)?,
                bce: s(&l.bce)?,
                dice: s(&l.dice)?,
            },
            grads,
        ))
    }

    /// One Adam step at learning rate `lr` on images (B, C, H, W) and masks (B, 1, H, W).
    pub fn train_step(&mut self, images: &Tensor, masks: &Tensor, lr: f64) -> Result<SegLoss> {
        let (loss, grads) = self.loss_and_grads(images, masks)?;
        if !loss.loss.is_finite() {
            candle_core::bail!("non-finite segmentation loss {}: step skipped", loss.loss);
        }
        self.opt.step(&grads, &adam_params(lr))?;
        Ok(loss)
    }

    /// Eval-mode vessel probabilities (B, 1, H, W).
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        self.model.predict(&images.detach())?.detach().contiguous()
    }
}
