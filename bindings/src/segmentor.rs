//! The `Segmentor` handle: one `SegmentorTrainer` of the core (UNeXt-S, its Adam state, step
//! counter and device) behind a mutex.

use std::path::Path;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use vasomim_core::nn::unext::UNextConfig;
use vasomim_core::trainer::segmentor::{
    check_lr, check_masks, config_from_json, config_to_json, image_dims, SegmentorLoss, SegmentorTrainer,
};

use crate::data::Batch;
use crate::{device, guarded, job, rejected, Pending, Shared};

/// Spatial size of a batch passed as a flat array: `size` × `size`, or `size` (height) ×
/// `width`. Both must be multiples of 32.
#[napi(object)]
pub struct SegmentorImageOptions {
    pub size: u32,
    pub width: Option<u32>,
}

#[napi(object)]
pub struct SegmentorStepOptions {
    /// Adam learning rate of this step (the poly schedule is the caller's).
    pub lr: f64,
    /// Image side of flat arrays (not used with a loader batch).
    pub size: Option<u32>,
    pub width: Option<u32>,
}

#[napi(object)]
pub struct SegmentorStepResult {
    /// 0.5·bce + 0.5·(1 − dice), before the update.
    pub loss: f64,
    /// Mean binary cross-entropy with logits.
    pub bce: f64,
    /// Batch-global soft Dice coefficient (2Σpy + 1e-5)/(Σp + Σy + 1e-5).
    pub dice: f64,
    /// Optimizer steps taken so far.
    pub step: i64,
}

#[napi(object)]
#[derive(Default)]
pub struct SegmentorLoadOptions {
    /// Fail on missing or unexpected keys (default true).
    pub strict: Option<bool>,
    /// `cpu` (default), `cuda` or `cuda:N`.
    pub device: Option<String>,
}

#[napi(object)]
#[derive(Clone)]
pub struct SegmentorLoadInfo {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// Keys outside `seg_model.` in a file that has that prefix (ignored).
    pub ignored_outside_prefix: u32,
    pub config_source: String,
    pub step: i64,
}

fn dims(size: u32, width: Option<u32>) -> Result<(usize, usize)> {
    image_dims(size as usize, width.map(|w| w as usize)).map_err(rejected)
}

fn step_result(l: SegmentorLoss, step: u64) -> SegmentorStepResult {
    let (loss, bce, dice, step) = (l.loss, l.bce, l.dice, step as i64);
    SegmentorStepResult { loss, bce, dice, step }
}

/// UNeXt-S (≈0.25 M parameters) with its training state: training on (image, vessel map) pairs
/// and eval-mode vessel probabilities.
#[napi]
pub struct Segmentor {
    state: Shared<SegmentorTrainer>,
    cfg: UNextConfig,
    load_info: Option<SegmentorLoadInfo>,
}

impl Segmentor {
    fn wrap(t: SegmentorTrainer, load_info: Option<SegmentorLoadInfo>) -> Self {
        Segmentor { cfg: t.cfg().clone(), state: Shared::new(t, "segmentor"), load_info }
    }
}

#[napi]
impl Segmentor {
    /// Compute in `precision` from now on: `auto` (bf16 on CUDA, f32 on the CPU), `f32`, `tf32`
    /// (CUDA) or `bf16` (autocast; weights and optimizer state stay f32). Returns the precision
    /// in effect.
    #[napi]
    pub fn set_precision(&self, precision: String) -> Result<String> {
        let mut t = self.state.lock()?;
        let p = crate::compute_precision(&precision, t.device())?;
        t.set_precision(p);
        Ok(p.name().to_string())
    }

    /// A freshly initialised segmentor (PyTorch's default init, deterministic in `seed`) on
    /// `device` (default cpu). `config`: `{ inChans: 1 | 3 }` (default 3).
    #[napi(factory, catch_unwind)]
    pub fn create(config: Option<serde_json::Value>, seed: Option<i64>, device: Option<String>) -> Result<Segmentor> {
        let cfg = match config {
            Some(v) => config_from_json(v).map_err(rejected)?,
            None => UNextConfig { in_chans: 3 },
        };
        let dev = crate::device(device)?;
        guarded("Segmentor.create", || {
            let t = SegmentorTrainer::create(&cfg, &dev, seed.unwrap_or(0) as u64).map_err(crate::err)?;
            Ok(Segmentor::wrap(t, None))
        })
    }

