//! The VasoMIM parts of a pre-training step (VASOMIM.md §1, §5, §7) around the MAE:
//!
//! 1. [`guidance`]: P = σ(S(img)) from the frozen segmentor (no gradient), the co-guidance map
//!    G = η·B + (1 − η)·P and its per-patch mass, which the TypeScript masking policy samples from.
//! 2. [`PretrainTrainer::pretrain_step`]: encoder on the kept patches, L_rec, the de-normalised
//!    reconstruction, L_cons = BCE-with-logits(S(recon), stop_grad(P)) with gradients flowing
//!    *through* the frozen segmentor into the MAE, total L = L_rec + w·L_cons, AdamW.
//!
//! The segmentor enters through the [`VesselSegmentor`] trait so that this file needs nothing of
//! its architecture (UNeXt-S lives in `nn::unext`).

use candle_core::{Device, Result, Tensor};

use crate::nn::loss::bce_with_logits;
use crate::nn::mae::{MaskedAutoencoder, Masking};
use crate::nn::presets::MaeConfig;
use crate::optim::{clip_grad_norm, global_norm, AdamW, AdamWParams};

use super::tune_allocator;

#[derive(Clone, Debug)]
pub struct StepParams {
    pub adamw: AdamWParams,
    /// Clip the global gradient norm to this value (MAE pre-training uses none).
    pub clip_grad: Option<f64>,
    /// Split the batch into this many micro-batches and accumulate their gradients: the update
    /// equals the full batch's, with less activation memory.
    pub micro_batches: usize,
}

