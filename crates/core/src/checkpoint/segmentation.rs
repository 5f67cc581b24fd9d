//! Segmentation-ViT checkpoints and encoder initialisation.
//!
//! File (safetensors): the encoder under timm's names (`patch_embed.proj.*`, `cls_token`,
//! `pos_embed`, `blocks.{i}.*`, `norm.*`), the head under `head.*`, each head BatchNorm's
//! `running_mean` / `running_var` / `num_batches_tracked` buffers, optionally the AdamW moments
//! under `optimizer.*`; metadata `format` = "vasomim-segvit", `config` (the [`SegmentationConfig`] JSON),
//! `step`, `optimizer_step`, `layer_decay`, `drop_seed` and `extra` (an opaque JSON string of
//! the caller: task, normalisation, threshold, validation scores …).
//!
//! [`init_encoder`] fills the encoder of a new model from anything [`super::load`] reads (our
//! MAE checkpoints, `encoder.safetensors` from `vasomim pretrain` / `vasomim export`, MAE `.pth`
//! files, timm safetensors), with its adaptations (position-embedding grid, 3 ↔ 1 channels).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use super::{err, read_tensors, write_checkpoint, LoadOptions, LoadReport};
use crate::nn::layers::BnRunning;
use crate::nn::presets::MaeConfig;
use crate::nn::segmentation::{SegmentationConfig, SegmentationViT};
use crate::trainer::segmentation::SegmentationTrainer;

pub const FORMAT: &str = "vasomim-segvit";

/// Save the model, its BatchNorm buffers, the optimizer (when it has stepped), config and
/// training state, atomically.
pub fn save(path: &Path, ft: &SegmentationTrainer, step: u64, extra: Option<&str>) -> Result<()> {
    let mut meta = vec![("layer_decay", ft.layer_decay.to_string()), ("drop_seed", ft.drop_seed.to_string())];
    meta.extend(extra.map(|e| ("extra", e.to_string())));
    let tensors = ft.model.state_dict()?;
    write_checkpoint(path, FORMAT, &ft.model.cfg, tensors, Some(&ft.opt), step, &meta)
}

/// What loading found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SegmentationLoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

pub struct SegmentationLoaded {
    pub tuner: SegmentationTrainer,
    pub report: SegmentationLoadReport,
    pub step: u64,
    pub extra: Option<String>,
}

fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Load a file written by [`save`]: weights, buffers, optimizer state (when present) and the
/// training state. A file of another kind, a tensor of the wrong shape, or any missing tensor
/// is an error naming the file.
pub fn load(path: &Path, device: &Device) -> Result<SegmentationLoaded> {
    let (tensors, meta) = read_tensors(path)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        candle_core::bail!(
            "{}: not a fine-tuned segmentation model (format {:?}, expected {FORMAT:?}); \
             pre-trained encoders are used with --init",
            path.display(),
            meta.get("format").cloned().unwrap_or_default()
        );
    }
    let cfg: SegmentationConfig = serde_json::from_str(meta.get("config").map_or("", |s| s))
        .map_err(|e| err(format!("{}: bad config metadata: {e}", path.display())))?;
    let num = |k: &str| meta.get(k).and_then(|s| s.parse::<f64>().ok());
    let layer_decay = num("layer_decay").unwrap_or(crate::trainer::segmentation::LAYER_DECAY);
    let drop_seed = meta.get("drop_seed").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let mut model = SegmentationViT::new(&cfg, device, 0)?;
    let mut report = SegmentationLoadReport::default();
    let mut used = BTreeSet::new();
    let mut bad = Vec::new();
    for (name, var) in &model.params.entries {
        match tensors.get(name) {
            None => report.missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => {
                bad.push(format!("{name}: file {:?}, model {:?}", t.dims(), var.dims()))
            }
            Some(t) => {
                used.insert(name.clone());
                var.set(&t.to_dtype(DType::F32)?.to_device(device)?)?;
            }
        }
    }
    match tensors.get("pos_embed") {
        None => report.missing.push("pos_embed".into()),
        Some(t) if t.dims() != model.encoder.pos_embed.dims() => {
            bad.push(format!("pos_embed: file {:?}, model {:?}", t.dims(), model.encoder.pos_embed.dims()))
        }
        Some(t) => {
            used.insert("pos_embed".into());
            model.encoder.pos_embed = t.to_dtype(DType::F32)?.to_device(device)?;
        }
    }
    for (bn_name, bn) in model.batch_norms() {
        let c = bn.channels();
        let mut r = BnRunning { mean: vec![], var: vec![], num_batches_tracked: 0 };
        for (suffix, dst) in [("running_mean", &mut r.mean), ("running_var", &mut r.var)] {
            let k = format!("{bn_name}.{suffix}");
            match tensors.get(&k) {
                None => report.missing.push(k),
                Some(t) if t.dims() != [c] => bad.push(format!("{k}: file {:?}, model [{c}]", t.dims())),
                Some(t) => {
                    used.insert(k);
                    *dst = host_vec(t)?;
                }
            }
        }
        let k = format!("{bn_name}.num_batches_tracked");
        if let Some(t) = tensors.get(&k) {
            used.insert(k);
            r.num_batches_tracked = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0] as i64;
        }
        if r.mean.len() == c && r.var.len() == c {
            bn.set_running(r)?;
        }
    }
    if !bad.is_empty() || !report.missing.is_empty() {
        candle_core::bail!(
            "{}: {}{}",
            path.display(),
            if bad.is_empty() { String::new() } else { format!("wrong shapes: {}; ", bad.join("; ")) },
            if report.missing.is_empty() { String::new() } else { format!("missing: {}", report.missing.join(", ")) }
        );
    }
    report.unexpected =
        tensors.keys().filter(|k| !used.contains(*k) && !k.starts_with("optimizer.")).cloned().collect();
    report.unexpected.sort();
    let mut tuner = SegmentationTrainer::new(model, layer_decay, drop_seed)?;
    let opt_tensors: HashMap<String, Tensor> =
        tensors.iter().filter(|(k, _)| k.starts_with("optimizer.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    if !opt_tensors.is_empty() {
        let s = meta.get("optimizer_step").and_then(|s| s.parse().ok()).unwrap_or(0);
        tuner.opt.load_state(&opt_tensors, s).map_err(|e| err(format!("{}: {e}", path.display())))?;
    }
    tuner.step = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(SegmentationLoaded { step: tuner.step, tuner, report, extra: meta.get("extra").cloned() })
}

