//! Training the UNeXt-S segmentor on (image, vessel map) pairs (method notes §4): loss
//! 0.5·BCE-with-logits + 0.5·(1 − soft Dice) with a batch-global Dice, Adam (= AdamW without
//! weight decay, β = (0.9, 0.999), ε = 1e-8). The learning-rate schedule (poly decay) is the
//! caller's: each step takes its lr.

use candle_core::{Device, Result, Tensor};

use crate::nn::loss::segmentor_loss;
use crate::nn::unext::{UNext, UNextConfig};
use crate::optim::{AdamW, AdamWParams};
use crate::trainer::tune_allocator;

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

/// Loss terms of one step (before the update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentorLoss {
    pub loss: f64,
    pub bce: f64,
    /// Soft Dice coefficient; loss = 0.5·bce + 0.5·(1 − dice).
    pub dice: f64,
}

pub struct SegmentorTrainer {
    pub model: UNext,
    pub opt: AdamW,
}

impl SegmentorTrainer {
    pub fn new(model: UNext) -> Result<Self> {
        tune_allocator();
        let opt = AdamW::new(&model.params, &[])?;
        Ok(SegmentorTrainer { model, opt })
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
    ) -> Result<(SegmentorLoss, Vec<Tensor>)> {
        let logits = self.model.forward(images, true)?;
        let l = segmentor_loss(&logits, masks)?;
        let grads = self.opt.collect(&l.loss.backward()?)?;
        let s = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        Ok((
            SegmentorLoss {
                loss: s(&l.loss)?,
                bce: s(&l.bce)?,
                dice: s(&l.dice)?,
            },
            grads,
        ))
    }

    /// One Adam step at learning rate `lr` on images (B, C, H, W) and masks (B, 1, H, W).
    pub fn train_step(
        &mut self,
        images: &Tensor,
        masks: &Tensor,
        lr: f64,
    ) -> Result<SegmentorLoss> {
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
