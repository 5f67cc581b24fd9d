//! The `SegmentationModel` handle: one `SegmentationTrainer` of the core (the segmentation ViT —
//! pre-trained encoder + U-Net adapter head — its AdamW state, step counter and device) behind a
//! mutex.

use std::path::Path;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde::Deserialize;
use vasomim_core::nn::segmentation::SegmentationConfig;
use vasomim_core::trainer::segmentation::{
    check_step_options, PretrainedInit, SegmentationLoss, SegmentationTrainer, LAYER_DECAY,
};

use crate::data::Batch;
use crate::{config_from_js, config_to_js, device, guarded, invalid, job, rejected, Pending, Shared};

#[napi(object)]
#[derive(Default)]
pub struct SegmentationCreateOptions {
    /// Layer-wise LR decay (default 0.75).
    pub layer_decay: Option<f64>,
    /// `cpu` (default), `cuda` or `cuda:N`.
    pub device: Option<String>,
}

/// Fine-tuning from a pre-trained checkpoint (the encoder's shape comes from the file): the
/// core's `PretrainedInit` and the device.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PretrainedOptions {
    #[serde(flatten)]
    init: PretrainedInit,
    device: Option<String>,
}

#[napi(object)]
#[derive(Clone)]
pub struct SegmentationInitInfo {
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
pub struct SegmentationStepOptions {
    /// Base learning rate of this step (the schedule is the caller's); tensors get
    /// lr · layerDecay^(depth + 1 − layer id).
    pub lr: f64,
    /// AdamW decoupled weight decay (none on biases, norms, cls token, position embedding).
    pub weight_decay: f64,
}

#[napi(object)]
pub struct SegmentationStepResult {
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

#[napi(object)]
pub struct ParamGroup {
    pub name: String,
    pub lr_scale: f64,
    pub decay: bool,
}

fn layer_decay(v: Option<f64>) -> Result<f64> {
    let d = v.unwrap_or(LAYER_DECAY);
    if !(d > 0.0 && d <= 1.0) {
        return Err(invalid(format!("layerDecay = {d} must be in (0, 1]")));
    }
    Ok(d)
}

fn step_result(l: SegmentationLoss, step: u64) -> SegmentationStepResult {
    let (loss, dice, ce, step) = (l.loss, l.dice, l.ce, step as i64);
    SegmentationStepResult { loss, dice, ce, step }
}

/// The segmentation ViT of METHOD.md §9 with its training state.
#[napi]
pub struct SegmentationModel {
    state: Shared<SegmentationTrainer>,
    cfg: SegmentationConfig,
    init: Option<SegmentationInitInfo>,
    extra: Option<String>,
}

impl SegmentationModel {
    fn wrap(t: SegmentationTrainer, init: Option<SegmentationInitInfo>, extra: Option<String>) -> Self {
        SegmentationModel { cfg: t.model.cfg.clone(), state: Shared::new(t, "segmentation model"), init, extra }
    }
}

#[napi]
impl SegmentationModel {
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

    /// A freshly initialised model (training from scratch) on `options.device` (default cpu),
    /// deterministic in `seed` (which also seeds the drop-path draws). `config`: `{ encoder,
    /// numClasses, headScale, dropPath }` (camelCase; the encoder as `Model.config`).
    #[napi(factory, catch_unwind)]
    pub fn create(
        config: serde_json::Value,
        seed: Option<i64>,
        options: Option<SegmentationCreateOptions>,
    ) -> Result<SegmentationModel> {
        let cfg: SegmentationConfig = config_from_js(config, "segmentation config")?;
        cfg.validate().map_err(invalid)?;
        let o = options.unwrap_or_default();
        let (ld, dev) = (layer_decay(o.layer_decay)?, device(o.device)?);
        guarded("SegmentationModel.create", || {
            let t = SegmentationTrainer::create(&cfg, &dev, seed.unwrap_or(0) as u64, ld).map_err(crate::err)?;
            let init = SegmentationInitInfo {
                source: "scratch".into(),
                missing: vec![],
                unexpected: vec![],
                adapted: vec![],
                config_source: "config".into(),
            };
            Ok(SegmentationModel::wrap(t, Some(init), None))
        })
    }

    /// A new model whose encoder is read from a pre-trained checkpoint (ours, `encoder.safetensors`
    /// of `vasomim pretrain`, MAE `.pth`, timm safetensors); the head is initialised from `seed`.
    #[napi(
        catch_unwind,
        ts_args_type = "path: string, options: { numClasses: number; headScale: number; \
            dropPath: number; imgSize?: number; inChans?: number; preset?: string; \
            layerDecay?: number; device?: string }, seed?: number | undefined | null",
        ts_return_type = "Promise<SegmentationModel>"
    )]
    pub fn from_pretrained(
        path: String,
        options: serde_json::Value,
        seed: Option<i64>,
    ) -> Result<Pending<SegmentationModel>> {
        let o: PretrainedOptions = config_from_js(options, "pretrained options")?;
        layer_decay(Some(o.init.layer_decay))?;
        let (init, dev, seed) = (o.init, device(o.device)?, seed.unwrap_or(0) as u64);
        Ok(job("SegmentationModel.fromPretrained", move || {
            let (t, r) =
                SegmentationTrainer::from_pretrained(Path::new(&path), &init, seed, &dev).map_err(crate::err)?;
            let info = SegmentationInitInfo {
                source: path,
                missing: r.missing,
                unexpected: r.unexpected,
                adapted: r.adapted,
                config_source: r.config_source,
            };
            Ok(SegmentationModel::wrap(t, Some(info), None))
        }))
    }

