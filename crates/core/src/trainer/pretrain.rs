//! The VasoMIM parts of a pre-training step (METHOD.md §1, §5, §7) around the MAE:
//!
//! 1. [`guidance`]: P = σ(S(img)) from the frozen segmentor (no gradient), the co-guidance map
//!    G = η·B + (1 − η)·P and its per-patch mass, which the TypeScript masking policy samples from.
//! 2. [`PretrainTrainer::pretrain_step`]: encoder on the kept patches, L_rec, the de-normalised
//!    reconstruction, L_cons = BCE-with-logits(S(recon), stop_grad(P)) with gradients flowing
//!    *through* the frozen segmentor into the MAE, total L = L_rec + w·L_cons, AdamW.
//!
//! 3. [`PretrainTrainer`]: the state of a run (model, AdamW, step counter, device, the frozen
//!    segmentor, the cached P of the last guided batch) and its one step function,
//!    [`PretrainTrainer::step`] on flat arrays or [`PretrainTrainer::step_batch`] on a loader
//!    batch, with the input checks both share.
//!
//! 4. Data parallel: with a [`Collective`] attached ([`PretrainTrainer::set_collective`], which
//!    broadcasts rank 0's parameters), each step is micro-batch accumulation across processes:
//!    every rank weighs its chunks by their share of the whole batch, and the gradients (after
//!    the backward, before clipping and AdamW) and loss terms are summed over the ranks.
//!
//! The segmentor enters through the [`VesselSegmentor`] trait so that this file needs nothing of
//! its architecture (UNeXt-S lives in `nn::unext`).

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use serde::Deserialize;

use crate::checkpoint::{self, LoadOptions, LoadReport};
use crate::data::Batch;
use crate::device::Precision;
use crate::distributed::{self, Collective, ReduceOp, BUCKET_BYTES};
use crate::embed;
use crate::nn::kernels::host::Autocast;
use crate::nn::loss::bce_with_logits;
use crate::nn::mae::{MaskedAutoencoder, Masking};
use crate::nn::presets::MaeConfig;
use crate::optim::{clip_grad_norm, global_norm, AdamW, AdamWParams};

use super::tune_allocator;

/// Hyper-parameters of one step, all explicit: the user-facing defaults live in the TypeScript
/// `StepOptionsSchema`; [`StepParams::default`] serves Rust-only code (tests, benchmarks). In
/// JSON: camelCase, the AdamW fields flat beside the others (`{ lr, weightDecay, …, consWeight }`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepParams {
    #[serde(flatten)]
    pub adamw: AdamWParams,
    /// Clip the global gradient norm to this value (MAE pre-training uses none).
    pub clip_grad: Option<f64>,
    /// Split the batch into this many micro-batches and accumulate their gradients: the update
    /// equals the full batch's, with less activation memory.
    pub micro_batches: usize,
    /// Weight w of L_cons in L = L_rec + w·L_cons; 0 turns it off, > 0 needs a segmentor.
    pub cons_weight: f64,
}

impl Default for StepParams {
    fn default() -> Self {
        StepParams { adamw: AdamWParams::default(), clip_grad: None, micro_batches: 1, cons_weight: 0.0 }
    }
}

impl StepParams {
    /// An error naming the first out-of-range field (JS names: the options cross N-API as is).
    pub fn validate(&self) -> Result<()> {
        let a = &self.adamw;
        let finite_nonneg = [("lr", a.lr), ("weightDecay", a.weight_decay), ("consWeight", self.cons_weight)];
        if let Some((name, v)) = finite_nonneg.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            candle_core::bail!("{name} ({v}) must be finite and >= 0");
        }
        if let Some((name, v)) = [("beta1", a.beta1), ("beta2", a.beta2)].iter().find(|(_, v)| !(0.0..1.0).contains(v))
        {
            candle_core::bail!("{name} ({v}) must be in [0, 1)");
        }
        if !(a.eps.is_finite() && a.eps > 0.0) {
            candle_core::bail!("eps ({}) must be finite and > 0", a.eps);
        }
        if let Some(c) = self.clip_grad.filter(|c| !(c.is_finite() && *c > 0.0)) {
            candle_core::bail!("clipGrad ({c}) must be finite and > 0");
        }
        if self.micro_batches == 0 {
            candle_core::bail!("microBatches must be >= 1");
        }
        Ok(())
    }
}