/// The encoder configuration of a pre-trained checkpoint at the given input size / channels
/// (adapted as [`super::load`] does), without building the model twice.
pub fn encoder_config(path: &Path, opts: &LoadOptions) -> Result<MaeConfig> {
    Ok(super::load(path, opts, &crate::device::host())?.model.cfg)
}

/// Encoder tensors of a SegmentationViT (parameters and `pos_embed`).
fn is_encoder(name: &str) -> bool {
    name == "cls_token"
        || name == "pos_embed"
        || name.starts_with("patch_embed.")
        || name.starts_with("blocks.")
        || name.starts_with("norm.")
}

/// Fill `model`'s encoder from a pre-trained checkpoint. The file's encoder shape must match
/// (embed dim, depth, patch size; the grid and channels are adapted). `missing`: encoder tensors
/// the file lacks (left at their initial values); `unexpected`: file tensors not used (the MAE
/// decoder, mask token, segmentor, classifier heads …).
pub fn init_encoder(model: &mut SegmentationViT, path: &Path, preset: Option<&str>) -> Result<LoadReport> {
    let enc = &model.cfg.encoder;
    let opts =
        LoadOptions { preset: preset.map(str::to_string), img_size: Some(enc.img_size), in_chans: Some(enc.in_chans) };
    let dev = model.encoder.cls_token.device().clone();
    let loaded = super::load(path, &opts, &dev)?;
    let src = &loaded.model;
    let (a, b) = (&src.cfg, enc);
    if (a.embed_dim, a.depth, a.patch_size, a.num_heads) != (b.embed_dim, b.depth, b.patch_size, b.num_heads) {
        candle_core::bail!(
            "{}: encoder embed {} / depth {} / patch {} / heads {} does not fit the model's {} / {} / {} / {}",
            path.display(),
            a.embed_dim,
            a.depth,
            a.patch_size,
            a.num_heads,
            b.embed_dim,
            b.depth,
            b.patch_size,
            b.num_heads
        );
    }
    let mut report = loaded.report.clone();
    let file_missing: BTreeSet<String> = report.missing.iter().cloned().collect();
    let mut missing = Vec::new();
    for (name, var) in &model.params.entries {
        if !is_encoder(name) {
            continue;
        }
        if file_missing.contains(name) {
            missing.push(name.clone());
            continue;
        }
        let t =
            src.params.get(name).ok_or_else(|| err(format!("{name}: not an encoder tensor of the loaded model")))?;
        var.set(t.as_tensor())?;
    }
    if file_missing.contains("pos_embed") {
        missing.push("pos_embed".into());
    } else {
        model.encoder.pos_embed = src.encoder.pos_embed.clone();
    }
    // MAE tensors the file had but the encoder does not use.
    let mut unexpected = report.unexpected.clone();
    unexpected.extend(
        src.params
            .entries
            .iter()
            .map(|(n, _)| n.clone())
            .chain(std::iter::once("decoder_pos_embed".to_string()))
            .filter(|n| !is_encoder(n) && !file_missing.contains(n)),
    );
    unexpected.sort();
    report.missing = missing;
    report.unexpected = unexpected;
    Ok(report)
}