    /// Load a fine-tuned model saved by `save` (weights, BatchNorm buffers, optimizer, step).
    #[napi(catch_unwind, ts_return_type = "Promise<SegmentationModel>")]
    pub fn load(path: String, device: Option<String>) -> Result<Pending<SegmentationModel>> {
        let dev = crate::device(device)?;
        Ok(job("SegmentationModel.load", move || {
            let (t, extra) = SegmentationTrainer::load(Path::new(&path), &dev).map_err(crate::err)?;
            Ok(SegmentationModel::wrap(t, None, extra))
        }))
    }

    /// `{ encoder, numClasses, headScale, dropPath }` (camelCase).
    #[napi(getter)]
    pub fn config(&self) -> Result<serde_json::Value> {
        config_to_js(&self.cfg)
    }

    /// Where the encoder came from (create / fromPretrained); null for a loaded model.
    #[napi(getter)]
    pub fn init_info(&self) -> Option<SegmentationInitInfo> {
        self.init.clone()
    }

    /// The caller's JSON saved with the model (`save(path, extra)`), null when none.
    #[napi(getter)]
    pub fn extra(&self) -> Option<String> {
        self.extra.clone()
    }

    #[napi(getter)]
    pub fn num_params(&self) -> Result<i64> {
        Ok(self.state.lock()?.model.params.num_elements() as i64)
    }

    #[napi(getter)]
    pub fn step(&self) -> Result<i64> {
        Ok(self.state.lock()?.step as i64)
    }

    #[napi(getter)]
    pub fn layer_decay(&self) -> Result<f64> {
        Ok(self.state.lock()?.layer_decay)
    }

    /// Per trained tensor: name, lr multiplier, whether weight decay applies.
    #[napi]
    pub fn param_groups(&self) -> Result<Vec<ParamGroup>> {
        let s = self.state.lock()?;
        let groups = s.opt.lr_scales().into_iter().zip(s.opt.groups());
        Ok(groups.map(|((name, lr_scale), (_, decay))| ParamGroup { name, lr_scale, decay }).collect())
    }

    /// Save weights (encoder in timm names, head under `head.*`), BatchNorm buffers, AdamW state,
    /// config, step and `extra` (any JSON string) to a temporary file renamed into place.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String, extra: Option<String>) -> Pending<()> {
        self.state.task("SegmentationModel.save", move |t| t.save(Path::new(&path), extra.as_deref()))
    }

    /// One training step on a loader `Batch`: its images and maps (targets: binary = map > 0.5;
    /// K classes = round(map·255) as class id).
    #[napi(catch_unwind, ts_return_type = "Promise<SegmentationStepResult>")]
    pub fn train_step_batch(
        &self,
        batch: &Batch,
        options: SegmentationStepOptions,
    ) -> Result<Pending<SegmentationStepResult>> {
        check_step_options(options.lr, options.weight_decay).map_err(rejected)?;
        self.state.check(|t| t.check_loader_batch(&batch.inner))?;
        let (b, o) = (batch.inner.clone(), options);
        Ok(self.state.task("SegmentationModel.trainStepBatch", move |t| {
            let l = t.step_batch(&b, o.lr, o.weight_decay)?;
            Ok(step_result(l, t.step))
        }))
    }

    /// One training step on flat arrays: images (B, C, S, S) normalised, maps (B, 1, S, S) in
    /// [0, 1] (mask / 255), S the model's input side.
    #[napi(catch_unwind, ts_return_type = "Promise<SegmentationStepResult>")]
    pub fn train_step(
        &self,
        images: Float32Array,
        maps: Float32Array,
        options: SegmentationStepOptions,
    ) -> Result<Pending<SegmentationStepResult>> {
        check_step_options(options.lr, options.weight_decay).map_err(rejected)?;
        self.state.check(|t| t.check_maps(&maps, t.batch_of(&images)?))?;
        let (x, m, o) = (images.to_vec(), maps.to_vec(), options);
        Ok(self.state.task("SegmentationModel.trainStep", move |t| {
            let l = t.step_arrays(&x, &m, o.lr, o.weight_decay)?;
            Ok(step_result(l, t.step))
        }))
    }

    /// Eval-mode probabilities (B, K, S, S) of normalised images (B, C, S, S).
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array>")]
    pub fn predict(&self, images: Float32Array) -> Result<Pending<Float32Array>> {
        self.state.check(|t| t.batch_of(&images))?;
        let x = images.to_vec();
        Ok(self.state.task("SegmentationModel.predict", move |t| Ok(t.predict_arrays(&x)?.into())))
    }

    /// Probabilities of grey images of any size at their own size: resized to the model's input
    /// (Pillow bicubic, as the loader), normalised, predicted as one batch, each of the K maps
    /// resized back bilinearly. One class-major (K, H, W) array per image.
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array[]>")]
    pub fn predict_images(
        &self,
        images: Vec<GreyImageInput>,
        options: NormaliseOptions,
    ) -> Result<Pending<Vec<Float32Array>>> {
        let data: Vec<(Vec<u8>, usize, usize)> = images
            .iter()
            .map(|im| {
                let px = im.pixels.iter().map(|v| v.round().clamp(0.0, 255.0) as u8);
                (px.collect(), im.width as usize, im.height as usize)
            })
            .collect();
        let o = &options;
        let mean: Vec<f32> = o.mean.iter().map(|&v| v as f32).collect();
        let std: Vec<f32> = o.std.iter().map(|&v| v as f32).collect();
        Ok(self.state.task("SegmentationModel.predictImages", move |t| {
            if data.is_empty() {
                return Ok(vec![]);
            }
            let views: Vec<(&[u8], usize, usize)> = data.iter().map(|(p, w, h)| (p.as_slice(), *w, *h)).collect();
            let probs = t.predict_grey(&views, &mean, &std)?;
            Ok(probs.into_iter().map(Float32Array::new).collect())
        }))
    }
}