impl Default for StepParams {
    fn default() -> Self {
        StepParams {
            adamw: AdamWParams::default(),
            clip_grad: None,
            micro_batches: 1,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Norm-pix reconstruction loss of the whole batch (before the update).
    pub loss_rec: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

pub struct PretrainTrainer {
    pub model: MaskedAutoencoder,
    pub opt: AdamW,
}

impl PretrainTrainer {
    pub fn new(model: MaskedAutoencoder, frozen: &[String]) -> Result<Self> {
        tune_allocator();
        let opt = AdamW::new(&model.params, frozen)?;
        Ok(PretrainTrainer { model, opt })
    }

    pub fn create(cfg: &MaeConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::new(MaskedAutoencoder::new(cfg, device, seed)?, &[])
    }

    /// Loss and summed gradients (slot order) without updating, over `micro_batches` chunks.
    /// Each chunk's loss is weighted by its share of the masked patches, so the sum equals the
    /// full-batch loss Σ mask·ℓ / Σ mask exactly (the MAE case of
    /// [`PretrainTrainer::pretrain_loss_and_grads`]).
    pub fn loss_and_grads(
        &self,
        imgs: &Tensor,
        m: &Masking,
        micro_batches: usize,
    ) -> Result<(f64, Vec<Tensor>)> {
        let (st, grads) = self.pretrain_loss_and_grads(imgs, m, None, micro_batches)?;
        Ok((st.loss_rec, grads))
    }

    pub fn train_step(&mut self, imgs: &Tensor, m: &Masking, p: &StepParams) -> Result<StepStats> {
        let (loss_rec, mut grads) = self.loss_and_grads(imgs, m, p.micro_batches)?;
        let grad_norm = match p.clip_grad {
            Some(c) => clip_grad_norm(&mut grads, c)?,
            None => global_norm(&grads)?,
        };
        if !loss_rec.is_finite() || !grad_norm.is_finite() {
            candle_core::bail!(
                "non-finite loss {loss_rec} or gradient norm {grad_norm}: step skipped"
            );
        }
        self.opt.step(&grads, &p.adamw)?;
        Ok(StepStats {
            loss_rec,
            grad_norm,
        })
    }
}

/// A frozen vessel segmentor: logits (B, 1, H, W) of normalised images (B, C, H, W), in eval
/// mode (BatchNorm running statistics), differentiable with respect to the input.
pub trait VesselSegmentor {
    fn logits(&self, imgs: &Tensor) -> Result<Tensor>;
}

/// What the masking policy needs for a batch.
pub struct Guidance {
    /// P = σ(S(img)) (B, 1, H, W), detached; present when a segmentor was given.
    pub prob: Option<Tensor>,
    /// Per-patch mass of G (B, L), patches in row-major order.
    pub mass: Tensor,
    /// Per-patch mass of the vessel map B alone (B, L), when maps were given: the share of
    /// masked patches that contain vessel is computed from it.
    pub vessel: Option<Tensor>,
}

/// Sum of a (B, 1, H, W) map over each p×p patch → (B, L) in row-major patch order.
pub fn patch_mass(map: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = map.dims4()?;
    if c != 1 || h % p != 0 || w % p != 0 {
        candle_core::bail!("patch_mass: map of shape ({b}, {c}, {h}, {w}) is not (B, 1, H, W) with sides divisible by {p}");
    }
    map.reshape((b, h / p, p, w / p, p))?
        .sum(4)?
        .sum(2)?
        .reshape((b, (h / p) * (w / p)))
}

/// Guidance for one batch: G = η·B + (1 − η)·P (VASOMIM.md §1; v1 is η = 1). `maps` are the
/// offline vessel maps in [0, 1] (B, 1, H, W); the segmentor is needed when η < 1, the maps when
/// η > 0. P is computed whenever a segmentor is given (L_cons uses it even when η = 1).
pub fn guidance(
    seg: Option<&dyn VesselSegmentor>,
    imgs: &Tensor,
    maps: Option<&Tensor>,
    eta: f64,
    patch: usize,
) -> Result<Guidance> {
    if !(0.0..=1.0).contains(&eta) {
        candle_core::bail!("eta = {eta} must be in [0, 1]");
    }
    let prob = match seg {
        Some(s) => Some(candle_nn::ops::sigmoid(
            &s.logits(&imgs.detach())?.detach(),
        )?),
        None => None,
    };
    let g = match (eta, maps, &prob) {
        (1.0, Some(b), _) => b.clone(),
        (0.0, _, Some(p)) => p.clone(),
        (e, Some(b), Some(p)) => ((b * e)? + (p * (1.0 - e))?)?,
        (_, None, _) => candle_core::bail!(
            "guidance with eta = {eta} needs the offline vessel maps, and the batch has none"
        ),
        (_, _, None) => candle_core::bail!(
            "guidance with eta = {eta} needs the segmentor's probability map: load a segmentor"
        ),
    };
    Ok(Guidance {
        mass: patch_mass(&g, patch)?,
        vessel: maps.map(|b| patch_mass(b, patch)).transpose()?,
        prob,
    })
}

#[derive(Clone, Copy, Debug)]
pub struct PretrainStats {
    /// L = L_rec + w·L_cons of the whole batch, before the update.
    pub loss: f64,
    pub loss_rec: f64,
    /// Present when the consistency term is on.
    pub loss_cons: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The consistency branch of a step: the segmentor, its target P (B, 1, H, W) and the weight w.
pub struct Consistency<'a> {
    pub seg: &'a dyn VesselSegmentor,
    pub prob: &'a Tensor,
    pub weight: f64,
}

impl PretrainTrainer {
    /// L and its gradients (slot order) over `micro_batches` chunks. L_rec of a chunk is weighted
    /// by its share of the masked patches and L_cons (a mean over pixels) by its share of the
    /// images, so the accumulated values equal the full batch's.
    pub fn pretrain_loss_and_grads(
        &self,
        imgs: &Tensor,
        m: &Masking,
        cons: Option<&Consistency>,
        micro_batches: usize,
    ) -> Result<(PretrainStats, Vec<Tensor>)> {
        let b = imgs.dim(0)?;
        let chunks = micro_batches.clamp(1, b.max(1));
        let total_masked = m.mask.sum_all()?.to_scalar::<f32>()? as f64;
        if total_masked <= 0.0 {
            candle_core::bail!("the mask hides no patch: the reconstruction loss is undefined");
        }
        if let Some(c) = cons {
            let (pb, pc, ph, pw) = c.prob.dims4()?;
            let (_, _, h, w) = imgs.dims4()?;
            if (pb, pc, ph, pw) != (b, 1, h, w) {
                candle_core::bail!("consistency target has shape ({pb}, {pc}, {ph}, {pw}), expected ({b}, 1, {h}, {w})");
            }
        }
        let (mut rec, mut con) = (0f64, 0f64);
        let mut acc: Option<Vec<Tensor>> = None;
        let per = b.div_ceil(chunks);
        let mut start = 0;
        while start < b {
            let n = per.min(b - start);
            let sub = Masking {
                ids_keep: m.ids_keep.narrow(0, start, n)?,
                ids_restore: m.ids_restore.narrow(0, start, n)?,
                mask: m.mask.narrow(0, start, n)?,
            };
            let x = imgs.narrow(0, start, n)?;
            let masked = sub.mask.sum_all()?.to_scalar::<f32>()? as f64;
            let out = self.model.forward(&x, &sub)?;
            // A chunk without masked patches still carries L_cons.
            let mut total = (out.loss * (masked / total_masked))?;
            if masked == 0.0 {
                total = total.zeros_like()?;
            }
            rec += total.to_scalar::<f32>()? as f64;
            if let Some(c) = cons {
                let recon = self.model.reconstruct(&x, &out.pred)?;
                let logits = c.seg.logits(&recon)?;
                let target = c.prob.narrow(0, start, n)?.detach();
                let l = (bce_with_logits(&logits, &target)? * (n as f64 / b as f64))?;
                con += l.to_scalar::<f32>()? as f64;
                total = (total + (l * c.weight)?)?;
            } else if masked == 0.0 {
                start += n;
                continue;
            }
            start += n;
            let grads = self.opt.collect(&total.backward()?)?;
            acc = Some(match acc {
                None => grads,
                Some(a) => a
                    .iter()
                    .zip(&grads)
                    .map(|(x, y)| x + y)
                    .collect::<Result<_>>()?,
            });
        }
        let loss_cons = cons.map(|_| con);
        let stats = PretrainStats {
            loss: rec + cons.map_or(0.0, |c| c.weight * con),
            loss_rec: rec,
            loss_cons,
            grad_norm: 0.0,
        };
        Ok((stats, acc.expect("at least one chunk has masked patches")))
    }

    /// One VasoMIM step: loss, gradients, clipping (optional), AdamW. A non-finite loss or
    /// gradient leaves the weights and the optimizer untouched and returns an error.
    pub fn pretrain_step(
        &mut self,
        imgs: &Tensor,
        m: &Masking,
        cons: Option<&Consistency>,
        p: &StepParams,
    ) -> Result<PretrainStats> {
        let (mut st, mut grads) = self.pretrain_loss_and_grads(imgs, m, cons, p.micro_batches)?;
        st.grad_norm = match p.clip_grad {
            Some(c) => clip_grad_norm(&mut grads, c)?,
            None => global_norm(&grads)?,
        };
        if !st.loss.is_finite() || !st.grad_norm.is_finite() {
            candle_core::bail!(
                "non-finite loss {} (L_rec {}{}) or gradient norm {}: step skipped, weights unchanged",
                st.loss,
                st.loss_rec,
                st.loss_cons.map_or(String::new(), |c| format!(", L_cons {c}")),
                st.grad_norm
            );
        }
        self.opt.step(&grads, &p.adamw)?;
        Ok(st)
    }
}

/// The frozen UNeXt-S in pre-training: eval mode (running statistics), gradients reach the input.
impl VesselSegmentor for crate::nn::unext::UNext {
    fn logits(&self, imgs: &Tensor) -> Result<Tensor> {
        self.forward(imgs, false)
    }
}