/// The caller's masking of a batch as flat arrays: kept patch ids (B, K), restore order (B, L),
/// mask (B, L; 1 = masked).
#[derive(Clone, Copy, Debug)]
pub struct MaskArrays<'a> {
    pub ids_keep: &'a [u32],
    pub ids_restore: &'a [u32],
    pub mask: &'a [f32],
}

/// An owned copy of a masking (e.g. to carry it to another thread).
#[derive(Clone, Debug, Default)]
pub struct MaskBuf(pub Vec<u32>, pub Vec<u32>, pub Vec<f32>);

impl MaskBuf {
    pub fn new(m: MaskArrays) -> Self {
        MaskBuf(m.ids_keep.to_vec(), m.ids_restore.to_vec(), m.mask.to_vec())
    }
    pub fn arrays(&self) -> MaskArrays<'_> {
        MaskArrays { ids_keep: &self.0, ids_restore: &self.1, mask: &self.2 }
    }
}

/// Which loader batch a cached P belongs to: its position and its samples, so that a batch of
/// another loader at the same (epoch, index) never reuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BatchKey {
    epoch: u64,
    index: usize,
    samples: Vec<usize>,
}

impl BatchKey {
    fn of(b: &Batch) -> Self {
        BatchKey { epoch: b.epoch, index: b.index, samples: b.samples.clone() }
    }
}

/// A frozen segmentor that can live in a trainer shared between threads.
pub type BoxedSegmentor = Box<dyn VesselSegmentor + Send>;

/// Pre-training state: the MAE, AdamW, the step counter, the device, the frozen segmentor of
/// VasoMIM (guidance and L_cons) and P = σ(S(img)) of the last batch given to
/// [`PretrainTrainer::guidance_of`], which the step on that batch reuses.
pub struct PretrainTrainer {
    pub model: MaskedAutoencoder,
    pub opt: AdamW,
    /// Optimizer steps taken in this lineage (saved with checkpoints).
    pub step: u64,
    device: Device,
    precision: Precision,
    segmentor: Option<BoxedSegmentor>,
    prob_cache: Option<(BatchKey, Tensor)>,
    /// The process group of a data-parallel run (none: one process).
    collective: Option<Box<dyn Collective>>,
}

/// A checkpoint loaded into a trainer, with what loading found.
pub struct PretrainLoaded {
    pub trainer: PretrainTrainer,
    pub report: LoadReport,
    /// The training loop's state saved with [`PretrainTrainer::save`], when present.
    pub loop_state: Option<String>,
}

impl PretrainTrainer {
    /// A trainer of `model` on the model's device; `frozen`: state-dict names or prefixes the
    /// optimizer leaves alone.
    pub fn new(model: MaskedAutoencoder, frozen: &[String]) -> Result<Self> {
        tune_allocator();
        let opt = AdamW::new(&model.params, frozen)?;
        let device = model.encoder.pos_embed.device().clone();
        Ok(PretrainTrainer {
            model,
            opt,
            step: 0,
            device,
            precision: Precision::F32,
            segmentor: None,
            prob_cache: None,
            collective: None,
        })
    }