    /// Load our safetensors or a PyTorch state dict (the authors' `unext.pth`, or a
    /// pre-training checkpoint with a `seg_model.` prefix).
    #[napi(catch_unwind, ts_return_type = "Promise<Segmentor>")]
    pub fn load(path: String, options: Option<SegmentorLoadOptions>) -> Result<Pending<Segmentor>> {
        let o = options.unwrap_or_default();
        let (strict, dev) = (o.strict.unwrap_or(true), device(o.device)?);
        Ok(job("Segmentor.load", move || {
            let (t, r) = SegmentorTrainer::load(Path::new(&path), &dev, strict).map_err(crate::err)?;
            let info = SegmentorLoadInfo {
                missing: r.missing,
                unexpected: r.unexpected,
                ignored_outside_prefix: r.ignored_outside_prefix as u32,
                config_source: r.config_source,
                step: t.step as i64,
            };
            Ok(Segmentor::wrap(t, Some(info)))
        }))
    }

    /// What `Segmentor.load` found; null for a created segmentor.
    #[napi(getter)]
    pub fn load_info(&self) -> Option<SegmentorLoadInfo> {
        self.load_info.clone()
    }

    /// `{ inChans }`.
    #[napi(getter)]
    pub fn config(&self) -> serde_json::Value {
        config_to_json(&self.cfg)
    }

    #[napi(getter)]
    pub fn num_params(&self) -> Result<i64> {
        Ok(self.state.lock()?.model.params.num_elements() as i64)
    }

    #[napi(getter)]
    pub fn step(&self) -> Result<i64> {
        Ok(self.state.lock()?.step as i64)
    }

    /// Save weights, BatchNorm running stats, Adam state, config and step (safetensors, written
    /// to a temporary file and renamed). `withOptimizer: false` leaves the Adam moments out (a
    /// third of the size: for a frozen segmentor that is only used, not trained further).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String, with_optimizer: Option<bool>) -> Pending<()> {
        let with_opt = with_optimizer.unwrap_or(true);
        self.state.task("Segmentor.save", move |t| t.save(Path::new(&path), with_opt))
    }

    /// One training step on images (B, C, H, W, normalised) and masks (B, 1, H, W, in {0, 1});
    /// `options.size` (and `width`) give H and W.
    #[napi(catch_unwind, ts_return_type = "Promise<SegmentorStepResult>")]
    pub fn train_step(
        &self,
        images: Float32Array,
        masks: Float32Array,
        options: SegmentorStepOptions,
    ) -> Result<Pending<SegmentorStepResult>> {
        check_lr(options.lr).map_err(rejected)?;
        let size = options.size.ok_or_else(|| crate::invalid("size: the image side of flat arrays is required"))?;
        let hw = dims(size, options.width)?;
        let b = self.state.check(|t| t.batch_of(&images, hw.0, hw.1))?;
        check_masks(&masks, b, hw.0, hw.1).map_err(rejected)?;
        let (x, y, lr) = (images.to_vec(), masks.to_vec(), options.lr);
        Ok(self.state.task("Segmentor.trainStep", move |t| Ok(step_result(t.step_arrays(&x, &y, hw, lr)?, t.step))))
    }

    /// One training step on a loader `Batch` (its images and vessel maps, without copying
    /// them through JS). The batch must have maps and the segmentor's channel count.
    #[napi(catch_unwind, ts_return_type = "Promise<SegmentorStepResult>")]
    pub fn train_step_batch(
        &self,
        batch: &Batch,
        options: SegmentorStepOptions,
    ) -> Result<Pending<SegmentorStepResult>> {
        check_lr(options.lr).map_err(rejected)?;
        self.state.check(|t| t.check_loader_batch(&batch.inner))?;
        let (b, lr) = (batch.inner.clone(), options.lr);
        Ok(self.state.task("Segmentor.trainStepBatch", move |t| Ok(step_result(t.step_batch(&b, lr)?, t.step))))
    }

    /// Eval-mode vessel probabilities (B, 1, H, W) of images (B, C, H, W).
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array>")]
    pub fn predict(&self, images: Float32Array, options: SegmentorImageOptions) -> Result<Pending<Float32Array>> {
        let hw = dims(options.size, options.width)?;
        self.state.check(|t| t.batch_of(&images, hw.0, hw.1))?;
        let x = images.to_vec();
        Ok(self.state.task("Segmentor.predict", move |t| Ok(t.predict_arrays(&x, hw)?.into())))
    }
}
