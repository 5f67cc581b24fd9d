//! The `Model` handle: one `PretrainTrainer` of the core (a VasoMIM MAE, its AdamW state, step
//! counter, device and frozen segmentor) behind a mutex, so overlapping Promises serialise.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use vasomim_core::checkpoint::{LoadOptions, LoadReport};
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::trainer::pretrain::{MaskArrays, MaskBuf, PretrainStats, PretrainTrainer, StepParams};

use crate::{config_from_js, config_to_js, device, guarded, invalid, job, rejected, Pending, Shared};

#[napi(object)]
#[derive(Default)]
pub struct LoadModelOptions {
    /// Preset name for a file without a config whose shapes match several presets' encoders.
    pub preset: Option<String>,
    pub img_size: Option<u32>,
    pub in_chans: Option<u32>,
    /// State-dict names or prefixes the optimizer leaves alone.
    pub frozen: Option<Vec<String>>,
    /// `cpu` (default), `cuda` or `cuda:N`.
    pub device: Option<String>,
}

#[napi(object)]
#[derive(Clone)]
pub struct LoadInfo {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub adapted: Vec<String>,
    pub config_source: String,
    pub step: i64,
    /// The training loop's state saved by `saveTraining` (JSON), when present.
    pub loop_state: Option<String>,
}

/// Per-step hyper-parameters (the zod `StepOptionsSchema`'s output, camelCase, AdamW fields flat);
/// the learning-rate / weight-decay schedule is the caller's.
fn step_params(options: serde_json::Value) -> Result<StepParams> {
    let p: StepParams = config_from_js(options, "step options")?;
    p.validate().map_err(rejected)?;
    Ok(p)
}

#[napi(object)]
pub struct GuidanceResult {
    /// (B, L) per-patch mass of G = η·B + (1 − η)·P, patches row-major.
    pub mass: Float32Array,
    /// (B, L) per-patch mass of the vessel map alone; null when the batch has no maps.
    pub vessel: Option<Float32Array>,
    /// (B, 1, S, S) P = σ(S(img)) when asked for (pictures); null without a segmentor.
    pub prob: Option<Float32Array>,
}

#[napi(object)]
pub struct StepResult {
    /// Norm-pix reconstruction loss (before the update).
    pub loss_rec: f64,
    /// Consistency loss BCE(S(recon), P) when it is on (consWeight > 0).
    pub loss_cons: Option<f64>,
    /// Total loss L_rec + consWeight·L_cons.
    pub loss: f64,
    pub grad_norm: f64,
    /// Optimizer steps taken so far.
    pub step: i64,
}

#[napi(object)]
pub struct Reconstruction {
    /// (B, C, H, W) in the normalised input space.
    pub images: Float32Array,
    pub loss: f64,
}

#[napi(object)]
pub struct Features {
    /// (N, 2, D) row-major: cls after the final norm, mean of patch tokens after the final norm.
    pub data: Float32Array,
    pub shape: Vec<u32>,
}

fn step_result(s: PretrainStats, step: u64) -> StepResult {
    StepResult { loss_rec: s.loss_rec, loss_cons: s.loss_cons, loss: s.loss, grad_norm: s.grad_norm, step: step as i64 }
}

fn features(data: Vec<f32>, d: usize) -> Features {
    let shape = vec![(data.len() / (2 * d)) as u32, 2, d as u32];
    Features { data: data.into(), shape }
}

fn load_info(r: LoadReport, step: u64, loop_state: Option<String>) -> LoadInfo {
    LoadInfo {
        missing: r.missing,
        unexpected: r.unexpected,
        adapted: r.adapted,
        config_source: r.config_source,
        step: step as i64,
        loop_state,
    }
}

/// A VasoMIM masked autoencoder (ViT encoder + decoder) with its training state.
#[napi]
pub struct Model {
    pub(crate) state: Shared<PretrainTrainer>,
    cfg: MaeConfig,
    load_info: Option<LoadInfo>,
}

impl Model {
    fn wrap(t: PretrainTrainer, load_info: Option<LoadInfo>) -> Self {
        Model { cfg: t.cfg().clone(), state: Shared::new(t, "model"), load_info }
    }

    /// The caller's masking, checked, copied for the pool thread.
    fn masks(&self, b: usize, k: &[u32], r: &[u32], m: &[f32]) -> Result<MaskBuf> {
        let masks = MaskBuf::new(MaskArrays { ids_keep: k, ids_restore: r, mask: m });
        self.state.check(|t| t.check_masking(b, masks.arrays()))?;
        Ok(masks)
    }

    fn batch_of(&self, len: usize) -> Result<usize> {
        self.state.check(|t| t.batch_of(len))
    }
}

