//! The `SegModel` handle: the segmentation ViT (pre-trained encoder + U-Net adapter head) and its
//! fine-tuning state, owned by Rust. Same conventions as `Model` / `Segmentor`: long calls are
//! `AsyncTask`s, the state sits behind a mutex, panics become errors that name the call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use vasomim_core::checkpoint::{self, segmentation as ckpt, LoadOptions};
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::nn::segmentation::{SegmentationConfig, SegmentationViT};
use vasomim_core::trainer::segmentation::{SegmentationLoss, SegmentationTrainer, LAYER_DECAY};

use crate::data::Batch;
use crate::model::{candle_message, ModelConfig};
use crate::{failed, guarded, invalid};

#[napi(object)]
#[derive(Clone)]
pub struct SegModelConfig {
    /// Encoder shape (decoder fields ignored); `imgSize` is the model's input side.
    pub encoder: ModelConfig,
    /// 1: binary (sigmoid); K ≥ 2: classes 0..K−1 with softmax (0 = background).
    pub num_classes: u32,
    /// Multiplier of the head widths (512, 256, 128, 64, 32); 1 = the paper's head.
    pub head_scale: f64,
    /// Drop-path rate of the last block (linear over depth).
    pub drop_path: f64,
}

impl From<&SegmentationConfig> for SegModelConfig {
    fn from(c: &SegmentationConfig) -> Self {
        SegModelConfig {
            encoder: ModelConfig::from(&c.encoder),
            num_classes: c.num_classes as u32,
            head_scale: c.head_scale,
            drop_path: c.drop_path,
        }
    }
}

impl From<&SegModelConfig> for SegmentationConfig {
    fn from(c: &SegModelConfig) -> Self {
        SegmentationConfig {
            encoder: MaeConfig::from(&c.encoder),
            num_classes: c.num_classes as usize,
            head_scale: c.head_scale,
            drop_path: c.drop_path,
        }
    }
}

#[napi(object)]
pub struct SegModelCreateOptions {
    /// Layer-wise LR decay (default 0.75).
    pub layer_decay: Option<f64>,
}

/// Fine-tuning from a pre-trained checkpoint: the encoder's shape comes from the file.
#[napi(object)]
pub struct PretrainedOptions {
    pub num_classes: u32,
    pub head_scale: f64,
    pub drop_path: f64,
    /// Input side (the position embedding is resampled when it differs from the file's).
    pub img_size: Option<u32>,
    /// Input channels (the patch embedding is adapted 3 ↔ 1 when they differ).
    pub in_chans: Option<u32>,
    /// Preset name for a bare file whose shapes do not name one.
    pub preset: Option<String>,
    pub layer_decay: Option<f64>,
}

#[napi(object)]
#[derive(Clone)]
pub struct SegInitInfo {
    /// "scratch", or the file the encoder came from.
    pub source: String,
    /// Encoder tensors the file lacks (left at their initial values).
    pub missing: Vec<String>,
    /// File tensors the encoder does not use (MAE decoder, mask token, segmentor, heads …).
    pub unexpected: Vec<String>,
    /// Adaptations: position-embedding grid, input channels.
    pub adapted: Vec<String>,
    pub config_source: String,
}

#[napi(object)]
pub struct FtStepOptions {
    /// Base learning rate of this step (the schedule is the caller's); tensors get
    /// lr · layerDecay^(depth + 1 − layer id).
    pub lr: f64,
    /// AdamW decoupled weight decay (none on biases, norms, cls token, position embedding).
    pub weight_decay: f64,
}

#[napi(object)]
pub struct FtStepResult {
    /// dice + ce, before the update.
    pub loss: f64,
    /// Soft-Dice loss term (1 − soft Dice; multi-class: mean over the foreground classes).
    pub dice: f64,
    /// BCE-with-logits (binary) or cross-entropy (multi-class).
    pub ce: f64,
    pub step: i64,
}

#[napi(object)]
pub struct GreyImageInput {
    pub width: u32,
    pub height: u32,
    /// Grey in 8-bit units, row-major (rounded and clamped to 0..255, as the loader decodes).
    pub pixels: Float32Array,
}

