//! The `Model` handle: a VasoMIM MAE (and its AdamW state) owned by Rust, driven from JS.
//! Long calls are `AsyncTask`s on the libuv pool; the model sits behind a mutex so two
//! overlapping Promises serialise instead of racing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use vasomim_core::checkpoint::{self, LoadOptions, LoadReport};
use vasomim_core::nn::mae::Masking;
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::optim::AdamWParams;
use vasomim_core::train::{StepParams, Trainer};

use crate::{failed, guarded, invalid};

/// Model shape (all fields required here; the TS layer fills them from a preset with zod).
#[napi(object)]
#[derive(Clone)]
pub struct ModelConfig {
    pub img_size: u32,
    pub patch_size: u32,
    pub in_chans: u32,
    pub embed_dim: u32,
    pub depth: u32,
    pub num_heads: u32,
    pub decoder_embed_dim: u32,
    pub decoder_depth: u32,
    pub decoder_num_heads: u32,
    pub mlp_ratio: f64,
    pub norm_pix_loss: bool,
}

impl From<&MaeConfig> for ModelConfig {
    fn from(c: &MaeConfig) -> Self {
        ModelConfig {
            img_size: c.img_size as u32,
            patch_size: c.patch_size as u32,
            in_chans: c.in_chans as u32,
            embed_dim: c.embed_dim as u32,
            depth: c.depth as u32,
            num_heads: c.num_heads as u32,
            decoder_embed_dim: c.decoder_embed_dim as u32,
            decoder_depth: c.decoder_depth as u32,
            decoder_num_heads: c.decoder_num_heads as u32,
            mlp_ratio: c.mlp_ratio,
            norm_pix_loss: c.norm_pix_loss,
        }
    }
}

impl From<&ModelConfig> for MaeConfig {
    fn from(c: &ModelConfig) -> Self {
        MaeConfig {
            img_size: c.img_size as usize,
            patch_size: c.patch_size as usize,
            in_chans: c.in_chans as usize,
            embed_dim: c.embed_dim as usize,
            depth: c.depth as usize,
            num_heads: c.num_heads as usize,
            decoder_embed_dim: c.decoder_embed_dim as usize,
            decoder_depth: c.decoder_depth as usize,
            decoder_num_heads: c.decoder_num_heads as usize,
            mlp_ratio: c.mlp_ratio,
            norm_pix_loss: c.norm_pix_loss,
        }
    }
}

#[napi(object)]
pub struct LoadModelOptions {
    /// Preset name for a file without a config whose shapes match several presets' encoders.
    pub preset: Option<String>,
    pub img_size: Option<u32>,
    pub in_chans: Option<u32>,
}

#[napi(object)]
#[derive(Clone)]
pub struct LoadInfo {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub adapted: Vec<String>,
    pub config_source: String,
    pub step: i64,
}

/// Per-step hyper-parameters; the learning-rate / weight-decay schedule is the caller's.
#[napi(object)]
pub struct StepOptions {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub eps: Option<f64>,
    pub clip_grad: Option<f64>,
    pub micro_batches: Option<u32>,
}

#[napi(object)]
pub struct StepResult {
    /// Norm-pix reconstruction loss (before the update).
    pub loss_rec: f64,
    /// Total loss (= loss_rec until the consistency term is wired in).
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

struct State {
    trainer: Trainer,
    /// Step stored in / restored from checkpoints (optimizer steps taken in this lineage).
    step: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> Result<std::sync::MutexGuard<'_, State>> {
    s.lock()
        .map_err(|_| failed("model state is poisoned by an earlier panic"))
}

fn err(e: candle_core::Error) -> Error {
    failed(e.to_string())
}

/// A VasoMIM masked autoencoder (ViT encoder + decoder) with its optimizer state.
#[napi]
pub struct Model {
    state: Shared,
    cfg: MaeConfig,
    load_info: Option<LoadInfo>,
}

#[napi]
impl Model {
    /// A freshly initialised model (MAE init, deterministic in `seed`).
    #[napi(factory, catch_unwind)]
    pub fn create(config: ModelConfig, seed: Option<i64>) -> Result<Model> {
        let cfg = MaeConfig::from(&config);
        cfg.validate().map_err(invalid)?;
        guarded("Model.create", || {
            let trainer =
                Trainer::create(&cfg, &Device::Cpu, seed.unwrap_or(0) as u64).map_err(err)?;
            Ok(Model {
                state: Arc::new(Mutex::new(State { trainer, step: 0 })),
                cfg,
                load_info: None,
            })
        })
    }

