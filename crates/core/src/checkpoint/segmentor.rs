//! UNeXt-S checkpoints. Ours: safetensors with the authors' state-dict names (parameters and
//! BatchNorm buffers), optionally the Adam moments under `optimizer.*`, and metadata `format` =
//! "vasomim-unext", `config` (JSON), `step`, `optimizer_step`. Also read: the authors'
//! `unext.pth` (a PyTorch state dict), with or without a `seg_model.` prefix (a VasoMIM
//! pre-training checkpoint holds the segmentor under it) or DataParallel's `module.`.
//! [`load`] gives a trainable model, [`load_frozen`] the fixed one that pre-training uses.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use super::{err, read_tensors, write_checkpoint};
use crate::nn::layers::BnRunning;
use crate::nn::unext::{UNext, UNextConfig};
use crate::optim::AdamW;

pub const FORMAT: &str = "vasomim-unext";
/// Key prefix of the segmentor inside a pre-training state dict.
pub const PREFIX: &str = "seg_model.";

/// What loading found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SegmentorLoadReport {
    /// Model tensors absent from the file (left at their initial values).
    pub missing: Vec<String>,
    /// File tensors the model has no use for.
    pub unexpected: Vec<String>,
    /// Tensors outside the `seg_model.` prefix when the file has one (ignored, counted).
    pub ignored_outside_prefix: usize,
    /// "metadata" or "shapes (encoder1.weight)".
    pub config_source: String,
}

impl SegmentorLoadReport {
    /// One line per problem, for error messages.
    pub fn describe(&self) -> String {
        let list = |v: &[String]| {
            let mut s = v.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 8 {
                s.push_str(&format!(", … ({} in all)", v.len()));
            }
            s
        };
        let mut out = Vec::new();
        if !self.missing.is_empty() {
            out.push(format!("missing: {}", list(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            out.push(format!("unexpected: {}", list(&self.unexpected)));
        }
        out.join("; ")
    }
}

pub struct SegmentorLoaded {
    pub model: UNext,
    pub report: SegmentorLoadReport,
    /// Adam moments and their step, when the file has them.
    pub optimizer: Option<(HashMap<String, Tensor>, u64)>,
    pub step: u64,
}

/// Save the segmentor (and the optimizer state when given and stepped) with config and step.
pub fn save(path: &Path, model: &UNext, opt: Option<&AdamW>, step: u64) -> Result<()> {
    write_checkpoint(path, FORMAT, &model.cfg, model.state_dict()?, opt, step, &[])
}

fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Load our safetensors or a PyTorch state dict into a new UNeXt-S. Shapes that differ are an
/// error listing every such key; missing and unexpected keys are reported (an absent
/// `num_batches_tracked`, as in files from old PyTorch versions, counts as 0, not missing).
/// With `strict`, missing or unexpected keys are an error too.
pub fn load(path: &Path, device: &Device, strict: bool) -> Result<SegmentorLoaded> {
    load_into(path, device, strict, false)
}

/// [`load`] into a frozen model ([`UNext::new_frozen`]): for guidance and L_cons, where only
/// the gradient into the segmentor's input is needed.
pub fn load_frozen(path: &Path, device: &Device, strict: bool) -> Result<SegmentorLoaded> {
    load_into(path, device, strict, true)
}

fn load_into(path: &Path, device: &Device, strict: bool, frozen: bool) -> Result<SegmentorLoaded> {
    let (tensors, meta) = read_tensors(path)?;
    let mut report = SegmentorLoadReport::default();
    let tensors: HashMap<String, Tensor> = if tensors.keys().any(|k| k.starts_with(PREFIX)) {
        report.ignored_outside_prefix = tensors.keys().filter(|k| !k.starts_with(PREFIX)).count();
        tensors.into_iter().filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|s| (s.to_string(), v))).collect()
    } else {
        tensors
    };
    let cfg = match meta.get("config") {
        Some(js) => {
            report.config_source = "metadata".into();
            serde_json::from_str::<UNextConfig>(js)
                .map_err(|e| err(format!("{}: bad config metadata: {e}", path.display())))?
        }
        None => {
            let w = tensors.get("encoder1.weight").ok_or_else(|| {
                err(format!(
                    "{}: not a UNeXt checkpoint (no encoder1.weight{})",
                    path.display(),
                    if report.ignored_outside_prefix > 0 { " under seg_model." } else { "" }
                ))
            })?;
            report.config_source = "shapes (encoder1.weight)".into();
            UNextConfig { in_chans: w.dims4()?.1 }
        }
    };
    let model = if frozen { UNext::new_frozen(&cfg, device, 0)? } else { UNext::new(&cfg, device, 0)? };
    let mut used = BTreeSet::new();
    let mut mis_shaped = Vec::new();
    for (name, var) in &model.params.entries {
        let Some(t) = tensors.get(name) else {
            report.missing.push(name.clone());
            continue;
        };
        used.insert(name.clone());
        if t.dims() != var.dims() {
            mis_shaped.push(format!("{name}: file {:?}, model {:?}", t.dims(), var.dims()));
            continue;
        }
        var.set(&t.to_dtype(DType::F32)?.to_device(device)?)?;
    }
    for (bn_name, bn) in model.batch_norms() {
        let c = bn.channels();
        let mut r = bn.running();
        let mut complete = true;
        for (suffix, dst) in [("running_mean", &mut r.mean), ("running_var", &mut r.var)] {
            let key = format!("{bn_name}.{suffix}");
            match tensors.get(&key) {
                None => {
                    report.missing.push(key);
                    complete = false;
                }
                Some(t) => {
                    used.insert(key.clone());
                    if t.dims() != [c] {
                        mis_shaped.push(format!("{key}: file {:?}, model [{c}]", t.dims()));
                        complete = false;
                    } else {
                        *dst = host_vec(t)?;
                    }
                }
            }
        }
        let key = format!("{bn_name}.num_batches_tracked");
        if let Some(t) = tensors.get(&key) {
            used.insert(key.clone());
            if t.elem_count() != 1 {
                mis_shaped.push(format!("{key}: file {:?}, model []", t.dims()));
            } else {
                r.num_batches_tracked = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0] as i64;
            }
        }
        if complete {
            bn.set_running(BnRunning { ..r })?;
        }
    }
    if !mis_shaped.is_empty() {
        candle_core::bail!(
            "{}: {} tensor(s) have the wrong shape: {}",
            path.display(),
            mis_shaped.len(),
            mis_shaped.join("; ")
        );
    }
    let mut unexpected: Vec<String> =
        tensors.keys().filter(|k| !used.contains(*k) && !k.starts_with("optimizer.")).cloned().collect();
    unexpected.sort();
    report.unexpected = unexpected;
    if strict && (!report.missing.is_empty() || !report.unexpected.is_empty()) {
        candle_core::bail!("{}: not a UNeXt-S state dict: {}", path.display(), report.describe());
    }
    let opt_tensors: HashMap<String, Tensor> =
        tensors.iter().filter(|(k, _)| k.starts_with("optimizer.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let optimizer = (!opt_tensors.is_empty()).then(|| {
        let s = meta.get("optimizer_step").and_then(|s| s.parse().ok()).unwrap_or(0);
        (opt_tensors, s)
    });
    let step = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(SegmentorLoaded { model, report, optimizer, step })
}
