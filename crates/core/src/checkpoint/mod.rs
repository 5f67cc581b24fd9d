//! Checkpoints: safetensors with timm / MAE state-dict names, so PyTorch code loads them
//! unchanged, and loading of what others publish (MAE `.pth`, timm safetensors).
//!
//! Our files hold every parameter, the two position-embedding buffers, optionally the AdamW
//! moments under `optimizer.*`, and metadata `format` = "vasomim-mae", `config` (JSON),
//! `step`. A file without our metadata is recognised by its shapes (or named by preset).
//! Adaptations follow timm's `checkpoint_filter_fn`: position embeddings are resampled
//! bicubically when the grid differs; the patch-embed conv is adapted between 3 and 1 input
//! channels (3→1: sum over channels; 1→3: repeat and divide by 3, which keeps the response to a
//! grey image replicated over the channels).
//!
//! - this file: the MAE (pre-training) checkpoints, timm export, `.pth` import;
//! - [`segmentor`]: UNeXt-S checkpoints (ours and the authors' `unext.pth`);
//! - [`segmentation`]: the fine-tuned segmentation ViT (encoder + U-Net head) and encoder loading.
//! - [`detection`]: the fine-tuned ViTDet detector and its encoder initialisation.

pub mod detection;
pub mod segmentation;
pub mod segmentor;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use crate::nn::mae::MaskedAutoencoder;
use crate::nn::pos_embed::resample_pos_embed;
use crate::nn::presets::{MaeConfig, PRESETS};
use crate::optim::AdamW;

pub const FORMAT: &str = "vasomim-mae";

/// What happened while loading a file into a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Model tensors absent from the file (left at their initial values).
    pub missing: Vec<String>,
    /// File tensors the model has no use for (classifier heads, optimizer state when none is
    /// wanted, …).
    pub unexpected: Vec<String>,
    /// Tensors changed to fit: "pos_embed: grid 14 -> 8", "patch_embed.proj.weight: 3 -> 1 channels".
    pub adapted: Vec<String>,
    /// Where the configuration came from: "metadata", "preset tiny (by shapes)", …
    pub config_source: String,
}

pub struct Loaded {
    pub model: MaskedAutoencoder,
    pub report: LoadReport,
    /// Optimizer moments and step, when the file has them.
    pub optimizer: Option<(HashMap<String, Tensor>, u64)>,
    pub step: u64,
    /// The training loop's state saved with [`save_with_loop_state`].
    pub loop_state: Option<String>,
}

/// Overrides when loading: the preset for a bare file, and the input size/channels wanted.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub preset: Option<String>,
    pub img_size: Option<usize>,
    pub in_chans: Option<usize>,
}

fn err(msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::msg(msg.to_string())
}

/// Every tensor of the model (parameters and position buffers) under its state-dict name.
pub fn state_dict(model: &MaskedAutoencoder) -> Vec<(String, Tensor)> {
    let mut out = model.params.tensors();
    out.push(("pos_embed".into(), model.encoder.pos_embed.clone()));
    out.push(("decoder_pos_embed".into(), model.decoder_pos_embed.clone()));
    out
}

fn write_safetensors(path: &Path, tensors: Vec<(String, Tensor)>, meta: HashMap<String, String>) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&crate::device::host())?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::tensor::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta)).map_err(err)?;
    crate::io::write_atomic(path, |w| std::io::Write::write_all(w, &bytes)).map_err(err)
}

/// Save the whole MAE (and the optimizer state when given) with its config and step.
pub fn save(path: &Path, model: &MaskedAutoencoder, opt: Option<&AdamW>, step: u64) -> Result<()> {
    save_with_loop_state(path, model, opt, step, None)
}