    /// Load a checkpoint (ours, timm safetensors, MAE `.pth`); see `loadInfo`.
    #[napi(catch_unwind, ts_return_type = "Promise<Model>")]
    pub fn load(path: String, options: Option<LoadModelOptions>) -> AsyncTask<LoadTask> {
        let o = options.unwrap_or(LoadModelOptions {
            preset: None,
            img_size: None,
            in_chans: None,
        });
        AsyncTask::new(LoadTask {
            path: path.into(),
            opts: LoadOptions {
                preset: o.preset,
                img_size: o.img_size.map(|v| v as usize),
                in_chans: o.in_chans.map(|v| v as usize),
            },
        })
    }

    /// What `Model.load` did (missing / unexpected / adapted keys); null for a created model.
    #[napi(getter)]
    pub fn load_info(&self) -> Option<LoadInfo> {
        self.load_info.clone()
    }

    #[napi(getter)]
    pub fn config(&self) -> ModelConfig {
        ModelConfig::from(&self.cfg)
    }

    /// Number of trainable parameters.
    #[napi(getter)]
    pub fn num_params(&self) -> Result<i64> {
        Ok(lock(&self.state)?.trainer.model.params.num_elements() as i64)
    }

    #[napi(getter)]
    pub fn step(&self) -> Result<i64> {
        Ok(lock(&self.state)?.step as i64)
    }

    /// Save parameters, position buffers, optimizer state, config and step (safetensors).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, path: String) -> AsyncTask<SaveTask> {
        AsyncTask::new(SaveTask {
            state: self.state.clone(),
            path: path.into(),
            timm: false,
        })
    }

    /// Encoder only in timm's layout (`timm.create_model(..., num_classes=0)` loads it).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn export_timm(&self, path: String) -> AsyncTask<SaveTask> {
        AsyncTask::new(SaveTask {
            state: self.state.clone(),
            path: path.into(),
            timm: true,
        })
    }

    /// One pre-training step on `images` (B, C, S, S normalised) with the caller's masking:
    /// `idsKeep` (B, K), `idsRestore` (B, L), `mask` (B, L; 1 = masked).
    #[napi(catch_unwind, ts_return_type = "Promise<StepResult>")]
    pub fn train_step(
        &self,
        images: Float32Array,
        ids_keep: Uint32Array,
        ids_restore: Uint32Array,
        mask: Float32Array,
        options: StepOptions,
    ) -> Result<AsyncTask<TrainStepTask>> {
        let batch = self.check_batch(&images, &ids_keep, &ids_restore, &mask)?;
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(options.lr) || !ok(options.weight_decay) {
            return Err(invalid(format!(
                "lr ({}) and weightDecay ({}) must be finite and >= 0",
                options.lr, options.weight_decay
            )));
        }
        let d = AdamWParams::default();
        let params = StepParams {
            adamw: AdamWParams {
                lr: options.lr,
                weight_decay: options.weight_decay,
                beta1: options.beta1.unwrap_or(d.beta1),
                beta2: options.beta2.unwrap_or(d.beta2),
                eps: options.eps.unwrap_or(d.eps),
            },
            clip_grad: options.clip_grad,
            micro_batches: options.micro_batches.unwrap_or(1).max(1) as usize,
        };
        Ok(AsyncTask::new(TrainStepTask {
            state: self.state.clone(),
            batch: Batch {
                images: images.to_vec(),
                ids_keep: ids_keep.to_vec(),
                ids_restore: ids_restore.to_vec(),
                mask: mask.to_vec(),
                batch,
            },
            params,
            cfg: self.cfg.clone(),
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
    ) -> Result<AsyncTask<ReconstructTask>> {
        let batch = self.check_batch(&images, &ids_keep, &ids_restore, &mask)?;
        Ok(AsyncTask::new(ReconstructTask {
            state: self.state.clone(),
            batch: Batch {
                images: images.to_vec(),
                ids_keep: ids_keep.to_vec(),
                ids_restore: ids_restore.to_vec(),
                mask: mask.to_vec(),
                batch,
            },
            cfg: self.cfg.clone(),
        }))
    }

    /// Features (N, 2, D) of normalised images (N, C, S, S).
    #[napi(catch_unwind, ts_return_type = "Promise<Features>")]
    pub fn embed(&self, images: Float32Array) -> Result<AsyncTask<EmbedTask>> {
        let per = self.cfg.in_chans * self.cfg.img_size * self.cfg.img_size;
        if images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(invalid(format!(
                "images has {} values, not a multiple of C*S*S = {per}",
                images.len()
            )));
        }
        Ok(AsyncTask::new(EmbedTask {
            state: self.state.clone(),
            input: EmbedInput::Pixels(images.to_vec()),
            out: None,
            cfg: self.cfg.clone(),
        }))
    }

    /// Features (N, 2, D) of image files (preprocessed as in pre-training); also written as a
    /// `.npy` when `out` is given.
    #[napi(catch_unwind, ts_return_type = "Promise<Features>")]
    pub fn embed_files(
        &self,
        paths: Vec<String>,
        out: Option<String>,
    ) -> Result<AsyncTask<EmbedTask>> {
        if paths.is_empty() {
            return Err(invalid("no images given"));
        }
        Ok(AsyncTask::new(EmbedTask {
            state: self.state.clone(),
            input: EmbedInput::Files(paths.into_iter().map(PathBuf::from).collect()),
            out: out.map(PathBuf::from),
            cfg: self.cfg.clone(),
        }))
    }

    fn check_batch(
        &self,
        images: &[f32],
        ids_keep: &[u32],
        ids_restore: &[u32],
        mask: &[f32],
    ) -> Result<usize> {
        let c = &self.cfg;
        let per = c.in_chans * c.img_size * c.img_size;
        let l = c.num_patches();
        if images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(invalid(format!(
                "images has {} values, not a multiple of C*S*S = {per}",
                images.len()
            )));
        }
        let b = images.len() / per;
        if ids_restore.len() != b * l || mask.len() != b * l {
            return Err(invalid(format!(
                "idsRestore ({}) and mask ({}) must have B*L = {b}*{l} values",
                ids_restore.len(),
                mask.len()
            )));
        }
        if ids_keep.is_empty() || !ids_keep.len().is_multiple_of(b) || ids_keep.len() / b > l {
            return Err(invalid(format!(
                "idsKeep has {} values: expected B*K with B = {b}, 1 <= K <= {l}",
                ids_keep.len()
            )));
        }
        if let Some(bad) = ids_keep
            .iter()
            .chain(ids_restore)
            .find(|&&i| i as usize >= l)
        {
            return Err(invalid(format!("patch index {bad} out of range 0..{l}")));
        }
        Ok(b)
    }
}