#[napi(object)]
pub struct NormaliseOptions {
    /// One value per input channel (the loader's normalisation of training).
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

struct State {
    tuner: SegmentationTrainer,
    step: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> Result<std::sync::MutexGuard<'_, State>> {
    s.lock()
        .map_err(|_| failed("segmentation model state is poisoned by an earlier panic"))
}

fn err(e: candle_core::Error) -> Error {
    failed(candle_message(e))
}

fn check_step(o: &FtStepOptions) -> Result<()> {
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if !ok(o.lr) || !ok(o.weight_decay) {
        return Err(invalid(format!(
            "lr ({}) and weightDecay ({}) must be finite and >= 0",
            o.lr, o.weight_decay
        )));
    }
    Ok(())
}

fn layer_decay(v: Option<f64>) -> Result<f64> {
    let d = v.unwrap_or(LAYER_DECAY);
    if !(d > 0.0 && d <= 1.0) {
        return Err(invalid(format!("layerDecay = {d} must be in (0, 1]")));
    }
    Ok(d)
}

/// The segmentation ViT of VASOMIM.md §9 with its AdamW state.
#[napi]
pub struct SegModel {
    state: Shared,
    cfg: SegmentationConfig,
    init: Option<SegInitInfo>,
    extra: Option<String>,
}

impl SegModel {
    fn wrap(
        tuner: SegmentationTrainer,
        step: u64,
        init: Option<SegInitInfo>,
        extra: Option<String>,
    ) -> Self {
        SegModel {
            cfg: tuner.model.cfg.clone(),
            state: Arc::new(Mutex::new(State { tuner, step })),
            init,
            extra,
        }
    }
}

#[napi]
impl SegModel {
    /// A freshly initialised model (training from scratch), deterministic in `seed` (which also
    /// seeds the drop-path draws).
    #[napi(factory, catch_unwind)]
    pub fn create(
        config: SegModelConfig,
        seed: Option<i64>,
        options: Option<SegModelCreateOptions>,
    ) -> Result<SegModel> {
        let cfg = SegmentationConfig::from(&config);
        cfg.validate().map_err(invalid)?;
        let ld = layer_decay(options.and_then(|o| o.layer_decay))?;
        guarded("SegModel.create", || {
            let tuner =
                SegmentationTrainer::create(&cfg, &Device::Cpu, seed.unwrap_or(0) as u64, ld)
                    .map_err(err)?;
            Ok(SegModel::wrap(
                tuner,
                0,
                Some(SegInitInfo {
                    source: "scratch".into(),
                    missing: vec![],
                    unexpected: vec![],
                    adapted: vec![],
                    config_source: "config".into(),
                }),
                None,
            ))
        })
    }

    /// A new model whose encoder is read from a pre-trained checkpoint (ours, `encoder.safetensors`
    /// of `vasomim pretrain`, MAE `.pth`, timm safetensors); the head is initialised from `seed`.
    #[napi(catch_unwind, ts_return_type = "Promise<SegModel>")]
    pub fn from_pretrained(
        path: String,
        options: PretrainedOptions,
        seed: Option<i64>,
    ) -> Result<AsyncTask<PretrainedTask>> {
        layer_decay(options.layer_decay)?;
        Ok(AsyncTask::new(PretrainedTask {
            path: path.into(),
            options,
            seed: seed.unwrap_or(0) as u64,
        }))
    }

    /// Load a fine-tuned model saved by `save` (weights, BatchNorm buffers, optimizer, step).
    #[napi(catch_unwind, ts_return_type = "Promise<SegModel>")]
    pub fn load(path: String) -> AsyncTask<LoadTask> {
        AsyncTask::new(LoadTask { path: path.into() })
    }

    #[napi(getter)]
    pub fn config(&self) -> SegModelConfig {
        SegModelConfig::from(&self.cfg)
    }

    /// Where the encoder came from (create / fromPretrained); null for a loaded model.
    #[napi(getter)]
    pub fn init_info(&self) -> Option<SegInitInfo> {
        self.init.clone()
    }

    /// The caller's JSON saved with the model (`save(path, extra)`), null when none.
    #[napi(getter)]
    pub fn extra(&self) -> Option<String> {
        self.extra.clone()
    }

