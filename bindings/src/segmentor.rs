//! The `Segmentor` handle: a UNeXt-S vessel segmentor (and its Adam state) owned by Rust.
//! Same conventions as `Model`: long calls are `AsyncTask`s, the state sits behind a mutex,
//! panics become errors that name the call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use vasomim_core::checkpoint::segmentor::{self, SegmentorLoadReport};
use vasomim_core::nn::unext::UNextConfig;
use vasomim_core::trainer::segmentor::{SegmentorLoss, SegmentorTrainer};

use crate::data::Batch;
use crate::{failed, guarded, invalid};

#[napi(object)]
#[derive(Clone)]
pub struct SegmentorConfig {
    /// Input channels: 3 as in the paper (grey replicated), 1 for grey-native mode.
    pub in_chans: u32,
}

/// Spatial size of a batch passed as a flat array: `size` × `size`, or `size` (height) ×
/// `width`. Both must be multiples of 32.
#[napi(object)]
pub struct SegImageOptions {
    pub size: u32,
    pub width: Option<u32>,
}

#[napi(object)]
pub struct SegStepOptions {
    /// Adam learning rate of this step (the poly schedule is the caller's).
    pub lr: f64,
    pub size: u32,
    pub width: Option<u32>,
}

#[napi(object)]
pub struct SegBatchStepOptions {
    pub lr: f64,
}

#[napi(object)]
pub struct SegStepResult {
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
pub struct SegLoadOptions {
    /// Fail on missing or unexpected keys (default true).
    pub strict: Option<bool>,
}

#[napi(object)]
#[derive(Clone)]
pub struct SegLoadInfo {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// Keys outside `seg_model.` in a file that has that prefix (ignored).
    pub ignored_outside_prefix: u32,
    pub config_source: String,
    pub step: i64,
}

struct State {
    trainer: SegmentorTrainer,
    step: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> Result<std::sync::MutexGuard<'_, State>> {
    s.lock()
        .map_err(|_| failed("segmentor state is poisoned by an earlier panic"))
}

fn err(e: candle_core::Error) -> Error {
    failed(e.to_string())
}

fn hw(size: u32, width: Option<u32>) -> Result<(usize, usize)> {
    let (h, w) = (size as usize, width.unwrap_or(size) as usize);
    if h == 0 || w == 0 || h % 32 != 0 || w % 32 != 0 {
        return Err(invalid(format!(
            "image size {h}x{w}: height and width must be positive multiples of 32"
        )));
    }
    Ok((h, w))
}

/// Batch size of `images` (B, C, H, W) flattened, or an error naming the expected layout.
fn batch_of(images: &[f32], c: usize, h: usize, w: usize) -> Result<usize> {
    let per = c * h * w;
    if images.is_empty() || !images.len().is_multiple_of(per) {
        return Err(invalid(format!(
            "images has {} values, not a positive multiple of C*H*W = {c}*{h}*{w} = {per}",
            images.len()
        )));
    }
    if let Some(i) = images.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!("images[{i}] is not finite")));
    }
    Ok(images.len() / per)
}

fn check_masks(masks: &[f32], b: usize, h: usize, w: usize) -> Result<()> {
    if masks.len() != b * h * w {
        return Err(invalid(format!(
            "masks has {} values, expected B*1*H*W = {b}*1*{h}*{w} = {}",
            masks.len(),
            b * h * w
        )));
    }
    if let Some(i) = masks.iter().position(|v| !(0.0..=1.0).contains(v)) {
        return Err(invalid(format!(
            "masks[{i}] = {} is outside [0, 1] (vessel maps are 0/1)",
            masks[i]
        )));
    }
    Ok(())
}

fn check_lr(lr: f64) -> Result<()> {
    if !lr.is_finite() || lr < 0.0 {
        return Err(invalid(format!("lr ({lr}) must be finite and >= 0")));
    }
    Ok(())
}

/// UNeXt-S (≈0.25 M parameters) with its Adam state: training on (image, vessel map) pairs and
/// eval-mode vessel probabilities.
#[napi]
pub struct Segmentor {
    state: Shared,
    cfg: UNextConfig,
    load_info: Option<SegLoadInfo>,
}

