//! Every loss of the project, as differentiable candle compositions (gradients by autograd):
//!
//! - pre-training: [`norm_pix`] targets and [`masked_patch_mse`] (L_rec), [`bce_with_logits`]
//!   (L_cons; METHOD.md §7);
//! - the UNeXt-S segmentor: [`segmentor_loss`] = 0.5·BCE + 0.5·(1 − batch-global soft Dice);
//! - downstream segmentation: [`segmentation_loss`] = soft Dice + BCE (binary) or + CE (classes).

use candle_core::{Result, Tensor, D};

/// Normalisation epsilon of the norm-pix target: (T − μ)/sqrt(σ² + 1e-6).
pub const NORM_PIX_EPS: f64 = 1e-6;

/// Smoothing of the batch-global soft Dice.
pub const DICE_SMOOTH: f64 = 1e-5;

/// Per-patch normalisation of a (B, L, P) target with the unbiased variance: returns
/// ((T − μ)/σ, μ, σ) with σ = sqrt(var + 1e-6).
pub fn norm_pix(t: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let n = t.dim(D::Minus1)?;
    let mean = t.mean_keepdim(D::Minus1)?;
    let centred = t.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / (n as f64 - 1.0))?;
    let std = (var + NORM_PIX_EPS)?.sqrt()?;
    Ok((centred.broadcast_div(&std)?, mean, std))
}

/// Mean binary cross-entropy with logits over all elements, in the overflow-free form
/// max(x, 0) − x·t + log(1 + exp(−|x|)) (as `F.binary_cross_entropy_with_logits`); one fused
/// op on the CPU (`kernels::loss`), this composite elsewhere.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if let Some(fused) = super::kernels::loss::bce_with_logits(logits, targets) {
        return fused;
    }
    let l = ((logits.relu()? - (logits * targets)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    l.mean_all()
}

/// Soft Dice loss on sigmoid probabilities, per image then averaged over the batch:
/// 1 − (2Σpt + s)/(Σp + Σt + s) with smoothing s = 1 (empty/empty scores 0 loss).
pub fn soft_dice_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let b = logits.dim(0)?;
    let p = candle_nn::ops::sigmoid(logits)?.reshape((b, ()))?;
    let t = targets.reshape((b, ()))?;
    let inter = (&p * &t)?.sum(1)?;
    let denom = (p.sum(1)? + t.sum(1)?)?;
    let dice = ((inter * 2.0)? + 1.0)?.div(&(denom + 1.0)?)?;
    (1.0 - dice)?.mean_all()
}

/// MAE's `forward_loss` reduction: the mean squared error of each patch, averaged over the
/// patches where `mask` (B, L) is 1.
pub fn masked_patch_mse(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let per_patch = (pred - target)?.sqr()?.mean(D::Minus1)?; // [B, L]
    (per_patch * mask)?.sum_all()?.div(&mask.sum_all()?)
}

/// Soft Dice coefficient over the whole batch: (2Σpy + s)/(Σp + Σy + s), p = sigmoid(logit),
/// s = 1e-5 (one sum over every pixel of every image, not a per-image mean).
pub fn soft_dice_global(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    let inter = (&p * targets)?.sum_all()?;
    let denom = (p.sum_all()? + targets.sum_all()?)?;
    ((inter * 2.0)? + DICE_SMOOTH)?.div(&(denom + DICE_SMOOTH)?)
}

/// The three scalars of the segmentor loss (graph tensors).
pub struct SegmentorLossTensors {
    /// 0.5·bce + 0.5·(1 − dice).
    pub loss: Tensor,
    pub bce: Tensor,
    /// Soft Dice coefficient (higher is better).
    pub dice: Tensor,
}

pub fn segmentor_loss(logits: &Tensor, targets: &Tensor) -> Result<SegmentorLossTensors> {
    if logits.dims() != targets.dims() {
        candle_core::bail!(
            "segmentor loss: logits {:?} and targets {:?} differ in shape",
            logits.dims(),
            targets.dims()
        );
    }
    let bce = bce_with_logits(logits, targets)?;
    let dice = soft_dice_global(logits, targets)?;
    let loss = ((&bce * 0.5)? + ((1.0 - &dice)? * 0.5)?)?;
    Ok(SegmentorLossTensors { loss, bce, dice })
}

/// Segmentation loss: soft Dice + BCE-with-logits (binary, `targets` (B, 1, H, W) in {0, 1}) or
/// soft Dice over the foreground classes + cross-entropy (multi-class, `targets` (B, H, W) u32
/// class ids). Returns (total, dice term, bce/ce term).
pub fn segmentation_loss(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, k, h, w) = logits.dims4()?;
    if k == 1 {
        if targets.dims() != logits.dims() {
            candle_core::bail!(
                "segmentation loss: binary targets {:?} must have the logits' shape {:?}",
                targets.dims(),
                logits.dims()
            );
        }
        let bce = bce_with_logits(logits, targets)?;
        let dice = soft_dice_loss(logits, targets)?;
        return Ok(((&dice + &bce)?, dice, bce));
    }
    if targets.dims() != [b, h, w] || targets.dtype() != candle_core::DType::U32 {
        candle_core::bail!(
            "segmentation loss: class targets must be u32 (B, H, W) = {:?}, got {:?} {:?}",
            [b, h, w],
            targets.dtype(),
            targets.dims()
        );
    }
    // log-softmax over classes, composed from differentiable primitives.
    let m = logits.max_keepdim(1)?.detach();
    let z = logits.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(1)?.log()?;
    let logp = z.broadcast_sub(&lse)?; // [B, K, H, W]
    let one_hot = targets
        .unsqueeze(1)?
        .broadcast_as((b, k, h, w))?
        .eq(&Tensor::arange(0u32, k as u32, logits.device())?.reshape((1, k, 1, 1))?.broadcast_as((b, k, h, w))?)?
        .to_dtype(logits.dtype())?;
    let ce = (logp.mul(&one_hot)?.sum(1)?.mean_all()? * -1.0)?;
    // soft Dice per image and foreground class, smoothing 1, averaged
    let p = logp.exp()?.narrow(1, 1, k - 1)?.reshape((b, k - 1, h * w))?;
    let t = one_hot.narrow(1, 1, k - 1)?.reshape((b, k - 1, h * w))?;
    let inter = (&p * &t)?.sum(D::Minus1)?;
    let denom = (p.sum(D::Minus1)? + t.sum(D::Minus1)?)?;
    let dice = (1.0 - (((inter * 2.0)? + 1.0)? / (denom + 1.0)?)?)?.mean_all()?;
    Ok(((&dice + &ce)?, dice, ce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bce_and_dice_known_values() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.0f32, 2.0], [-3.0, 100.0]], &dev).unwrap();
        let t = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let bce = bce_with_logits(&x, &t).unwrap().to_scalar::<f32>().unwrap();
        let expect = (2f64.ln() + (1.0 + 2f64.exp()).ln() + (1.0 + (-3f64).exp()).ln() + 0.0) / 4.0;
        assert!((bce as f64 - expect).abs() < 1e-6, "{bce} vs {expect}");
        let dice = soft_dice_loss(&x, &t).unwrap().to_scalar::<f32>().unwrap();
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let d0 = 1.0 - (2.0 * s(0.0) + 1.0) / (s(0.0) + s(2.0) + 1.0 + 1.0);
        let d1 = 1.0 - (2.0 * s(100.0) + 1.0) / (s(-3.0) + s(100.0) + 1.0 + 1.0);
        assert!((dice as f64 - (d0 + d1) / 2.0).abs() < 1e-6);
    }
}