    #[napi(getter)]
    pub fn num_params(&self) -> Result<i64> {
        Ok(lock(&self.state)?.tuner.model.params.num_elements() as i64)
    }

    #[napi(getter)]
    pub fn step(&self) -> Result<i64> {
        Ok(lock(&self.state)?.step as i64)
    }

    #[napi(getter)]
    pub fn layer_decay(&self) -> Result<f64> {
        Ok(lock(&self.state)?.tuner.layer_decay)
    }

    /// Per trained tensor: name, lr multiplier, whether weight decay applies.
    #[napi]
    pub fn param_groups(&self) -> Result<Vec<ParamGroup>> {
        let s = lock(&self.state)?;
        Ok(s.tuner
            .opt
            .lr_scales()
            .into_iter()
            .zip(s.tuner.opt.groups())
            .map(|((name, lr_scale), (_, decay))| ParamGroup {
                name,
                lr_scale,
                decay,
            })
            .collect())
    }

    /// Save weights (encoder in timm names, head under `head.*`), BatchNorm buffers, AdamW state,
    /// config, step and `extra` (any JSON string) to a temporary file renamed into place.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String, extra: Option<String>) -> AsyncTask<SaveTask> {
        AsyncTask::new(SaveTask {
            state: self.state.clone(),
            path: path.into(),
            extra,
        })
    }

    /// One training step on a loader `Batch`: its images and maps (targets: binary = map > 0.5;
    /// K classes = round(map·255) as class id).
    #[napi(catch_unwind, ts_return_type = "Promise<FtStepResult>")]
    pub fn train_step_batch(
        &self,
        batch: &Batch,
        options: FtStepOptions,
    ) -> Result<AsyncTask<StepTask>> {
        check_step(&options)?;
        let inner = &batch.inner;
        let Some(maps) = &inner.maps else {
            return Err(invalid(
                "the batch has no masks (the loader needs a map for every sample)",
            ));
        };
        let e = &self.cfg.encoder;
        if inner.channels != e.in_chans || inner.size != e.img_size {
            return Err(invalid(format!(
                "the batch is {} channel(s) at {}², the model takes {} at {}²",
                inner.channels, inner.size, e.in_chans, e.img_size
            )));
        }
        Ok(AsyncTask::new(StepTask {
            state: self.state.clone(),
            data: Some((inner.images.clone(), maps.clone())),
            n: inner.n,
            options,
        }))
    }

    /// One training step on flat arrays: images (B, C, S, S) normalised, maps (B, 1, S, S) in
    /// [0, 1] (mask / 255), S the model's input side.
    #[napi(catch_unwind, ts_return_type = "Promise<FtStepResult>")]
    pub fn train_step(
        &self,
        images: Float32Array,
        maps: Float32Array,
        options: FtStepOptions,
    ) -> Result<AsyncTask<StepTask>> {
        check_step(&options)?;
        let b = self.batch_of(&images)?;
        let s = self.cfg.encoder.img_size;
        if maps.len() != b * s * s {
            return Err(invalid(format!(
                "maps has {} values, expected B*1*S*S = {b}*1*{s}*{s}",
                maps.len()
            )));
        }
        if let Some(i) = maps.iter().position(|v| !(0.0..=1.0).contains(v)) {
            return Err(invalid(format!(
                "maps[{i}] = {} is outside [0, 1]",
                maps[i]
            )));
        }
        Ok(AsyncTask::new(StepTask {
            state: self.state.clone(),
            data: Some((images.to_vec(), maps.to_vec())),
            n: b,
            options,
        }))
    }

    /// Eval-mode probabilities (B, K, S, S) of normalised images (B, C, S, S).
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array>")]
    pub fn predict(&self, images: Float32Array) -> Result<AsyncTask<PredictTask>> {
        let b = self.batch_of(&images)?;
        Ok(AsyncTask::new(PredictTask {
            state: self.state.clone(),
            images: Some(images.to_vec()),
            n: b,
        }))
    }