struct Batch {
    images: Vec<f32>,
    ids_keep: Vec<u32>,
    ids_restore: Vec<u32>,
    mask: Vec<f32>,
    batch: usize,
}

impl Batch {
    fn tensors(self, cfg: &MaeConfig) -> candle_core::Result<(Tensor, Masking)> {
        let (b, s, l) = (self.batch, cfg.img_size, cfg.num_patches());
        let k = self.ids_keep.len() / b;
        let dev = Device::Cpu;
        Ok((
            Tensor::from_vec(self.images, (b, cfg.in_chans, s, s), &dev)?,
            Masking {
                ids_keep: Tensor::from_vec(self.ids_keep, (b, k), &dev)?,
                ids_restore: Tensor::from_vec(self.ids_restore, (b, l), &dev)?,
                mask: Tensor::from_vec(self.mask, (b, l), &dev)?,
            },
        ))
    }
}

pub struct LoadTask {
    path: PathBuf,
    opts: LoadOptions,
}

fn info(r: &LoadReport, step: u64) -> LoadInfo {
    LoadInfo {
        missing: r.missing.clone(),
        unexpected: r.unexpected.clone(),
        adapted: r.adapted.clone(),
        config_source: r.config_source.clone(),
        step: step as i64,
    }
}

impl Task for LoadTask {
    type Output = Model;
    type JsValue = Model;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("Model.load", || {
            let l = checkpoint::load(&self.path, &self.opts, &Device::Cpu).map_err(err)?;
            let cfg = l.model.cfg.clone();
            let mut trainer = Trainer::new(l.model, &[]).map_err(err)?;
            if let Some((state, s)) = &l.optimizer {
                trainer.opt.load_state(state, *s).map_err(err)?;
            }
            let load_info = Some(info(&l.report, l.step));
            Ok(Model {
                state: Arc::new(Mutex::new(State {
                    trainer,
                    step: l.step,
                })),
                cfg,
                load_info,
            })
        })
    }
    fn resolve(&mut self, _env: Env, model: Model) -> Result<Model> {
        Ok(model)
    }
}

pub struct SaveTask {
    state: Shared,
    path: PathBuf,
    timm: bool,
}