#[napi]
impl Segmentor {
    /// A freshly initialised segmentor (PyTorch's default init, deterministic in `seed`).
    #[napi(factory, catch_unwind)]
    pub fn create(config: Option<SegmentorConfig>, seed: Option<i64>) -> Result<Segmentor> {
        let cfg = UNextConfig {
            in_chans: config.map(|c| c.in_chans).unwrap_or(3) as usize,
        };
        if cfg.in_chans != 1 && cfg.in_chans != 3 {
            return Err(invalid(format!(
                "inChans must be 1 or 3, got {}",
                cfg.in_chans
            )));
        }
        guarded("Segmentor.create", || {
            let trainer = SegmentorTrainer::create(&cfg, &Device::Cpu, seed.unwrap_or(0) as u64)
                .map_err(err)?;
            Ok(Segmentor {
                state: Arc::new(Mutex::new(State { trainer, step: 0 })),
                cfg,
                load_info: None,
            })
        })
    }

    /// Load our safetensors or a PyTorch state dict (the authors' `unext.pth`, or a
    /// pre-training checkpoint with a `seg_model.` prefix).
    #[napi(catch_unwind, ts_return_type = "Promise<Segmentor>")]
    pub fn load(path: String, options: Option<SegLoadOptions>) -> AsyncTask<LoadTask> {
        AsyncTask::new(LoadTask {
            path: path.into(),
            strict: options.and_then(|o| o.strict).unwrap_or(true),
        })
    }

    /// What `Segmentor.load` found; null for a created segmentor.
    #[napi(getter)]
    pub fn load_info(&self) -> Option<SegLoadInfo> {
        self.load_info.clone()
    }

    #[napi(getter)]
    pub fn config(&self) -> SegmentorConfig {
        SegmentorConfig {
            in_chans: self.cfg.in_chans as u32,
        }
    }

    #[napi(getter)]
    pub fn num_params(&self) -> Result<i64> {
        Ok(lock(&self.state)?.trainer.model.params.num_elements() as i64)
    }

    #[napi(getter)]
    pub fn step(&self) -> Result<i64> {
        Ok(lock(&self.state)?.step as i64)
    }

    /// Save weights, BatchNorm running stats, Adam state, config and step (safetensors, written
    /// to a temporary file and renamed). `withOptimizer: false` leaves the Adam moments out (a
    /// third of the size: for a frozen segmentor that is only used, not trained further).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String, with_optimizer: Option<bool>) -> AsyncTask<SaveTask> {
        AsyncTask::new(SaveTask {
            state: self.state.clone(),
            path: path.into(),
            with_optimizer: with_optimizer.unwrap_or(true),
        })
    }

    /// One training step on images (B, C, H, W, normalised) and masks (B, 1, H, W, in {0, 1}).
    #[napi(catch_unwind, ts_return_type = "Promise<SegStepResult>")]
    pub fn train_step(
        &self,
        images: Float32Array,
        masks: Float32Array,
        options: SegStepOptions,
    ) -> Result<AsyncTask<StepTask>> {
        check_lr(options.lr)?;
        let (h, w) = hw(options.size, options.width)?;
        let b = batch_of(&images, self.cfg.in_chans, h, w)?;
        check_masks(&masks, b, h, w)?;
        Ok(AsyncTask::new(StepTask {
            state: self.state.clone(),
            data: Some((images.to_vec(), masks.to_vec())),
            dims: (b, self.cfg.in_chans, h, w),
            lr: options.lr,
        }))
    }

    /// One training step on a loader `Batch` (its images and vessel maps, without copying
    /// them through JS). The batch must have maps and the segmentor's channel count.
    #[napi(catch_unwind, ts_return_type = "Promise<SegStepResult>")]
    pub fn train_step_batch(
        &self,
        batch: &Batch,
        options: SegBatchStepOptions,
    ) -> Result<AsyncTask<StepTask>> {
        check_lr(options.lr)?;
        let inner = &batch.inner;
        let Some(maps) = &inner.maps else {
            return Err(invalid(
                "the batch has no vessel maps (the loader needs a maps folder)",
            ));
        };
        if inner.channels != self.cfg.in_chans {
            return Err(invalid(format!(
                "the batch has {} channels, the segmentor takes {}",
                inner.channels, self.cfg.in_chans
            )));
        }
        let (h, w) = hw(inner.size as u32, None)?;
        Ok(AsyncTask::new(StepTask {
            state: self.state.clone(),
            data: Some((inner.images.clone(), maps.clone())),
            dims: (inner.n, inner.channels, h, w),
            lr: options.lr,
        }))
    }

    /// Eval-mode vessel probabilities (B, 1, H, W) of images (B, C, H, W).
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array>")]
    pub fn predict(
        &self,
        images: Float32Array,
        options: SegImageOptions,
    ) -> Result<AsyncTask<PredictTask>> {
        let (h, w) = hw(options.size, options.width)?;
        let b = batch_of(&images, self.cfg.in_chans, h, w)?;
        Ok(AsyncTask::new(PredictTask {
            state: self.state.clone(),
            images: Some(images.to_vec()),
            dims: (b, self.cfg.in_chans, h, w),
        }))
    }
}