    /// Probabilities of grey images of any size at their own size: resized to the model's input
    /// (Pillow bicubic, as the loader), normalised, predicted as one batch, each of the K maps
    /// resized back bilinearly. One class-major (K, H, W) array per image.
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array[]>")]
    pub fn predict_images(
        &self,
        images: Vec<GreyImageInput>,
        options: NormaliseOptions,
    ) -> Result<AsyncTask<PredictImagesTask>> {
        let c = self.cfg.encoder.in_chans;
        if options.mean.len() != c
            || options.std.len() != c
            || options.std.iter().any(|v| v.is_nan() || *v <= 0.0)
        {
            return Err(invalid(format!(
                "mean and std need {c} value(s) each (std > 0)"
            )));
        }
        let mut data = Vec::with_capacity(images.len());
        for (i, im) in images.iter().enumerate() {
            let (w, h) = (im.width as usize, im.height as usize);
            if w == 0 || h == 0 || im.pixels.len() != w * h {
                return Err(invalid(format!(
                    "images[{i}]: {} pixels for {w}x{h}",
                    im.pixels.len()
                )));
            }
            data.push((
                im.pixels
                    .iter()
                    .map(|v| v.round().clamp(0.0, 255.0) as u8)
                    .collect::<Vec<u8>>(),
                w,
                h,
            ));
        }
        Ok(AsyncTask::new(PredictImagesTask {
            state: self.state.clone(),
            images: data,
            mean: options.mean.iter().map(|&v| v as f32).collect(),
            std: options.std.iter().map(|&v| v as f32).collect(),
        }))
    }
}

impl SegModel {
    fn batch_of(&self, images: &[f32]) -> Result<usize> {
        let e = &self.cfg.encoder;
        let per = e.in_chans * e.img_size * e.img_size;
        if images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(invalid(format!(
                "images has {} values, not a positive multiple of C*S*S = {}*{}*{} = {per}",
                images.len(),
                e.in_chans,
                e.img_size,
                e.img_size
            )));
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!("images[{i}] is not finite")));
        }
        Ok(images.len() / per)
    }
}

#[napi(object)]
pub struct ParamGroup {
    pub name: String,
    pub lr_scale: f64,
    pub decay: bool,
}

pub struct PretrainedTask {
    path: PathBuf,
    options: PretrainedOptions,
    seed: u64,
}

impl Task for PretrainedTask {
    type Output = SegModel;
    type JsValue = SegModel;
    fn compute(&mut self) -> Result<SegModel> {
        guarded("SegModel.fromPretrained", || {
            let o = &self.options;
            let opts = LoadOptions {
                preset: o.preset.clone(),
                img_size: o.img_size.map(|v| v as usize),
                in_chans: o.in_chans.map(|v| v as usize),
            };
            let p = self.path.display().to_string();
            let named = |e: candle_core::Error| {
                let m = candle_message(e);
                failed(if m.contains(&p) {
                    m
                } else {
                    format!("{p}: {m}")
                })
            };
            let encoder = checkpoint::load(&self.path, &opts, &Device::Cpu)
                .map_err(named)?
                .model
                .cfg;
            let cfg = SegmentationConfig {
                encoder,
                num_classes: o.num_classes as usize,
                head_scale: o.head_scale,
                drop_path: o.drop_path,
            };
            cfg.validate()
                .map_err(|e| invalid(format!("{}: {e}", self.path.display())))?;
            let mut model = SegmentationViT::new(&cfg, &Device::Cpu, self.seed).map_err(err)?;
            let r =
                ckpt::init_encoder(&mut model, &self.path, o.preset.as_deref()).map_err(named)?;
            let tuner = SegmentationTrainer::new(model, layer_decay(o.layer_decay)?, self.seed)
                .map_err(err)?;
            Ok(SegModel::wrap(
                tuner,
                0,
                Some(SegInitInfo {
                    source: self.path.display().to_string(),
                    missing: r.missing,
                    unexpected: r.unexpected,
                    adapted: r.adapted,
                    config_source: r.config_source,
                }),
                None,
            ))
        })
    }
    fn resolve(&mut self, _env: Env, m: SegModel) -> Result<SegModel> {
        Ok(m)
    }
}

pub struct LoadTask {
    path: PathBuf,
}

