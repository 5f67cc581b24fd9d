//! One MAE pre-training step: forward, backward (optionally over micro-batches whose gradients
//! are accumulated), global-norm clipping, AdamW.

use candle_core::{Device, Result, Tensor};

use crate::nn::mae::{MaskedAutoencoder, Masking};
use crate::nn::presets::MaeConfig;
use crate::optim::{clip_grad_norm, global_norm, AdamW, AdamWParams};

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

pub struct Trainer {
    pub model: MaskedAutoencoder,
    pub opt: AdamW,
}

/// Keep freed tensor buffers in the heap instead of returning them to the kernel.
///
/// glibc serves large blocks with mmap and unmaps them on free, so every step pays page faults
/// and page zeroing for each activation tensor again (~10 % of a tiny-ViT step on the CPU).
/// Raising the mmap and trim thresholds lets the step reuse its own memory, as PyTorch's caching
/// allocator does. Process-wide and idempotent; a no-op outside glibc Linux.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| unsafe {
            // SAFETY: mallopt only changes allocator parameters; 32 MiB is glibc's mmap maximum.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        });
    }
}

impl Trainer {
    pub fn new(model: MaskedAutoencoder, frozen: &[String]) -> Result<Self> {
        tune_allocator();
        let opt = AdamW::new(&model.params, frozen)?;
        Ok(Trainer { model, opt })
    }

    pub fn create(cfg: &MaeConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::new(MaskedAutoencoder::new(cfg, device, seed)?, &[])
    }

    /// Loss and summed gradients (slot order) without updating, over `micro_batches` chunks.
    /// Each chunk's loss is weighted by its share of the masked patches, so the sum equals the
    /// full-batch loss Σ mask·ℓ / Σ mask exactly (the MAE case of
    /// [`Trainer::pretrain_loss_and_grads`]).
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