    /// A freshly initialised model (MAE init, deterministic in `seed`) on `device`.
    pub fn create(cfg: &MaeConfig, device: &Device, seed: u64) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        Self::new(MaskedAutoencoder::new(cfg, device, seed)?, &[])
    }

    /// Load a checkpoint (ours, timm safetensors, MAE `.pth`) onto `device`, with its optimizer
    /// moments and step when the file has them.
    pub fn load(path: &Path, opts: &LoadOptions, frozen: &[String], device: &Device) -> Result<PretrainLoaded> {
        let l = checkpoint::load(path, opts, device)?;
        let mut trainer = Self::new(l.model, frozen)?;
        if let Some((state, s)) = &l.optimizer {
            trainer.opt.load_state(state, *s)?;
        }
        trainer.step = l.step;
        Ok(PretrainLoaded { trainer, report: l.report, loop_state: l.loop_state })
    }

    /// Save parameters, position buffers, optimizer state, config, step and the training loop's
    /// state (an opaque JSON string) atomically.
    pub fn save(&self, path: &Path, loop_state: Option<&str>) -> Result<()> {
        checkpoint::save_with_loop_state(path, &self.model, Some(&self.opt), self.step, loop_state)
    }

    pub fn cfg(&self) -> &MaeConfig {
        &self.model.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute in `p` from now on (the frozen segmentor too); weights and optimizer stay f32.
    pub fn set_precision(&mut self, p: Precision) {
        p.activate();
        self.precision = p;
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn autocast(&self) -> Autocast {
        Autocast::enter(self.precision.autocast())
    }

    /// Attach the frozen vessel segmentor S (used in eval mode for P and L_cons).
    pub fn set_segmentor(&mut self, seg: BoxedSegmentor) {
        self.segmentor = Some(seg);
        self.prob_cache = None;
    }

    /// Attach a UNeXt-S checkpoint (ours, the authors' `unext.pth`, or one under `seg_model.`)
    /// as the segmentor; its input channels must equal the model's.
    pub fn attach_segmentor(&mut self, path: &Path) -> Result<()> {
        // Frozen: L_cons backpropagates into the segmentor's input only, never its weights.
        let l = checkpoint::segmentor::load_frozen(path, &self.device, true)
            .map_err(|e| candle_core::Error::msg(format!("segmentor {}: {e}", path.display())))?;
        let (got, want) = (l.model.cfg.in_chans, self.model.cfg.in_chans);
        if got != want {
            candle_core::bail!("segmentor {} takes {got} input channel(s), the model {want}", path.display());
        }
        self.set_segmentor(Box::new(l.model));
        Ok(())
    }

    pub fn has_segmentor(&self) -> bool {
        self.segmentor.is_some()
    }

    /// Join a data-parallel group: every rank must be at the same optimizer step (resumed from
    /// the same checkpoint), then takes rank 0's parameters. From here on each step averages
    /// gradients and loss terms across the group.
    pub fn set_collective(&mut self, c: Box<dyn Collective>) -> Result<()> {
        let mine = self.step as f64;
        let root = c.broadcast(&Tensor::new(&[mine], &Device::Cpu)?.to_device(&self.device)?, 0)?;
        let root = root.to_vec1::<f64>()?[0];
        if root != mine {
            candle_core::bail!(
                "rank {} is at optimizer step {mine}, rank 0 at {root}: every rank must start from the same \
                 checkpoint (a run folder all ranks can read)",
                c.rank()
            );
        }
        let vars: Vec<_> = self.model.params.entries.iter().map(|(n, v)| (n.as_str(), v)).collect();
        distributed::broadcast_vars(c.as_ref(), &vars, BUCKET_BYTES)?;
        self.collective = Some(c);
        Ok(())
    }

    /// The data-parallel group, when one is attached.
    pub fn collective(&self) -> Option<&dyn Collective> {
        self.collective.as_deref()
    }

    /// Batch size of `len` image values (B, C, S, S), or an error naming the layout.
    pub fn batch_of(&self, len: usize) -> Result<usize> {
        let c = &self.model.cfg;
        let per = c.in_chans * c.img_size * c.img_size;
        if len == 0 || !len.is_multiple_of(per) {
            candle_core::bail!("images has {len} values, not a multiple of C*S*S = {per}");
        }
        Ok(len / per)
    }

    /// Check the masking of a batch of `b` images: sizes B·K, B·L and ids below L.
    pub fn check_masking(&self, b: usize, m: MaskArrays) -> Result<()> {
        let l = self.model.cfg.num_patches();
        if m.ids_restore.len() != b * l || m.mask.len() != b * l {
            candle_core::bail!(
                "idsRestore ({}) and mask ({}) must have B*L = {b}*{l} values",
                m.ids_restore.len(),
                m.mask.len()
            );
        }
        let k = m.ids_keep.len();
        if k == 0 || !k.is_multiple_of(b) || k / b > l {
            candle_core::bail!("idsKeep has {k} values: expected B*K with B = {b}, 1 <= K <= {l}");
        }
        if let Some(bad) = m.ids_keep.iter().chain(m.ids_restore).find(|&&i| i as usize >= l) {
            candle_core::bail!("patch index {bad} out of range 0..{l}");
        }
        Ok(())
    }

    /// A loader batch must have the model's channels and input side.
    pub fn check_loader_batch(&self, b: &Batch) -> Result<()> {
        let c = &self.model.cfg;
        if b.channels != c.in_chans || b.size != c.img_size {
            candle_core::bail!(
                "the batch has {} channel(s) of {}², the model takes {} of {}²: set the loader's size and channels from the model config",
                b.channels,
                b.size,
                c.in_chans,
                c.img_size
            );
        }
        Ok(())
    }

    fn masking(&self, b: usize, m: MaskArrays) -> Result<Masking> {
        self.check_masking(b, m)?;
        let (l, dev) = (self.model.cfg.num_patches(), &self.device);
        Ok(Masking {
            ids_keep: Tensor::from_slice(m.ids_keep, (b, m.ids_keep.len() / b), dev)?,
            ids_restore: Tensor::from_slice(m.ids_restore, (b, l), dev)?,
            mask: Tensor::from_slice(m.mask, (b, l), dev)?,
        })
    }

    /// Images (B, C, S, S) on the trainer's device, checked against the model.
    pub fn images(&self, images: &[f32]) -> Result<Tensor> {
        let b = self.batch_of(images.len())?;
        let c = &self.model.cfg;
        Tensor::from_slice(images, (b, c.in_chans, c.img_size, c.img_size), &self.device)
    }

    fn loader_tensors(&self, b: &Batch) -> Result<(Tensor, Option<Tensor>)> {
        self.check_loader_batch(b)?;
        let imgs = self.images(&b.images)?;
        let maps = match &b.maps {
            Some(m) => Some(Tensor::from_slice(m, (b.n, 1, b.size, b.size), &self.device)?),
            None => None,
        };
        Ok((imgs, maps))
    }

    /// VasoMIM guidance of a loader batch (see [`guidance`]); P is kept for the step on the
    /// same batch.
    pub fn guidance_of(&mut self, batch: &Batch, eta: f64) -> Result<Guidance> {
        let _ac = self.autocast();
        let (imgs, maps) = self.loader_tensors(batch)?;
        let seg = self.segmentor.as_deref().map(|s| s as &dyn VesselSegmentor);
        let g = guidance(seg, &imgs, maps.as_ref(), eta, self.model.cfg.patch_size)?;
        self.prob_cache = g.prob.clone().map(|p| (BatchKey::of(batch), p));
        Ok(g)
    }

    /// The training step: L_rec, plus w·L_cons through the attached segmentor when
    /// `p.cons_weight` > 0 (P from the cache when `key` names the batch it was computed for),
    /// clipping, AdamW, step counter. Both the flat-array and the loader-batch paths end here.
    fn step_on(&mut self, imgs: &Tensor, m: &Masking, key: Option<BatchKey>, p: &StepParams) -> Result<PretrainStats> {
        p.validate()?;
        let _ac = self.autocast();
        if p.cons_weight == 0.0 {
            return self.pretrain_step(imgs, m, None, p);
        }
        let cached = match (self.prob_cache.take(), &key) {
            (Some((k, prob)), Some(key)) if k == *key => Some(prob),
            _ => None,
        };
        let Some(seg) = self.segmentor.take() else {
            candle_core::bail!("consWeight > 0 needs a segmentor: attach one (or set consWeight to 0)");
        };
        let prob = match cached {
            Some(prob) => Ok(prob),
            None => guidance(Some(seg.as_ref()), imgs, None, 0.0, self.model.cfg.patch_size)
                .map(|g| g.prob.expect("a segmentor gives P")),
        };
        let out = prob.and_then(|prob| {
            let cons = Consistency { seg: seg.as_ref(), prob: &prob, weight: p.cons_weight };
            self.pretrain_step(imgs, m, Some(&cons), p)
        });
        self.segmentor = Some(seg);
        out
    }

    /// One step on flat arrays: images (B, C, S, S) normalised and the caller's masking.
    pub fn step(&mut self, images: &[f32], masks: MaskArrays, p: &StepParams) -> Result<PretrainStats> {
        let x = self.images(images)?;
        let m = self.masking(x.dim(0)?, masks)?;
        self.step_on(&x, &m, None, p)
    }

    /// One step on a loader batch (images never leave Rust) with the caller's masking.
    pub fn step_batch(&mut self, batch: &Batch, masks: MaskArrays, p: &StepParams) -> Result<PretrainStats> {
        let (x, _) = self.loader_tensors(batch)?;
        let m = self.masking(batch.n, masks)?;
        self.step_on(&x, &m, Some(BatchKey::of(batch)), p)
    }

    /// Reconstruction (B, C, S, S) in the normalised input space and the loss of a masked batch,
    /// without training.
    pub fn reconstruct(&self, images: &[f32], masks: MaskArrays) -> Result<(Vec<f32>, f64)> {
        let x = self.images(images)?;
        let m = self.masking(x.dim(0)?, masks)?;
        let _ac = self.autocast();
        let out = self.model.forward(&x, &m)?;
        let rec = self.model.reconstruct(&x, &out.pred)?;
        Ok((rec.flatten_all()?.to_vec1::<f32>()?, out.loss.to_scalar::<f32>()? as f64))
    }

    /// Encoder only in timm's layout (`timm.create_model(..., num_classes=0)` loads it).
    pub fn export_timm(&self, path: &Path) -> Result<()> {
        checkpoint::export_timm(path, &self.model)
    }

    /// Features (N, 2, D) of normalised images (N, C, S, S), flat.
    pub fn embed(&self, images: &[f32]) -> Result<Vec<f32>> {
        let _ac = self.autocast();
        embed::embed_batch(&self.model, &self.images(images)?)
    }

    /// Features (N, 2, D) of image files (preprocessed as in pre-training), flat; also written
    /// as a `.npy` to `out` when given.
    pub fn embed_files(&self, paths: &[&Path], out: Option<&Path>) -> Result<Vec<f32>> {
        if paths.is_empty() {
            candle_core::bail!("no images given");
        }
        let _ac = self.autocast();
        let (data, d) = embed::embed_files(&self.model, paths, 8, &self.device)?;
        if let Some(out) = out {
            crate::io::write_npy(out, &[paths.len(), 2, d], &data)
                .map_err(|e| candle_core::Error::msg(format!("{}: {e}", out.display())))?;
        }
        Ok(data)
    }

    /// Loss and summed gradients (slot order) of L_rec without updating, over `micro_batches`
    /// chunks (the MAE case of [`PretrainTrainer::pretrain_loss_and_grads`]).
    pub fn loss_and_grads(&self, imgs: &Tensor, m: &Masking, micro_batches: usize) -> Result<(f64, Vec<Tensor>)> {
        let (st, grads) = self.pretrain_loss_and_grads(imgs, m, None, micro_batches)?;
        Ok((st.loss_rec, grads))
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
        candle_core::bail!(
            "patch_mass: map of shape ({b}, {c}, {h}, {w}) is not (B, 1, H, W) with sides divisible by {p}"
        );
    }
    map.reshape((b, h / p, p, w / p, p))?.sum(4)?.sum(2)?.reshape((b, (h / p) * (w / p)))
}

/// Guidance for one batch: G = η·B + (1 − η)·P (METHOD.md §1; v1 is η = 1). `maps` are the
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
        Some(s) => Some(candle_nn::ops::sigmoid(&s.logits(&imgs.detach())?.detach())?),
        None => None,
    };
    let g = match (eta, maps, &prob) {
        (1.0, Some(b), _) => b.clone(),
        (0.0, _, Some(p)) => p.clone(),
        (e, Some(b), Some(p)) => ((b * e)? + (p * (1.0 - e))?)?,
        (_, None, _) => {
            candle_core::bail!("guidance with eta = {eta} needs the offline vessel maps, and the batch has none")
        }
        (_, _, None) => {
            candle_core::bail!("guidance with eta = {eta} needs the segmentor's probability map: load a segmentor")
        }
    };
    Ok(Guidance { mass: patch_mass(&g, patch)?, vessel: maps.map(|b| patch_mass(b, patch)).transpose()?, prob })
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
        let total_masked = m.mask.sum_all()?.to_scalar::<f32>()? as f64;
        self.shard_loss_and_grads(imgs, m, cons, micro_batches, (total_masked, imgs.dim(0)?))
    }

    /// [`Self::pretrain_loss_and_grads`] of one shard of a larger batch of `totals` = (masked
    /// patches, images): each chunk weighted by its share of the whole batch, so the sum of the
    /// shards' values and gradients is the batch's (and each image's gradient is the one a
    /// single process computes for it).
    fn shard_loss_and_grads(
        &self,
        imgs: &Tensor,
        m: &Masking,
        cons: Option<&Consistency>,
        micro_batches: usize,
        (total_masked, total_images): (f64, usize),
    ) -> Result<(PretrainStats, Vec<Tensor>)> {
        let _ac = self.autocast();
        let b = imgs.dim(0)?;
        let chunks = micro_batches.clamp(1, b.max(1));
        if total_masked <= 0.0 {
            candle_core::bail!("the mask hides no patch: the reconstruction loss is undefined");
        }
        if let Some(c) = cons {
            let (pb, pc, ph, pw) = c.prob.dims4()?;
            let (_, _, h, w) = imgs.dims4()?;
            if (pb, pc, ph, pw) != (b, 1, h, w) {
                candle_core::bail!(
                    "consistency target has shape ({pb}, {pc}, {ph}, {pw}), expected ({b}, 1, {h}, {w})"
                );
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
                let l = (bce_with_logits(&logits, &target)? * (n as f64 / total_images as f64))?;
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
                Some(a) => a.iter().zip(&grads).map(|(x, y)| x + y).collect::<Result<_>>()?,
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

    /// The update of one step with an explicit consistency branch (a stand-in segmentor in
    /// tests): loss, gradients, clipping (optional), AdamW, step counter. A non-finite loss or
    /// gradient leaves the weights, the optimizer and the counter untouched and returns an error.
    pub fn pretrain_step(
        &mut self,
        imgs: &Tensor,
        m: &Masking,
        cons: Option<&Consistency>,
        p: &StepParams,
    ) -> Result<PretrainStats> {
        let (mut st, mut grads) = match self.collective.as_deref() {
            None => self.pretrain_loss_and_grads(imgs, m, cons, p.micro_batches)?,
            // Data parallel: micro-batch accumulation across processes. Each rank weighs its
            // chunks by their share of the whole batch; the sums over the ranks are the batch's.
            Some(c) => {
                let local = [m.mask.sum_all()?.to_scalar::<f32>()? as f64, imgs.dim(0)? as f64];
                let totals = distributed::all_reduce_values(c, &local, ReduceOp::Sum, &self.device)?;
                let (mut st, mut grads) =
                    self.shard_loss_and_grads(imgs, m, cons, p.micro_batches, (totals[0], totals[1] as usize))?;
                let names: Vec<&str> = self.opt.vars().into_iter().map(|(n, _)| n).collect();
                distributed::all_reduce_grads(c, &names, &mut grads, BUCKET_BYTES)?;
                let terms = [st.loss, st.loss_rec, st.loss_cons.unwrap_or(0.0)];
                let sums = distributed::all_reduce_values(c, &terms, ReduceOp::Sum, &self.device)?;
                (st.loss, st.loss_rec, st.loss_cons) = (sums[0], sums[1], st.loss_cons.map(|_| sums[2]));
                (st, grads)
            }
        };
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
        self.step += 1;
        Ok(st)
    }
}

/// The frozen UNeXt-S in pre-training: eval mode (running statistics), gradients reach the input.
impl VesselSegmentor for crate::nn::unext::UNext {
    fn logits(&self, imgs: &Tensor) -> Result<Tensor> {
        self.forward(imgs, false)
    }
}