impl Task for LoadTask {
    type Output = SegModel;
    type JsValue = SegModel;
    fn compute(&mut self) -> Result<SegModel> {
        guarded("SegModel.load", || {
            let l = ckpt::load(&self.path, &Device::Cpu).map_err(err)?;
            Ok(SegModel::wrap(l.tuner, l.step, None, l.extra))
        })
    }
    fn resolve(&mut self, _env: Env, m: SegModel) -> Result<SegModel> {
        Ok(m)
    }
}

pub struct SaveTask {
    state: Shared,
    path: PathBuf,
    extra: Option<String>,
}

impl Task for SaveTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> Result<()> {
        guarded("SegModel.save", || {
            let s = lock(&self.state)?;
            ckpt::save(&self.path, &s.tuner, s.step, self.extra.as_deref())
                .map_err(|e| failed(format!("{}: {}", self.path.display(), candle_message(e))))
        })
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

pub struct StepTask {
    state: Shared,
    data: Option<(Vec<f32>, Vec<f32>)>,
    n: usize,
    options: FtStepOptions,
}

impl Task for StepTask {
    type Output = (SegmentationLoss, u64);
    type JsValue = FtStepResult;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("SegModel.trainStep", || {
            let (images, maps) = self
                .data
                .take()
                .ok_or_else(|| failed("trainStep task ran twice"))?;
            let mut s = lock(&self.state)?;
            let e = s.tuner.cfg().encoder.clone();
            let (b, c, sz) = (self.n, e.in_chans, e.img_size);
            let dev = Device::Cpu;
            let x = Tensor::from_vec(images, (b, c, sz, sz), &dev).map_err(err)?;
            let m = Tensor::from_vec(maps, (b, 1, sz, sz), &dev).map_err(err)?;
            let t = s
                .tuner
                .targets_from_maps(&m)
                .map_err(|e| invalid(candle_message(e)))?;
            let loss = s
                .tuner
                .train_step(&x, &t, self.options.lr, self.options.weight_decay)
                .map_err(err)?;
            s.step += 1;
            Ok((loss, s.step))
        })
    }
    fn resolve(&mut self, _env: Env, (l, step): Self::Output) -> Result<FtStepResult> {
        Ok(FtStepResult {
            loss: l.loss,
            dice: l.dice,
            ce: l.ce,
            step: step as i64,
        })
    }
}

pub struct PredictTask {
    state: Shared,
    images: Option<Vec<f32>>,
    n: usize,
}

impl Task for PredictTask {
    type Output = Vec<f32>;
    type JsValue = Float32Array;
    fn compute(&mut self) -> Result<Vec<f32>> {
        guarded("SegModel.predict", || {
            let images = self
                .images
                .take()
                .ok_or_else(|| failed("predict task ran twice"))?;
            let s = lock(&self.state)?;
            let e = &s.tuner.cfg().encoder;
            let x = Tensor::from_vec(
                images,
                (self.n, e.in_chans, e.img_size, e.img_size),
                &Device::Cpu,
            )
            .map_err(err)?;
            s.tuner
                .predict(&x)
                .and_then(|p| p.flatten_all()?.to_vec1::<f32>())
                .map_err(err)
        })
    }
    fn resolve(&mut self, _env: Env, v: Vec<f32>) -> Result<Float32Array> {
        Ok(Float32Array::new(v))
    }
}

pub struct PredictImagesTask {
    state: Shared,
    images: Vec<(Vec<u8>, usize, usize)>,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Task for PredictImagesTask {
    type Output = Vec<Vec<f32>>;
    type JsValue = Vec<Float32Array>;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("SegModel.predictImages", || {
            let s = lock(&self.state)?;
            let views: Vec<(&[u8], usize, usize)> = self
                .images
                .iter()
                .map(|(p, w, h)| (p.as_slice(), *w, *h))
                .collect();
            if views.is_empty() {
                return Ok(vec![]);
            }
            s.tuner
                .predict_grey(&views, &self.mean, &self.std)
                .map_err(err)
        })
    }
    fn resolve(&mut self, _env: Env, v: Self::Output) -> Result<Self::JsValue> {
        Ok(v.into_iter().map(Float32Array::new).collect())
    }
}
