//! The `DetectionModel` handle: one `DetectionTrainer` of the core (the ViTDet stenosis
//! detector, its AdamW state, step counter and device) behind a mutex. Frames cross as grey
//! 8-bit planes with their placements (LSJ draws of the caller) and boxes in frame pixels.

use std::path::Path;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde::Deserialize;
use vasomim_core::detection::boxes::BoxF;
use vasomim_core::detection::heads::Detections;
use vasomim_core::detection::input::Placement;
use vasomim_core::detection::model::DetectionConfig;
use vasomim_core::trainer::detection::{DetectionLoss, DetectionTrainer, LAYER_DECAY};
use vasomim_core::trainer::segmentation::check_step_options;

use crate::segmentation::{GreyImageInput, NormaliseOptions};
use crate::{config_from_js, config_to_js, device, guarded, invalid, job, rejected, Pending, Shared};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateOptions {
    layer_decay: Option<f64>,
    device: Option<String>,
    /// Pre-trained file of the encoder (fromPretrained), and the preset of a bare one.
    preset: Option<String>,
}

#[napi(object)]
#[derive(Clone)]
pub struct DetectionInitInfo {
    /// "scratch", or the file the encoder came from.
    pub source: String,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub adapted: Vec<String>,
    pub config_source: String,
}

#[napi(object)]
pub struct DetectionFrame {
    pub image: GreyImageInput,
    /// Resize factor, window corner (dx, dy) of the scaled frame, horizontal flip first.
    pub scale: f64,
    pub dx: u32,
    pub dy: u32,
    pub flip: bool,
    /// Boxes [x1, y1, x2, y2, …] in frame pixels, and their class indices.
    pub boxes: Vec<f64>,
    pub classes: Vec<u32>,
}

#[napi(object)]
pub struct DetectionStepOptions {
    pub lr: f64,
    pub weight_decay: f64,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

#[napi(object)]
pub struct DetectionStepResult {
    pub loss: f64,
    pub rpn_cls: f64,
    pub rpn_loc: f64,
    pub cls: f64,
    pub box_reg: f64,
    pub step: i64,
}

#[napi(object)]
pub struct DetectionOutput {
    /// [x1, y1, x2, y2, …] in frame pixels, best first.
    pub boxes: Vec<f64>,
    pub scores: Vec<f64>,
    pub classes: Vec<u32>,
}

fn layer_decay(v: Option<f64>) -> Result<f64> {
    let d = v.unwrap_or(LAYER_DECAY);
    if !(d > 0.0 && d <= 1.0) {
        return Err(invalid(format!("layerDecay = {d} must be in (0, 1]")));
    }
    Ok(d)
}

fn pixels(im: &GreyImageInput) -> (Vec<u8>, usize, usize) {
    let px = im.pixels.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();
    (px, im.width as usize, im.height as usize)
}

fn result(l: DetectionLoss, step: u64) -> DetectionStepResult {
    DetectionStepResult {
        loss: l.loss,
        rpn_cls: l.rpn_cls,
        rpn_loc: l.rpn_loc,
        cls: l.cls,
        box_reg: l.box_reg,
        step: step as i64,
    }
}

fn output(d: Detections) -> DetectionOutput {
    DetectionOutput {
        boxes: d.boxes.iter().flat_map(|b| b.iter().map(|&v| v as f64)).collect(),
        scores: d.scores.iter().map(|&v| v as f64).collect(),
        classes: d.classes.iter().map(|&c| c as u32).collect(),
    }
}

fn floats(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The ViTDet detector with its training state.
#[napi]
pub struct DetectionModel {
    state: Shared<DetectionTrainer>,
    cfg: DetectionConfig,
    init: Option<DetectionInitInfo>,
    extra: Option<String>,
}

impl DetectionModel {
    fn wrap(t: DetectionTrainer, init: Option<DetectionInitInfo>, extra: Option<String>) -> Self {
        DetectionModel { cfg: t.model.cfg.clone(), state: Shared::new(t, "detection model"), init, extra }
    }
}

#[napi]
impl DetectionModel {
    /// A freshly initialised detector (training from scratch), deterministic in `seed`.
    /// `config`: the core's `DetectionConfig` (camelCase).
    #[napi(
        factory,
        catch_unwind,
        ts_args_type = "config: object, seed?: number, options?: { layerDecay?: number; device?: string }"
    )]
    pub fn create(
        config: serde_json::Value,
        seed: Option<i64>,
        options: Option<serde_json::Value>,
    ) -> Result<DetectionModel> {
        let cfg: DetectionConfig = config_from_js(config, "detection config")?;
        cfg.validate().map_err(invalid)?;
        let o: CreateOptions = config_from_js(options.unwrap_or(serde_json::json!({})), "options")?;
        let (ld, dev) = (layer_decay(o.layer_decay)?, device(o.device)?);
        guarded("DetectionModel.create", || {
            let t = DetectionTrainer::create(&cfg, &dev, seed.unwrap_or(0) as u64, ld).map_err(crate::err)?;
            let init = DetectionInitInfo {
                source: "scratch".into(),
                missing: vec![],
                unexpected: vec![],
                adapted: vec![],
                config_source: "config".into(),
            };
            Ok(DetectionModel::wrap(t, Some(init), None))
        })
    }

