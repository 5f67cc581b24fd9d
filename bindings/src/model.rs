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
use vasomim_core::nn::mae::{MaskedAutoencoder, Masking};
use vasomim_core::nn::presets::MaeConfig;
use vasomim_core::optim::AdamWParams;
use vasomim_core::trainer::pretrain::{self, VesselSegmentor};
use vasomim_core::trainer::pretrain::{PretrainTrainer, StepParams};

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
    /// State-dict names or prefixes the optimizer leaves alone.
    pub frozen: Option<Vec<String>>,
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
    /// Weight of L_cons in `trainBatch` (0 or absent: off; needs an attached segmentor).
    pub cons_weight: Option<f64>,
}

fn step_params(o: &StepOptions) -> Result<StepParams> {
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if !ok(o.lr) || !ok(o.weight_decay) || !ok(o.cons_weight.unwrap_or(0.0)) {
        return Err(invalid(format!(
            "lr ({}), weightDecay ({}) and consWeight ({:?}) must be finite and >= 0",
            o.lr, o.weight_decay, o.cons_weight
        )));
    }
    let d = AdamWParams::default();
    Ok(StepParams {
        adamw: AdamWParams {
            lr: o.lr,
            weight_decay: o.weight_decay,
            beta1: o.beta1.unwrap_or(d.beta1),
            beta2: o.beta2.unwrap_or(d.beta2),
            eps: o.eps.unwrap_or(d.eps),
        },
        clip_grad: o.clip_grad,
        micro_batches: o.micro_batches.unwrap_or(1).max(1) as usize,
    })
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
    /// Consistency loss BCE(S(recon), P) when it is on (`trainBatch` with a segmentor).
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

struct State {
    trainer: PretrainTrainer,
    /// The frozen vessel segmentor S of VasoMIM (guidance and L_cons), when attached.
    segmentor: Option<Box<dyn VesselSegmentor + Send>>,
    /// P = σ(S(img)) of the last batch given to `guidance`, keyed by that batch, so that the
    /// step reuses it instead of running S again.
    prob_cache: Option<(usize, Tensor)>,
    /// Step stored in / restored from checkpoints (optimizer steps taken in this lineage).
    step: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> Result<std::sync::MutexGuard<'_, State>> {
    s.lock()
        .map_err(|_| failed("model state is poisoned by an earlier panic"))
}

/// A candle error as a JS error: the message only (candle appends a backtrace when
/// RUST_BACKTRACE is set, which means nothing to a JS caller).
pub(crate) fn err(e: candle_core::Error) -> Error {
    failed(candle_message(e))
}

pub(crate) fn candle_message(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(*inner),
        e => e.to_string(),
    }
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
    /// A freshly initialised model (MAE init, deterministic in `seed`). `frozen`: state-dict
    /// names or prefixes (`patch_embed`, `blocks.0`) the optimizer leaves alone.
    #[napi(factory, catch_unwind)]
    pub fn create(
        config: ModelConfig,
        seed: Option<i64>,
        frozen: Option<Vec<String>>,
    ) -> Result<Model> {
        let cfg = MaeConfig::from(&config);
        cfg.validate().map_err(invalid)?;
        guarded("Model.create", || {
            let model = MaskedAutoencoder::new(&cfg, &Device::Cpu, seed.unwrap_or(0) as u64)
                .map_err(err)?;
            let trainer = PretrainTrainer::new(model, &frozen.unwrap_or_default()).map_err(err)?;
            Ok(Model {
                state: Arc::new(Mutex::new(State {
                    trainer,
                    step: 0,
                    segmentor: None,
                    prob_cache: None,
                })),
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
            frozen: None,
        });
        AsyncTask::new(LoadTask {
            path: path.into(),
            frozen: o.frozen.unwrap_or_default(),
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
            loop_state: None,
        })
    }

    /// Encoder only in timm's layout (`timm.create_model(..., num_classes=0)` loads it).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn export_timm(&self, path: String) -> AsyncTask<SaveTask> {
        AsyncTask::new(SaveTask {
            state: self.state.clone(),
            path: path.into(),
            timm: true,
            loop_state: None,
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
        let batch = self.check_batch(images.len(), &ids_keep, &ids_restore, &mask)?;
        let params = step_params(&options)?;
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
        let batch = self.check_batch(images.len(), &ids_keep, &ids_restore, &mask)?;
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

    /// Whether a frozen vessel segmentor is attached (needed for η < 1 and for L_cons).
    #[napi(getter)]
    pub fn has_segmentor(&self) -> Result<bool> {
        Ok(lock(&self.state)?.segmentor.is_some())
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
    ) -> Result<AsyncTask<GuidanceTask>> {
        self.check_loader_batch(&batch.inner)?;
        if !(0.0..=1.0).contains(&eta) {
            return Err(invalid(format!("eta = {eta} must be in [0, 1]")));
        }
        Ok(AsyncTask::new(GuidanceTask {
            state: self.state.clone(),
            batch: batch.inner.clone(),
            eta,
            with_prob: with_prob.unwrap_or(false),
            cfg: self.cfg.clone(),
        }))
    }

    /// One VasoMIM pre-training step on a loader batch (images never cross into JS) with the
    /// caller's masking; L_cons is on when `consWeight` > 0 (needs a segmentor).
    #[napi(catch_unwind, ts_return_type = "Promise<StepResult>")]
    pub fn train_batch(
        &self,
        batch: &crate::data::Batch,
        ids_keep: Uint32Array,
        ids_restore: Uint32Array,
        mask: Float32Array,
        options: StepOptions,
    ) -> Result<AsyncTask<TrainBatchTask>> {
        self.check_loader_batch(&batch.inner)?;
        self.check_batch(batch.inner.images.len(), &ids_keep, &ids_restore, &mask)?;
        let params = step_params(&options)?;
        Ok(AsyncTask::new(TrainBatchTask {
            state: self.state.clone(),
            batch: batch.inner.clone(),
            ids_keep: ids_keep.to_vec(),
            ids_restore: ids_restore.to_vec(),
            mask: mask.to_vec(),
            params,
            cons_weight: options.cons_weight.unwrap_or(0.0),
            cfg: self.cfg.clone(),
        }))
    }

    /// Attach the frozen vessel segmentor S (a UNeXt-S checkpoint: ours, the authors'
    /// `unext.pth`, or one under `seg_model.`), used in eval mode for the guidance map and L_cons.
    /// Its input channels must equal the model's.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn attach_segmentor(&self, path: String) -> AsyncTask<AttachTask> {
        AsyncTask::new(AttachTask {
            state: self.state.clone(),
            path: path.into(),
            in_chans: self.cfg.in_chans,
        })
    }

    /// Save like `save`, with the training loop's state (a JSON string) in the same file.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save_training(&self, path: String, loop_state: String) -> AsyncTask<SaveTask> {
        AsyncTask::new(SaveTask {
            state: self.state.clone(),
            path: path.into(),
            timm: false,
            loop_state: Some(loop_state),
        })
    }

    fn check_loader_batch(&self, b: &vasomim_core::data::Batch) -> Result<()> {
        let c = &self.cfg;
        if b.channels != c.in_chans || b.size != c.img_size {
            return Err(invalid(format!(
                "the batch has {} channel(s) of {}², the model takes {} of {}²: set the loader's size and channels from the model config",
                b.channels, b.size, c.in_chans, c.img_size
            )));
        }
        Ok(())
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
        images_len: usize,
        ids_keep: &[u32],
        ids_restore: &[u32],
        mask: &[f32],
    ) -> Result<usize> {
        let c = &self.cfg;
        let per = c.in_chans * c.img_size * c.img_size;
        let l = c.num_patches();
        if images_len == 0 || !images_len.is_multiple_of(per) {
            return Err(invalid(format!(
                "images has {images_len} values, not a multiple of C*S*S = {per}"
            )));
        }
        let b = images_len / per;
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
    frozen: Vec<String>,
}

fn info(r: &LoadReport, step: u64, loop_state: Option<String>) -> LoadInfo {
    LoadInfo {
        loop_state,
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
            let mut trainer = PretrainTrainer::new(l.model, &self.frozen).map_err(err)?;
            if let Some((state, s)) = &l.optimizer {
                trainer.opt.load_state(state, *s).map_err(err)?;
            }
            let load_info = Some(info(&l.report, l.step, l.loop_state.clone()));
            Ok(Model {
                state: Arc::new(Mutex::new(State {
                    trainer,
                    step: l.step,
                    segmentor: None,
                    prob_cache: None,
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
    loop_state: Option<String>,
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
                checkpoint::save_with_loop_state(
                    &self.path,
                    &s.trainer.model,
                    Some(&s.trainer.opt),
                    s.step,
                    self.loop_state.as_deref(),
                )
            };
            r.map_err(|e| failed(format!("{}: {}", self.path.display(), candle_message(e))))
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
                loss_cons: None,
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

fn loader_tensors(b: &vasomim_core::data::Batch) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let dev = Device::Cpu;
    let imgs = Tensor::from_slice(&b.images, (b.n, b.channels, b.size, b.size), &dev)?;
    let maps = match &b.maps {
        Some(m) => Some(Tensor::from_slice(m, (b.n, 1, b.size, b.size), &dev)?),
        None => None,
    };
    Ok((imgs, maps))
}

fn batch_key(b: &Arc<vasomim_core::data::Batch>) -> usize {
    Arc::as_ptr(b) as usize
}

fn to_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

pub struct GuidanceTask {
    state: Shared,
    batch: Arc<vasomim_core::data::Batch>,
    eta: f64,
    with_prob: bool,
    cfg: MaeConfig,
}

impl Task for GuidanceTask {
    type Output = (Vec<f32>, Option<Vec<f32>>, Option<Vec<f32>>);
    type JsValue = GuidanceResult;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("Model.guidance", || {
            let (imgs, maps) = loader_tensors(&self.batch).map_err(err)?;
            let mut s = lock(&self.state)?;
            let seg = s.segmentor.as_deref().map(|x| x as &dyn VesselSegmentor);
            let g = pretrain::guidance(seg, &imgs, maps.as_ref(), self.eta, self.cfg.patch_size)
                .map_err(err)?;
            let mass = to_f32(&g.mass).map_err(err)?;
            let vessel = g.vessel.as_ref().map(to_f32).transpose().map_err(err)?;
            let prob = match (&g.prob, self.with_prob) {
                (Some(p), true) => Some(to_f32(p).map_err(err)?),
                _ => None,
            };
            s.prob_cache = g.prob.map(|p| (batch_key(&self.batch), p));
            Ok((mass, vessel, prob))
        })
    }
    fn resolve(&mut self, _env: Env, o: Self::Output) -> Result<GuidanceResult> {
        Ok(GuidanceResult {
            mass: Float32Array::new(o.0),
            vessel: o.1.map(Float32Array::new),
            prob: o.2.map(Float32Array::new),
        })
    }
}

pub struct TrainBatchTask {
    state: Shared,
    batch: Arc<vasomim_core::data::Batch>,
    ids_keep: Vec<u32>,
    ids_restore: Vec<u32>,
    mask: Vec<f32>,
    params: StepParams,
    cons_weight: f64,
    cfg: MaeConfig,
}

impl Task for TrainBatchTask {
    type Output = StepResult;
    type JsValue = StepResult;
    fn compute(&mut self) -> Result<StepResult> {
        guarded("Model.trainBatch", || {
            let (b, l, dev) = (self.batch.n, self.cfg.num_patches(), Device::Cpu);
            let k = self.ids_keep.len() / b;
            let (imgs, _) = loader_tensors(&self.batch).map_err(err)?;
            let m = Masking {
                ids_keep: Tensor::from_slice(&self.ids_keep, (b, k), &dev).map_err(err)?,
                ids_restore: Tensor::from_slice(&self.ids_restore, (b, l), &dev).map_err(err)?,
                mask: Tensor::from_slice(&self.mask, (b, l), &dev).map_err(err)?,
            };
            let mut guard = lock(&self.state)?;
            let s = &mut *guard;
            let key = batch_key(&self.batch);
            let st = if self.cons_weight > 0.0 {
                let seg = s.segmentor.as_deref().ok_or_else(|| {
                    invalid("consWeight > 0 needs a segmentor: attach one (or turn L_cons off)")
                })?;
                let prob = match &s.prob_cache {
                    Some((k, p)) if *k == key => p.clone(),
                    _ => pretrain::guidance(Some(seg), &imgs, None, 0.0, self.cfg.patch_size)
                        .map_err(err)?
                        .prob
                        .expect("a segmentor gives P"),
                };
                let cons = pretrain::Consistency {
                    seg,
                    prob: &prob,
                    weight: self.cons_weight,
                };
                s.trainer
                    .pretrain_step(&imgs, &m, Some(&cons), &self.params)
                    .map_err(err)?
            } else {
                s.trainer
                    .pretrain_step(&imgs, &m, None, &self.params)
                    .map_err(err)?
            };
            s.step += 1;
            Ok(StepResult {
                loss_rec: st.loss_rec,
                loss_cons: st.loss_cons,
                loss: st.loss,
                grad_norm: st.grad_norm,
                step: s.step as i64,
            })
        })
    }
    fn resolve(&mut self, _env: Env, r: StepResult) -> Result<StepResult> {
        Ok(r)
    }
}

pub struct AttachTask {
    state: Shared,
    path: PathBuf,
    in_chans: usize,
}

impl Task for AttachTask {
    type Output = ();
    type JsValue = ();
    fn compute(&mut self) -> Result<()> {
        guarded("Model.attachSegmentor", || {
            let l = vasomim_core::checkpoint::segmentor::load(&self.path, &Device::Cpu, true)
                .map_err(|e| {
                    failed(format!(
                        "segmentor {}: {}",
                        self.path.display(),
                        candle_message(e)
                    ))
                })?;
            if l.model.cfg.in_chans != self.in_chans {
                return Err(invalid(format!(
                    "segmentor {} takes {} input channel(s), the model {}",
                    self.path.display(),
                    l.model.cfg.in_chans,
                    self.in_chans
                )));
            }
            let mut s = lock(&self.state)?;
            s.segmentor = Some(Box::new(l.model));
            s.prob_cache = None;
            Ok(())
        })
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}