pub struct LoadTask {
    path: PathBuf,
    strict: bool,
}

fn info(r: &SegmentorLoadReport, step: u64) -> SegLoadInfo {
    SegLoadInfo {
        missing: r.missing.clone(),
        unexpected: r.unexpected.clone(),
        ignored_outside_prefix: r.ignored_outside_prefix as u32,
        config_source: r.config_source.clone(),
        step: step as i64,
    }
}

impl Task for LoadTask {
    type Output = Segmentor;
    type JsValue = Segmentor;
    fn compute(&mut self) -> Result<Segmentor> {
        guarded("Segmentor.load", || {
            let l = segmentor::load(&self.path, &Device::Cpu, self.strict).map_err(err)?;
            let cfg = l.model.cfg.clone();
            let mut trainer = SegmentorTrainer::new(l.model).map_err(err)?;
            if let Some((state, s)) = &l.optimizer {
                trainer
                    .opt
                    .load_state(state, *s)
                    .map_err(|e| failed(format!("{}: {e}", self.path.display())))?;
            }
            Ok(Segmentor {
                state: Arc::new(Mutex::new(State {
                    trainer,
                    step: l.step,
                })),
                cfg,
                load_info: Some(info(&l.report, l.step)),
            })
        })
    }
    fn resolve(&mut self, _env: Env, s: Segmentor) -> Result<Segmentor> {
        Ok(s)
    }
}

pub struct SaveTask {
    state: Shared,
    path: PathBuf,
    with_optimizer: bool,
}

impl Task for SaveTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> Result<()> {
        guarded("Segmentor.save", || {
            let s = lock(&self.state)?;
            let opt = self.with_optimizer.then_some(&s.trainer.opt);
            segmentor::save(&self.path, &s.trainer.model, opt, s.step)
                .map_err(|e| failed(format!("{}: {e}", self.path.display())))
        })
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

pub struct StepTask {
    state: Shared,
    data: Option<(Vec<f32>, Vec<f32>)>,
    dims: (usize, usize, usize, usize),
    lr: f64,
}

impl Task for StepTask {
    type Output = (SegmentorLoss, u64);
    type JsValue = SegStepResult;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("Segmentor.trainStep", || {
            let (images, masks) = self
                .data
                .take()
                .ok_or_else(|| failed("trainStep task ran twice"))?;
            let (b, c, h, w) = self.dims;
            let dev = Device::Cpu;
            let x = Tensor::from_vec(images, (b, c, h, w), &dev).map_err(err)?;
            let y = Tensor::from_vec(masks, (b, 1, h, w), &dev).map_err(err)?;
            let mut s = lock(&self.state)?;
            let loss = s.trainer.train_step(&x, &y, self.lr).map_err(err)?;
            s.step += 1;
            Ok((loss, s.step))
        })
    }
    fn resolve(&mut self, _env: Env, (l, step): Self::Output) -> Result<SegStepResult> {
        Ok(SegStepResult {
            loss: l.loss,
            bce: l.bce,
            dice: l.dice,
            step: step as i64,
        })
    }
}

pub struct PredictTask {
    state: Shared,
    images: Option<Vec<f32>>,
    dims: (usize, usize, usize, usize),
}

impl Task for PredictTask {
    type Output = Vec<f32>;
    type JsValue = Float32Array;
    fn compute(&mut self) -> Result<Vec<f32>> {
        guarded("Segmentor.predict", || {
            let images = self
                .images
                .take()
                .ok_or_else(|| failed("predict task ran twice"))?;
            let (b, c, h, w) = self.dims;
            let x = Tensor::from_vec(images, (b, c, h, w), &Device::Cpu).map_err(err)?;
            let s = lock(&self.state)?;
            s.trainer
                .predict(&x)
                .and_then(|p| p.flatten_all()?.to_vec1::<f32>())
                .map_err(err)
        })
    }
    fn resolve(&mut self, _env: Env, v: Vec<f32>) -> Result<Float32Array> {
        Ok(Float32Array::new(v))
    }
}