    /// A new detector whose encoder is read from a pre-trained file (ours, MAE `.pth`, timm);
    /// `config.encoder` gives the input side and channels, the file the encoder's shape.
    #[napi(
        catch_unwind,
        ts_args_type = "path: string, config: object, seed?: number, options?: { layerDecay?: number; device?: string; preset?: string }",
        ts_return_type = "Promise<DetectionModel>"
    )]
    pub fn from_pretrained(
        path: String,
        config: serde_json::Value,
        seed: Option<i64>,
        options: Option<serde_json::Value>,
    ) -> Result<Pending<DetectionModel>> {
        let cfg: DetectionConfig = config_from_js(config, "detection config")?;
        let o: CreateOptions = config_from_js(options.unwrap_or(serde_json::json!({})), "options")?;
        let (ld, dev, seed) = (layer_decay(o.layer_decay)?, device(o.device)?, seed.unwrap_or(0) as u64);
        Ok(job("DetectionModel.fromPretrained", move || {
            let (t, r) = DetectionTrainer::from_pretrained(Path::new(&path), &cfg, o.preset.as_deref(), seed, ld, &dev)
                .map_err(crate::err)?;
            let info = DetectionInitInfo {
                source: path,
                missing: r.missing,
                unexpected: r.unexpected,
                adapted: r.adapted,
                config_source: r.config_source,
            };
            Ok(DetectionModel::wrap(t, Some(info), None))
        }))
    }

    /// Load a detector saved by `save` (weights, optimizer, step, extra).
    #[napi(catch_unwind, ts_return_type = "Promise<DetectionModel>")]
    pub fn load(path: String, device: Option<String>) -> Result<Pending<DetectionModel>> {
        let dev = crate::device(device)?;
        Ok(job("DetectionModel.load", move || {
            let (t, extra) = DetectionTrainer::load(Path::new(&path), &dev).map_err(crate::err)?;
            Ok(DetectionModel::wrap(t, None, extra))
        }))
    }

    /// The core's `DetectionConfig` (camelCase).
    #[napi(getter)]
    pub fn config(&self) -> Result<serde_json::Value> {
        config_to_js(&self.cfg)
    }

    #[napi(getter)]
    pub fn init_info(&self) -> Option<DetectionInitInfo> {
        self.init.clone()
    }

    /// The caller's JSON saved with the model, null when none.
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

    /// Save weights, AdamW state, config, step and `extra` atomically.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String, extra: Option<String>) -> Pending<()> {
        self.state.task("DetectionModel.save", move |t| t.save(Path::new(&path), extra.as_deref()))
    }

    /// One training step on frames with their placements and boxes.
    #[napi(catch_unwind, ts_return_type = "Promise<DetectionStepResult>")]
    pub fn train_step(
        &self,
        frames: Vec<DetectionFrame>,
        options: DetectionStepOptions,
    ) -> Result<Pending<DetectionStepResult>> {
        check_step_options(options.lr, options.weight_decay).map_err(rejected)?;
        if frames.is_empty() {
            return Err(invalid("trainStep: no frames"));
        }
        let mut data = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            if f.boxes.len() != 4 * f.classes.len() {
                return Err(invalid(format!(
                    "frames[{i}]: {} box values for {} classes",
                    f.boxes.len(),
                    f.classes.len()
                )));
            }
            let boxes: Vec<BoxF> =
                f.boxes.chunks(4).map(|c| [c[0] as f32, c[1] as f32, c[2] as f32, c[3] as f32]).collect();
            let place = Placement { scale: f.scale, dx: f.dx as usize, dy: f.dy as usize, flip: f.flip };
            let classes: Vec<usize> = f.classes.iter().map(|&c| c as usize).collect();
            data.push((pixels(&f.image), place, boxes, classes));
        }
        let (mean, std) = (floats(&options.mean), floats(&options.std));
        let (lr, wd) = (options.lr, options.weight_decay);
        Ok(self.state.task("DetectionModel.trainStep", move |t| {
            let frames: Vec<(&[u8], usize, usize)> = data.iter().map(|d| (d.0 .0.as_slice(), d.0 .1, d.0 .2)).collect();
            let places: Vec<Placement> = data.iter().map(|d| d.1).collect();
            let boxes: Vec<Vec<BoxF>> = data.iter().map(|d| d.2.clone()).collect();
            let classes: Vec<Vec<usize>> = data.iter().map(|d| d.3.clone()).collect();
            let l = t.step_frames(&frames, &places, &boxes, &classes, (&mean, &std), lr, wd)?;
            Ok(result(l, t.step))
        }))
    }

    /// Detections of grey frames of any size, in frame pixels (score > the config's threshold,
    /// NMS per class, best first).
    #[napi(catch_unwind, ts_return_type = "Promise<DetectionOutput[]>")]
    pub fn detect(&self, images: Vec<GreyImageInput>, options: NormaliseOptions) -> Pending<Vec<DetectionOutput>> {
        let data: Vec<(Vec<u8>, usize, usize)> = images.iter().map(pixels).collect();
        let (mean, std) = (floats(&options.mean), floats(&options.std));
        self.state.task("DetectionModel.detect", move |t| {
            let frames: Vec<(&[u8], usize, usize)> = data.iter().map(|(p, w, h)| (p.as_slice(), *w, *h)).collect();
            Ok(t.detect_frames(&frames, &mean, &std)?.into_iter().map(output).collect())
        })
    }
}