impl Task for SaveTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> Result<()> {
        guarded("Model.save", || {
            let s = lock(&self.state)?;
            let r = if self.timm {
                checkpoint::export_timm(&self.path, &s.trainer.model)
            } else {
                checkpoint::save(&self.path, &s.trainer.model, Some(&s.trainer.opt), s.step)
            };
            r.map_err(|e| failed(format!("{}: {e}", self.path.display())))
        })
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

pub struct TrainStepTask {
    state: Shared,
    batch: Batch,
    params: StepParams,
    cfg: MaeConfig,
}

impl Task for TrainStepTask {
    type Output = StepResult;
    type JsValue = StepResult;
    fn compute(&mut self) -> Result<StepResult> {
        guarded("Model.trainStep", || {
            let batch = std::mem::replace(
                &mut self.batch,
                Batch {
                    images: vec![],
                    ids_keep: vec![],
                    ids_restore: vec![],
                    mask: vec![],
                    batch: 0,
                },
            );
            let (x, m) = batch.tensors(&self.cfg).map_err(err)?;
            let mut s = lock(&self.state)?;
            let st = s.trainer.train_step(&x, &m, &self.params).map_err(err)?;
            s.step += 1;
            Ok(StepResult {
                loss_rec: st.loss_rec,
                loss: st.loss_rec,
                grad_norm: st.grad_norm,
                step: s.step as i64,
            })
        })
    }
    fn resolve(&mut self, _env: Env, r: StepResult) -> Result<StepResult> {
        Ok(r)
    }
}

pub struct ReconstructTask {
    state: Shared,
    batch: Batch,
    cfg: MaeConfig,
}

impl Task for ReconstructTask {
    type Output = (Vec<f32>, f64);
    type JsValue = Reconstruction;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("Model.reconstruct", || {
            let batch = std::mem::replace(
                &mut self.batch,
                Batch {
                    images: vec![],
                    ids_keep: vec![],
                    ids_restore: vec![],
                    mask: vec![],
                    batch: 0,
                },
            );
            let (x, m) = batch.tensors(&self.cfg).map_err(err)?;
            let s = lock(&self.state)?;
            let model = &s.trainer.model;
            let out = model.forward(&x, &m).map_err(err)?;
            let rec = model
                .reconstruct(&x, &out.pred)
                .and_then(|r| r.flatten_all()?.to_vec1::<f32>())
                .map_err(err)?;
            Ok((rec, out.loss.to_scalar::<f32>().map_err(err)? as f64))
        })
    }
    fn resolve(&mut self, _env: Env, (v, loss): Self::Output) -> Result<Reconstruction> {
        Ok(Reconstruction {
            images: Float32Array::new(v),
            loss,
        })
    }
}

enum EmbedInput {
    Pixels(Vec<f32>),
    Files(Vec<PathBuf>),
}

pub struct EmbedTask {
    state: Shared,
    input: EmbedInput,
    out: Option<PathBuf>,
    cfg: MaeConfig,
}

impl Task for EmbedTask {
    type Output = (Vec<f32>, usize);
    type JsValue = Features;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("Model.embed", || {
            let s = lock(&self.state)?;
            let model = &s.trainer.model;
            let (data, d) = match std::mem::replace(&mut self.input, EmbedInput::Pixels(vec![])) {
                EmbedInput::Pixels(px) => {
                    let (c, sz) = (self.cfg.in_chans, self.cfg.img_size);
                    let n = px.len() / (c * sz * sz);
                    let t = Tensor::from_vec(px, (n, c, sz, sz), &Device::Cpu).map_err(err)?;
                    (
                        vasomim_core::embed::embed_batch(model, &t).map_err(err)?,
                        self.cfg.embed_dim,
                    )
                }
                EmbedInput::Files(paths) => {
                    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
                    vasomim_core::embed::embed_files(model, &refs, 8, &Device::Cpu).map_err(err)?
                }
            };
            if let Some(out) = &self.out {
                let n = data.len() / (2 * d);
                vasomim_core::io::write_npy(out, &[n, 2, d], &data)
                    .map_err(|e| failed(format!("{}: {e}", out.display())))?;
            }
            Ok((data, d))
        })
    }
    fn resolve(&mut self, _env: Env, (data, d): Self::Output) -> Result<Features> {
        let n = data.len() / (2 * d);
        Ok(Features {
            data: Float32Array::new(data),
            shape: vec![n as u32, 2, d as u32],
        })
    }
}

/// The configuration of a named preset (micro, tiny, small, base, large, huge) at 224², 3 channels.
#[napi]
pub fn preset_config(name: String) -> Result<ModelConfig> {
    MaeConfig::preset(&name)
        .map(|c| ModelConfig::from(&c))
        .ok_or_else(|| {
            invalid(format!(
                "unknown preset {name:?} (one of {})",
                MaeConfig::preset_names().join(", ")
            ))
        })
}