/// [`save`] plus the training loop's state (an opaque JSON string: epoch, batch, RNG keys …)
/// in the same file, so weights, moments and loop position are written by one atomic rename.
pub fn save_with_loop_state(
    path: &Path,
    model: &MaskedAutoencoder,
    opt: Option<&AdamW>,
    step: u64,
    loop_state: Option<&str>,
) -> Result<()> {
    let extra: Vec<(&str, String)> = loop_state.map(|l| ("loop_state", l.to_string())).into_iter().collect();
    write_checkpoint(path, FORMAT, &model.cfg, state_dict(model), opt, step, &extra)
}

/// Write a training checkpoint of any model atomically: its `tensors` (weights and buffers), the
/// optimizer's moments once it has stepped, and metadata `format`, `config` (JSON), `step`,
/// `optimizer_step` and the `extra` entries. Before the first step the moments are zeros, which
/// is also what a fresh optimizer starts from: leaving them out keeps a new model's file at 1/3
/// of the size.
pub(crate) fn write_checkpoint<C: serde::Serialize>(
    path: &Path,
    format: &str,
    config: &C,
    mut tensors: Vec<(String, Tensor)>,
    opt: Option<&AdamW>,
    step: u64,
    extra: &[(&str, String)],
) -> Result<()> {
    let opt = opt.filter(|o| o.step > 0);
    let mut meta = HashMap::from([
        ("format".to_string(), format.to_string()),
        ("config".to_string(), serde_json::to_string(config).map_err(err)?),
        ("step".to_string(), step.to_string()),
    ]);
    if let Some(o) = opt {
        tensors.extend(o.state_tensors());
        meta.insert("optimizer_step".into(), o.step.to_string());
    }
    meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    write_safetensors(path, tensors, meta)
}

/// Encoder only, in timm's `VisionTransformer` layout: loads into
/// `timm.create_model("vit_<size>_patch16_224", num_classes=0)` with no missing key.
pub fn export_timm(path: &Path, model: &MaskedAutoencoder) -> Result<()> {
    let enc = |n: &str| {
        n == "cls_token"
            || n == "pos_embed"
            || n.starts_with("patch_embed.")
            || n.starts_with("blocks.")
            || n.starts_with("norm.")
    };
    let tensors: Vec<(String, Tensor)> = state_dict(model).into_iter().filter(|(n, _)| enc(n)).collect();
    let mut meta = HashMap::new();
    meta.insert("format".into(), "pt".into());
    meta.insert("source".into(), "vasomim export --format timm (encoder only)".into());
    meta.insert("config".into(), serde_json::to_string(&model.cfg).map_err(err)?);
    write_safetensors(path, tensors, meta)
}

/// Tensors and metadata of a safetensors file or a PyTorch `.pth` state dict (a top-level
/// `model` / `state_dict` entry is used when present, as in MAE's checkpoints).
pub fn read_tensors(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let mut head = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let _ = f.read(&mut head);
    }
    // .pth files are zip archives ("PK\x03\x04"); anything else is tried as safetensors.
    let (mut tensors, meta) = if &head == b"PK\x03\x04" {
        let mut found = None;
        for key in [Some("model"), Some("state_dict"), None] {
            if let Ok(v) = candle_core::pickle::read_all_with_key(path, key) {
                if !v.is_empty() {
                    found = Some(v);
                    break;
                }
            }
        }
        let v = found.ok_or_else(|| err(format!("{}: no tensors found in the PyTorch file", path.display())))?;
        (v.into_iter().collect::<HashMap<_, _>>(), HashMap::new())
    } else {
        let data = std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let (_, md) = safetensors::SafeTensors::read_metadata(&data)
            .map_err(|e| err(format!("{}: not a safetensors or PyTorch file ({e})", path.display())))?;
        let meta = md.metadata().clone().unwrap_or_default();
        (candle_core::safetensors::load_buffer(&data, &crate::device::host())?, meta)
    };
    // DataParallel / DDP prefixes.
    if tensors.keys().all(|k| k.starts_with("module.")) {
        tensors = tensors.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
    }
    Ok((tensors, meta))
}