#[napi]
impl Model {
    /// A freshly initialised model (MAE init, deterministic in `seed`) on `device` (default
    /// cpu). `config`: every field of the model config (camelCase). `frozen`: state-dict names
    /// or prefixes (`patch_embed`, `blocks.0`) the optimizer leaves alone.
    #[napi(factory, catch_unwind)]
    pub fn create(
        config: serde_json::Value,
        seed: Option<i64>,
        frozen: Option<Vec<String>>,
        device: Option<String>,
    ) -> Result<Model> {
        let cfg: MaeConfig = config_from_js(config, "model config")?;
        cfg.validate().map_err(invalid)?;
        let dev = crate::device(device)?;
        guarded("Model.create", || {
            let model = vasomim_core::nn::mae::MaskedAutoencoder::new(&cfg, &dev, seed.unwrap_or(0) as u64)
                .map_err(crate::err)?;
            let t = PretrainTrainer::new(model, &frozen.unwrap_or_default()).map_err(crate::err)?;
            Ok(Model::wrap(t, None))
        })
    }

    /// Load a checkpoint (ours, timm safetensors, MAE `.pth`); see `loadInfo`.
    #[napi(catch_unwind, ts_return_type = "Promise<Model>")]
    pub fn load(path: String, options: Option<LoadModelOptions>) -> Result<Pending<Model>> {
        let o = options.unwrap_or_default();
        let dev = device(o.device)?;
        let opts = LoadOptions {
            preset: o.preset,
            img_size: o.img_size.map(|v| v as usize),
            in_chans: o.in_chans.map(|v| v as usize),
        };
        let frozen = o.frozen.unwrap_or_default();
        Ok(job("Model.load", move || {
            let l = PretrainTrainer::load(Path::new(&path), &opts, &frozen, &dev).map_err(crate::err)?;
            let info = load_info(l.report, l.trainer.step, l.loop_state);
            Ok(Model::wrap(l.trainer, Some(info)))
        }))
    }

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

    /// What `Model.load` did (missing / unexpected / adapted keys); null for a created model.
    #[napi(getter)]
    pub fn load_info(&self) -> Option<LoadInfo> {
        self.load_info.clone()
    }

    /// The model config (camelCase fields, as `presetConfig` gives them).
    #[napi(getter)]
    pub fn config(&self) -> Result<serde_json::Value> {
        config_to_js(&self.cfg)
    }

    /// Number of trainable parameters.
    #[napi(getter)]
    pub fn num_params(&self) -> Result<i64> {
        Ok(self.state.lock()?.model.params.num_elements() as i64)
    }

    #[napi(getter)]
    pub fn step(&self) -> Result<i64> {
        Ok(self.state.lock()?.step as i64)
    }

    /// Whether a frozen vessel segmentor is attached (needed for η < 1 and for L_cons).
    #[napi(getter)]
    pub fn has_segmentor(&self) -> Result<bool> {
        Ok(self.state.lock()?.has_segmentor())
    }

