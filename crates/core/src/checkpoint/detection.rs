//! Detector checkpoints and encoder initialisation.
//!
//! File (safetensors): every parameter of [`ViTDet`] (the encoder under timm's names plus
//! `blocks.{i}.attn.rel_pos_h/w`, then `pyramid.*`, `rpn.*`, `roi_heads.*`), the `pos_embed`
//! buffer, optionally the AdamW moments under `optimizer.*`; metadata `format` =
//! "vasomim-vitdet", `config` (the [`DetectionConfig`] JSON), `step`, `optimizer_step`,
//! `layer_decay`, `seed` and `extra` (the caller's JSON: classes, normalisation, loop state …).
//!
//! [`init_encoder`] fills the encoder of a new detector from anything [`super::load`] reads (our
//! MAE checkpoints, `encoder.safetensors`, MAE `.pth`, timm safetensors), position embeddings
//! resampled to the detector's grid, 3 ↔ 1 channels adapted; the relative-position tables stay
//! zero (ViTDet's initialisation).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use super::{err, read_tensors, write_checkpoint, LoadOptions, LoadReport};
use crate::detection::model::{DetectionConfig, ViTDet};
use crate::trainer::detection::DetectionTrainer;

pub const FORMAT: &str = "vasomim-vitdet";

/// Save the model, the optimizer (once it has stepped), config and training state atomically.
pub fn save(path: &Path, t: &DetectionTrainer, extra: Option<&str>) -> Result<()> {
    let mut meta = vec![("layer_decay", t.layer_decay.to_string()), ("seed", t.seed.to_string())];
    meta.extend(extra.map(|e| ("extra", e.to_string())));
    write_checkpoint(path, FORMAT, &t.model.cfg, t.model.state_dict(), Some(&t.opt), t.step, &meta)
}

/// Whether a parameter belongs to the ViT encoder (as opposed to the pyramid and heads, and the
/// detector-only relative-position tables).
fn is_encoder(name: &str) -> bool {
    !["pyramid.", "rpn.", "roi_heads."].iter().any(|p| name.starts_with(p)) && !name.contains(".rel_pos_")
}

/// Fill the encoder of `model` from a pre-trained file; errors name the file.
pub fn init_encoder(model: &mut ViTDet, path: &Path, preset: Option<&str>) -> Result<LoadReport> {
    let enc = model.cfg.encoder.clone();
    let opts =
        LoadOptions { preset: preset.map(str::to_string), img_size: Some(enc.img_size), in_chans: Some(enc.in_chans) };
    let dev = model.backbone.vit.cls_token.device().clone();
    let loaded = super::load(path, &opts, &dev)?;
    let src = &loaded.model;
    let a = &src.cfg;
    if (a.embed_dim, a.depth, a.patch_size, a.num_heads) != (enc.embed_dim, enc.depth, enc.patch_size, enc.num_heads) {
        candle_core::bail!(
            "{}: encoder embed {} / depth {} / patch {} / heads {} does not fit the detector's {} / {} / {} / {}",
            path.display(),
            a.embed_dim,
            a.depth,
            a.patch_size,
            a.num_heads,
            enc.embed_dim,
            enc.depth,
            enc.patch_size,
            enc.num_heads
        );
    }
    let mut report = loaded.report.clone();
    let file_missing: BTreeSet<String> = report.missing.iter().cloned().collect();
    let mut missing = Vec::new();
    for (name, var) in model.params.entries.iter().filter(|(n, _)| is_encoder(n)) {
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
        model.backbone.vit.pos_embed = src.encoder.pos_embed.clone();
    }
    let used: BTreeSet<&str> = model.params.entries.iter().map(|(n, _)| n.as_str()).collect();
    let mut unexpected = report.unexpected.clone();
    unexpected.extend(src.params.entries.iter().filter(|(n, _)| !used.contains(n.as_str())).map(|(n, _)| n.clone()));
    unexpected.sort();
    report.missing = missing;
    report.unexpected = unexpected;
    Ok(report)
}

/// A detector saved by [`save`] with its trainer state and the caller's `extra` JSON.
pub struct DetectionLoaded {
    pub trainer: DetectionTrainer,
    pub extra: Option<String>,
}

/// Load a file written by [`save`]; another kind of file, a wrong shape or a missing tensor is
/// an error naming the file.
pub fn load(path: &Path, device: &Device) -> Result<DetectionLoaded> {
    let (tensors, meta) = read_tensors(path)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        candle_core::bail!(
            "{}: not a fine-tuned detector (format {:?}, expected {FORMAT:?}); pre-trained encoders are used with --init",
            path.display(),
            meta.get("format").cloned().unwrap_or_default()
        );
    }
    let cfg: DetectionConfig = serde_json::from_str(meta.get("config").map_or("", |s| s))
        .map_err(|e| err(format!("{}: bad config metadata: {e}", path.display())))?;
    let layer_decay = meta.get("layer_decay").and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.7);
    let seed = meta.get("seed").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let mut model = ViTDet::new(&cfg, device, 0).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let (mut bad, mut missing) = (Vec::new(), Vec::new());
    for (name, var) in &model.params.entries {
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => {
                bad.push(format!("{name}: file {:?}, model {:?}", t.dims(), var.dims()))
            }
            Some(t) => var.set(&t.to_dtype(DType::F32)?.to_device(device)?)?,
        }
    }
    match tensors.get("pos_embed") {
        Some(t) if t.dims() == model.backbone.vit.pos_embed.dims() => {
            model.backbone.vit.pos_embed = t.to_dtype(DType::F32)?.to_device(device)?
        }
        Some(t) => bad.push(format!("pos_embed: file {:?}, model {:?}", t.dims(), model.backbone.vit.pos_embed.dims())),
        None => missing.push("pos_embed".into()),
    }
    if !bad.is_empty() || !missing.is_empty() {
        candle_core::bail!(
            "{}: {}{}",
            path.display(),
            if bad.is_empty() { String::new() } else { format!("wrong shapes: {}; ", bad.join("; ")) },
            if missing.is_empty() { String::new() } else { format!("missing: {}", missing.join(", ")) }
        );
    }
    let mut trainer = DetectionTrainer::new(model, layer_decay, seed)?;
    let opt: HashMap<String, Tensor> =
        tensors.iter().filter(|(k, _)| k.starts_with("optimizer.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    if !opt.is_empty() {
        let s = meta.get("optimizer_step").and_then(|s| s.parse().ok()).unwrap_or(0);
        trainer.opt.load_state(&opt, s).map_err(|e| err(format!("{}: {e}", path.display())))?;
    }
    trainer.step = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(DetectionLoaded { trainer, extra: meta.get("extra").cloned() })
}