fn count_blocks(t: &HashMap<String, Tensor>, prefix: &str) -> usize {
    t.keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// The configuration of a file without our metadata, from its shapes (and `preset` for the
/// head counts, which shapes do not tell).
pub fn infer_config(t: &HashMap<String, Tensor>, preset: Option<&str>) -> Result<(MaeConfig, String)> {
    let w = t.get("patch_embed.proj.weight").ok_or_else(|| err("not a ViT checkpoint: no patch_embed.proj.weight"))?;
    let (d, c, p, _) = w
        .dims4()
        .map_err(|_| err(format!("patch_embed.proj.weight has shape {:?}, expected (D, C, p, p)", w.dims())))?;
    let depth = count_blocks(t, "blocks.");
    let (mut cfg, source) = match preset {
        Some(name) => {
            let cfg = MaeConfig::preset(name)
                .ok_or_else(|| err(format!("unknown preset {name:?} (one of {:?})", MaeConfig::preset_names())))?;
            if cfg.embed_dim != d || cfg.depth != depth {
                candle_core::bail!(
                    "preset {name} has embed {} and depth {}, the file has {d} and {depth}",
                    cfg.embed_dim,
                    cfg.depth
                );
            }
            (cfg, format!("preset {name} (named)"))
        }
        None => {
            let name = MaeConfig::preset_name_for(d, depth).ok_or_else(|| {
                err(format!(
                    "no preset has embed {d} and depth {depth}; name one with --preset or use a file with a config"
                ))
            })?;
            (MaeConfig::preset(name).unwrap(), format!("preset {name} (by shapes)"))
        }
    };
    cfg.patch_size = p;
    cfg.in_chans = c;
    if let Some(pe) = t.get("pos_embed") {
        let n = pe.dim(1)? - 1;
        let g = (n as f64).sqrt().round() as usize;
        if g * g == n {
            cfg.img_size = g * p;
        }
    }
    if let Some(de) = t.get("decoder_embed.weight") {
        cfg.decoder_embed_dim = de.dim(0)?;
        cfg.decoder_depth = count_blocks(t, "decoder_blocks.");
        // MAE decoders use 64-wide heads except the lightest ones (see presets).
        cfg.decoder_num_heads = PRESETS
            .iter()
            .find(|p| p.4 == cfg.decoder_embed_dim)
            .map(|p| p.6)
            .unwrap_or((cfg.decoder_embed_dim / 32).max(1));
    }
    Ok((cfg, source))
}

/// Adapt a patch-embed conv weight (D, C, p, p) to `to` channels (see the module doc).
fn adapt_channels(w: &Tensor, to: usize) -> Result<Tensor> {
    let from = w.dim(1)?;
    match (from, to) {
        (a, b) if a == b => Ok(w.clone()),
        (3, 1) => w.sum_keepdim(1),
        (1, 3) => Tensor::cat(&[w, w, w], 1)? / 3.0,
        _ => candle_core::bail!("cannot adapt {from} input channels to {to}"),
    }
}

/// Adapt decoder_pred rows (p·p·C, channel fastest) between 3 and 1 channels: the grey
/// prediction is the mean of the colour ones; colour predictions repeat the grey one.
fn adapt_pred_rows(t: &Tensor, from: usize, to: usize) -> Result<Tensor> {
    let rows = t.dim(0)?;
    let rest: Vec<usize> = t.dims()[1..].to_vec();
    let pp = rows / from;
    let mut shape = vec![pp, from];
    shape.extend(&rest);
    let x = t.reshape(shape)?;
    let y = match (from, to) {
        (3, 1) => x.mean_keepdim(1)?,
        (1, 3) => Tensor::cat(&[&x, &x, &x], 1)?,
        _ => candle_core::bail!("cannot adapt decoder_pred from {from} to {to} channels"),
    };
    let mut out = vec![pp * to];
    out.extend(&rest);
    y.reshape(out)
}

/// Load a checkpoint into a new model. Shapes that cannot be adapted are an error naming the
/// key and both shapes; missing and unexpected keys are reported.
pub fn load(path: &Path, opts: &LoadOptions, device: &Device) -> Result<Loaded> {
    let (tensors, meta) = read_tensors(path)?;
    let (mut cfg, config_source) = match meta.get("config") {
        Some(js) if opts.preset.is_none() => (
            serde_json::from_str::<MaeConfig>(js)
                .map_err(|e| err(format!("{}: bad config metadata: {e}", path.display())))?,
            "metadata".to_string(),
        ),
        _ => infer_config(&tensors, opts.preset.as_deref())?,
    };
    let file_cfg = cfg.clone();
    if let Some(s) = opts.img_size {
        cfg.img_size = s;
    }
    if let Some(c) = opts.in_chans {
        cfg.in_chans = c;
    }
    cfg.validate().map_err(err)?;
    let model = MaskedAutoencoder::new(&cfg, device, 0)?;
    let mut report = LoadReport { config_source, ..Default::default() };
    let mut used: BTreeMap<&str, ()> = BTreeMap::new();

    let fetch = |name: &str| -> Option<Result<Tensor>> {
        tensors.get(name).map(|t| t.to_dtype(DType::F32).and_then(|t| t.to_device(device)))
    };

    for (name, var) in &model.params.entries {
        let Some(t) = fetch(name) else {
            report.missing.push(name.clone());
            continue;
        };
        used.insert(tensors.get_key_value(name.as_str()).unwrap().0.as_str(), ());
        let mut t = t?;
        if name == "patch_embed.proj.weight" && t.dims().len() == 4 && t.dim(1)? != cfg.in_chans {
            report.adapted.push(format!("{name}: {} -> {} channels", t.dim(1)?, cfg.in_chans));
            t = adapt_channels(&t, cfg.in_chans)?;
        }
        if (name == "decoder_pred.weight" || name == "decoder_pred.bias")
            && file_cfg.in_chans != cfg.in_chans
            && t.dim(0)? == file_cfg.patch_dim()
        {
            report.adapted.push(format!("{name}: {} -> {} channels", file_cfg.in_chans, cfg.in_chans));
            t = adapt_pred_rows(&t, file_cfg.in_chans, cfg.in_chans)?;
        }
        if t.dims() != var.dims() {
            candle_core::bail!(
                "{}: {name} has shape {:?} in the file but the model needs {:?}",
                path.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t)?;
    }

    let mut model = model;
    for (name, grid_from) in
        [("pos_embed", &mut model.encoder.pos_embed), ("decoder_pos_embed", &mut model.decoder_pos_embed)]
    {
        let Some(t) = fetch(name) else {
            report.missing.push(name.to_string());
            continue;
        };
        used.insert(name, ());
        let t = t?;
        let want = grid_from.dims().to_vec();
        let t = if t.dims().len() == 3 && t.dim(2)? == want[2] && t.dim(1)? != want[1] {
            let old = ((t.dim(1)? - 1) as f64).sqrt().round() as usize;
            let new = ((want[1] - 1) as f64).sqrt().round() as usize;
            report.adapted.push(format!("{name}: grid {old} -> {new}"));
            resample_pos_embed(&t, 1, new)?
        } else {
            t
        };
        if t.dims() != want.as_slice() {
            candle_core::bail!(
                "{}: {name} has shape {:?} in the file but the model needs {:?}",
                path.display(),
                t.dims(),
                want
            );
        }
        *grid_from = t;
    }

    let mut optimizer = None;
    let opt_tensors: HashMap<String, Tensor> =
        tensors.iter().filter(|(k, _)| k.starts_with("optimizer.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    if !opt_tensors.is_empty() {
        let s = meta.get("optimizer_step").and_then(|s| s.parse().ok()).unwrap_or(0);
        optimizer = Some((opt_tensors, s));
    }
    let mut unexpected: Vec<String> =
        tensors.keys().filter(|k| !used.contains_key(k.as_str()) && !k.starts_with("optimizer.")).cloned().collect();
    unexpected.sort();
    report.unexpected = unexpected;
    let step = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(Loaded { model, report, optimizer, step, loop_state: meta.get("loop_state").cloned() })
}