    /// Save parameters, position buffers, optimizer state, config and step (safetensors).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String) -> Pending<()> {
        self.state.task("Model.save", move |t| t.save(Path::new(&path), None))
    }

    /// Save like `save`, with the training loop's state (a JSON string) in the same file.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save_training(&self, path: String, loop_state: String) -> Pending<()> {
        self.state.task("Model.saveTraining", move |t| t.save(Path::new(&path), Some(&loop_state)))
    }

    /// Encoder only in timm's layout (`timm.create_model(..., num_classes=0)` loads it).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn export_timm(&self, path: String) -> Pending<()> {
        self.state.task("Model.exportTimm", move |t| t.export_timm(Path::new(&path)))
    }

    /// Attach the frozen vessel segmentor S (a UNeXt-S checkpoint: ours, the authors'
    /// `unext.pth`, or one under `seg_model.`), used in eval mode for the guidance map and L_cons.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn attach_segmentor(&self, path: String) -> Pending<()> {
        self.state.task("Model.attachSegmentor", move |t| t.attach_segmentor(Path::new(&path)))
    }

    /// One pre-training step on `images` (B, C, S, S normalised) with the caller's masking:
    /// `idsKeep` (B, K), `idsRestore` (B, L), `mask` (B, L; 1 = masked). Same step as
    /// `trainBatch` (L_cons included when consWeight > 0).
    #[napi(
        catch_unwind,
        ts_args_type = "images: Float32Array, idsKeep: Uint32Array, idsRestore: Uint32Array, \
            mask: Float32Array, options: { lr: number; weightDecay: number; beta1: number; beta2: number; eps: number; \
            clipGrad?: number; microBatches: number; consWeight: number }",
        ts_return_type = "Promise<StepResult>"
    )]
    pub fn train_step(
        &self,
        images: Float32Array,
        ids_keep: Uint32Array,
        ids_restore: Uint32Array,
        mask: Float32Array,
        options: serde_json::Value,
    ) -> Result<Pending<StepResult>> {
        let masks = self.masks(self.batch_of(images.len())?, &ids_keep, &ids_restore, &mask)?;
        let (p, images) = (step_params(options)?, images.to_vec());
        Ok(self.state.task("Model.trainStep", move |t| {
            let s = t.step(&images, masks.arrays(), &p)?;
            Ok(step_result(s, t.step))
        }))
    }

    /// One VasoMIM pre-training step on a loader batch (images never cross into JS) with the
    /// caller's masking; P of a preceding `guidance` call on the same batch is reused.
    #[napi(
        catch_unwind,
        ts_args_type = "batch: Batch, idsKeep: Uint32Array, idsRestore: Uint32Array, \
            mask: Float32Array, options: { lr: number; weightDecay: number; beta1: number; beta2: number; eps: number; \
            clipGrad?: number; microBatches: number; consWeight: number }",
        ts_return_type = "Promise<StepResult>"
    )]
    pub fn train_batch(
        &self,
        batch: &crate::data::Batch,
        ids_keep: Uint32Array,
        ids_restore: Uint32Array,
        mask: Float32Array,
        options: serde_json::Value,
    ) -> Result<Pending<StepResult>> {
        self.state.check(|t| t.check_loader_batch(&batch.inner))?;
        let masks = self.masks(batch.inner.n, &ids_keep, &ids_restore, &mask)?;
        let (p, b) = (step_params(options)?, batch.inner.clone());
        Ok(self.state.task("Model.trainBatch", move |t| {
            let s = t.step_batch(&b, masks.arrays(), &p)?;
            Ok(step_result(s, t.step))
        }))
    }

    /// VasoMIM guidance of a loader batch: per-patch mass of G = η·B + (1 − η)·P for the
    /// masking policy (and of B alone, for the vessel-share metric). P is kept for the
    /// `trainBatch` call on the same batch.
    #[napi(catch_unwind, ts_return_type = "Promise<GuidanceResult>")]
    pub fn guidance(
        &self,
        batch: &crate::data::Batch,
        eta: f64,
        with_prob: Option<bool>,
    ) -> Result<Pending<GuidanceResult>> {
        self.state.check(|t| t.check_loader_batch(&batch.inner))?;
        if !(0.0..=1.0).contains(&eta) {
            return Err(invalid(format!("eta = {eta} must be in [0, 1]")));
        }
        let (b, with_prob) = (batch.inner.clone(), with_prob.unwrap_or(false));
        Ok(self.state.task("Model.guidance", move |t| {
            let g = t.guidance_of(&b, eta)?;
            let flat =
                |x: &Tensor| -> candle_core::Result<Float32Array> { Ok(x.flatten_all()?.to_vec1::<f32>()?.into()) };
            let prob = g.prob.as_ref().filter(|_| with_prob);
            Ok(GuidanceResult {
                mass: flat(&g.mass)?,
                vessel: g.vessel.as_ref().map(flat).transpose()?,
                prob: prob.map(flat).transpose()?,
            })
        }))
    }

    /// Reconstruction (B, C, S, S) and loss for a masked batch, without training.
    #[napi(catch_unwind, ts_return_type = "Promise<Reconstruction>")]
    pub fn reconstruct(
        &self,
        images: Float32Array,
        ids_keep: Uint32Array,
        ids_restore: Uint32Array,
        mask: Float32Array,
    ) -> Result<Pending<Reconstruction>> {
        let masks = self.masks(self.batch_of(images.len())?, &ids_keep, &ids_restore, &mask)?;
        let images = images.to_vec();
        Ok(self.state.task("Model.reconstruct", move |t| {
            let (v, loss) = t.reconstruct(&images, masks.arrays())?;
            let images = v.into();
            Ok(Reconstruction { images, loss })
        }))
    }

    /// Features (N, 2, D) of normalised images (N, C, S, S).
    #[napi(catch_unwind, ts_return_type = "Promise<Features>")]
    pub fn embed(&self, images: Float32Array) -> Result<Pending<Features>> {
        self.batch_of(images.len())?;
        let (images, d) = (images.to_vec(), self.cfg.embed_dim);
        Ok(self.state.task("Model.embed", move |t| Ok(features(t.embed(&images)?, d))))
    }

    /// Features (N, 2, D) of image files (preprocessed as in pre-training); also written as a
    /// `.npy` when `out` is given.
    #[napi(catch_unwind, ts_return_type = "Promise<Features>")]
    pub fn embed_files(&self, paths: Vec<String>, out: Option<String>) -> Result<Pending<Features>> {
        if paths.is_empty() {
            return Err(invalid("no images given"));
        }
        let d = self.cfg.embed_dim;
        Ok(self.state.task("Model.embedFiles", move |t| {
            let paths: Vec<PathBuf> = paths.into_iter().map(PathBuf::from).collect();
            let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
            let out = out.as_deref().map(Path::new);
            Ok(features(t.embed_files(&refs, out)?, d))
        }))
    }
}

/// The configuration of a named preset (micro, tiny, small, base, large, huge) at 224², 3
/// channels, camelCase.
#[napi]
pub fn preset_config(name: String) -> Result<serde_json::Value> {
    let cfg = MaeConfig::preset(&name)
        .ok_or_else(|| invalid(format!("unknown preset {name:?} (one of {})", MaeConfig::preset_names().join(", "))))?;
    config_to_js(&cfg)
}
