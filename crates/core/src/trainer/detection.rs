//! Fine-tuning the detector ([`ViTDet`], docs/DETECTION.md): AdamW (β = (0.9, 0.999)) with
//! layer-wise LR decay 0.7^(depth + 1 − layer id) (0 = embeddings, i + 1 = block i, depth + 1 =
//! pyramid and heads), no weight decay on biases, norms and the position table; the step's lr
//! comes from the caller (warm-up + step schedule in TS).
//!
//! Randomness of step t (drop-path, anchor and RoI sampling) is drawn from
//! `InitRng::new(key(seed, [t]))`: a resumed run draws what the uninterrupted one would.
//! Inputs cross as flat normalised images (B, C, S, S) and per-image targets; errors name the
//! field.

use std::path::Path;

use candle_core::{Device, Result, Tensor};
use serde::Serialize;

use crate::checkpoint::{detection as ckpt, LoadOptions, LoadReport};
use crate::data::rng::key;
use crate::detection::boxes::BoxF;
use crate::detection::heads::Detections;
use crate::detection::input::{place_box, place_grey, unplace_box, Placement};
use crate::detection::model::{DetectionConfig, ImageTarget, ViTDet, FROZEN};
use crate::nn::segmentation::layer_decay_scale;
use crate::nn::InitRng;
use crate::optim::AdamW;
use crate::trainer::segmentation::{adamw_params, check_step_options, ft_decays};
use crate::trainer::tune_allocator;

/// A grey 8-bit frame: pixels (row-major), width, height.
pub type GreyFrame<'a> = (&'a [u8], usize, usize);

/// Normalised inputs (B·C·S·S values) and each frame's valid (h, w).
pub type Prepared = (Vec<f32>, Vec<(usize, usize)>);

/// ViTDet's layer-wise LR decay.
pub const LAYER_DECAY: f64 = 0.7;

/// Loss terms of one step (before the update), camelCase in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectionLoss {
    pub loss: f64,
    pub rpn_cls: f64,
    pub rpn_loc: f64,
    pub cls: f64,
    pub box_reg: f64,
}

pub struct DetectionTrainer {
    pub model: ViTDet,
    pub opt: AdamW,
    /// Optimizer steps taken in this lineage (saved with checkpoints).
    pub step: u64,
    pub layer_decay: f64,
    /// Seed of the per-step draws.
    pub seed: u64,
}

impl DetectionTrainer {
    pub fn new(model: ViTDet, layer_decay: f64, seed: u64) -> Result<Self> {
        tune_allocator();
        if !(layer_decay > 0.0 && layer_decay <= 1.0) {
            candle_core::bail!("layerDecay = {layer_decay} must be in (0, 1]");
        }
        let frozen: Vec<String> = FROZEN.iter().map(|s| s.to_string()).collect();
        let mut opt = AdamW::new(&model.params, &frozen)?;
        let depth = model.cfg.encoder.depth;
        opt.set_lr_scales(|n| layer_decay_scale(n, depth, layer_decay));
        opt.set_decays(ft_decays);
        Ok(DetectionTrainer { model, opt, step: 0, layer_decay, seed })
    }

    /// A new detector with every weight from `seed` (the "scratch" row).
    pub fn create(cfg: &DetectionConfig, device: &Device, seed: u64, layer_decay: f64) -> Result<Self> {
        Self::new(ViTDet::new(cfg, device, seed)?, layer_decay, seed)
    }

    /// A new detector whose encoder comes from a pre-trained file; `cfg.encoder` gives the input
    /// side and channels, its shape fields are taken from the file. Errors name the file.
    pub fn from_pretrained(
        path: &Path,
        cfg: &DetectionConfig,
        preset: Option<&str>,
        seed: u64,
        layer_decay: f64,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let p = path.display().to_string();
        let named = |e: candle_core::Error| {
            let m = e.to_string();
            candle_core::Error::msg(if m.contains(&p) { m } else { format!("{p}: {m}") })
        };
        let opts = LoadOptions {
            preset: preset.map(str::to_string),
            img_size: Some(cfg.encoder.img_size),
            in_chans: Some(cfg.encoder.in_chans),
        };
        let encoder = crate::checkpoint::segmentation::encoder_config(path, &opts).map_err(named)?;
        let depth = encoder.depth;
        let mut cfg = DetectionConfig { encoder, ..cfg.clone() };
        // Global blocks follow the file's depth when it differs from the template's.
        cfg.global_blocks.retain(|&b| b < depth);
        if cfg.global_blocks.is_empty() {
            cfg.global_blocks = (0..depth).filter(|i| i % 3 == 2).collect();
        }
        let mut model = ViTDet::new(&cfg, device, seed).map_err(named)?;
        let report = ckpt::init_encoder(&mut model, path, preset).map_err(named)?;
        Ok((Self::new(model, layer_decay, seed)?, report))
    }

    /// Load a detector saved by [`DetectionTrainer::save`]; returns the caller's `extra` JSON.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, Option<String>)> {
        let l = ckpt::load(path, device)?;
        Ok((l.trainer, l.extra))
    }

    /// Save weights, AdamW state, config, step and `extra` atomically.
    pub fn save(&self, path: &Path, extra: Option<&str>) -> Result<()> {
        ckpt::save(path, self, extra).map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))
    }

    pub fn cfg(&self) -> &DetectionConfig {
        &self.model.cfg
    }

    fn device(&self) -> &Device {
        self.model.backbone.vit.cls_token.device()
    }

    /// Flat normalised images (B, C, S, S) as a tensor, or an error naming the layout.
    pub fn images(&self, images: &[f32]) -> Result<Tensor> {
        let e = &self.model.cfg.encoder;
        let per = e.in_chans * e.img_size * e.img_size;
        if images.is_empty() || !images.len().is_multiple_of(per) {
            candle_core::bail!(
                "images has {} values, not a positive multiple of C*S*S = {}*{}*{} = {per}",
                images.len(),
                e.in_chans,
                e.img_size,
                e.img_size
            );
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            candle_core::bail!("images[{i}] is not finite");
        }
        Tensor::from_slice(images, (images.len() / per, e.in_chans, e.img_size, e.img_size), self.device())
    }

    /// Targets must have boxes inside their valid size, known classes, a size within the input.
    pub fn check_targets(&self, targets: &[ImageTarget], b: usize) -> Result<()> {
        if targets.len() != b {
            candle_core::bail!("targets has {} entries for {b} images", targets.len());
        }
        let (s, k) = (self.model.cfg.encoder.img_size, self.model.cfg.num_classes);
        for (i, t) in targets.iter().enumerate() {
            let (h, w) = t.size;
            if h == 0 || w == 0 || h > s || w > s {
                candle_core::bail!("targets[{i}].size {h}x{w} must be within the {s}x{s} input");
            }
            if t.classes.len() != t.boxes.len() {
                candle_core::bail!("targets[{i}]: {} boxes, {} classes", t.boxes.len(), t.classes.len());
            }
            if let Some(c) = t.classes.iter().find(|&&c| c >= k) {
                candle_core::bail!("targets[{i}]: class {c} of a {k}-class detector");
            }
            for (j, b) in t.boxes.iter().enumerate() {
                let ok = b.iter().all(|v| v.is_finite()) && b[2] > b[0] && b[3] > b[1];
                if !ok || b[0] < 0.0 || b[1] < 0.0 || b[2] > w as f32 || b[3] > h as f32 {
                    candle_core::bail!("targets[{i}].boxes[{j}] = {b:?} is empty or outside the {w}x{h} image");
                }
            }
        }
        Ok(())
    }

    /// The losses of a batch and the gradients in the optimizer's order (no update); step
    /// t + 1's draws.
    pub fn loss_and_grads(&self, images: &Tensor, targets: &[ImageTarget]) -> Result<(DetectionLoss, Vec<Tensor>)> {
        let mut rng = InitRng::new(key(self.seed, &[self.opt.step + 1]));
        let l = self.model.losses(images, targets, &mut rng)?;
        let total = l.total()?;
        let grads = self.opt.collect(&total.backward()?)?;
        let v = |t: &Tensor| -> Result<f64> { t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>() };
        let loss = DetectionLoss {
            loss: v(&total)?,
            rpn_cls: v(&l.rpn_cls)?,
            rpn_loc: v(&l.rpn_loc)?,
            cls: v(&l.cls)?,
            box_reg: v(&l.box_reg)?,
        };
        Ok((loss, grads))
    }

    /// One AdamW step on flat images and targets; a non-finite loss leaves everything untouched.
    pub fn step_arrays(
        &mut self,
        images: &[f32],
        targets: &[ImageTarget],
        lr: f64,
        weight_decay: f64,
    ) -> Result<DetectionLoss> {
        check_step_options(lr, weight_decay)?;
        let x = self.images(images)?;
        self.check_targets(targets, x.dim(0)?)?;
        let (loss, grads) = self.loss_and_grads(&x, targets)?;
        if !loss.loss.is_finite() {
            candle_core::bail!("non-finite detection loss {}: step skipped", loss.loss);
        }
        self.opt.step(&grads, &adamw_params(lr, weight_decay))?;
        self.step += 1;
        Ok(loss)
    }

    /// Detections of flat images, each with its valid (h, w), in input pixels.
    pub fn detect_arrays(&self, images: &[f32], sizes: &[(usize, usize)]) -> Result<Vec<Detections>> {
        let x = self.images(images)?;
        if sizes.len() != x.dim(0)? {
            candle_core::bail!("sizes has {} entries for {} images", sizes.len(), x.dim(0)?);
        }
        self.model.detect(&x, sizes)
    }

    /// Normalised inputs (B, C, S, S) of grey frames through their placements, and each one's
    /// valid (h, w); `mean` / `std` one value per input channel (the grey plane replicated).
    pub fn prepare(&self, frames: &[GreyFrame], places: &[Placement], mean: &[f32], std: &[f32]) -> Result<Prepared> {
        let e = &self.model.cfg.encoder;
        let (s, c) = (e.img_size, e.in_chans);
        if mean.len() != c || std.len() != c || std.iter().any(|v| v.is_nan() || *v <= 0.0) {
            candle_core::bail!(
                "mean / std have {} / {} values, the model takes {c} channel(s) (std > 0)",
                mean.len(),
                std.len()
            );
        }
        if places.len() != frames.len() {
            candle_core::bail!("{} placements for {} frames", places.len(), frames.len());
        }
        let mut x = vec![0f32; frames.len() * c * s * s];
        let mut sizes = Vec::with_capacity(frames.len());
        for (i, (&(px, w, h), p)) in frames.iter().zip(places).enumerate() {
            let out = &mut x[i * c * s * s..(i + 1) * c * s * s];
            sizes.push(
                place_grey(px, (w, h), p, s, mean, std, out)
                    .map_err(|e| candle_core::Error::msg(format!("frame {i}: {e}")))?,
            );
        }
        Ok((x, sizes))
    }

    /// One step on grey frames with their boxes (frame pixels) and classes, each frame through
    /// its placement (boxes emptied by the crop are dropped; a frame left without boxes is a
    /// negative).
    #[allow(clippy::too_many_arguments)]
    pub fn step_frames(
        &mut self,
        frames: &[GreyFrame],
        places: &[Placement],
        boxes: &[Vec<BoxF>],
        classes: &[Vec<usize>],
        (mean, std): (&[f32], &[f32]),
        lr: f64,
        weight_decay: f64,
    ) -> Result<DetectionLoss> {
        if boxes.len() != frames.len() || classes.len() != frames.len() {
            candle_core::bail!("{} frames, {} box lists, {} class lists", frames.len(), boxes.len(), classes.len());
        }
        let (x, sizes) = self.prepare(frames, places, mean, std)?;
        let s = self.model.cfg.encoder.img_size;
        let mut targets = Vec::with_capacity(frames.len());
        for i in 0..frames.len() {
            let (_, w, h) = frames[i];
            if boxes[i].len() != classes[i].len() {
                candle_core::bail!("frame {i}: {} boxes, {} classes", boxes[i].len(), classes[i].len());
            }
            let mut t = ImageTarget { size: sizes[i], ..Default::default() };
            for (b, &c) in boxes[i].iter().zip(&classes[i]) {
                if let Some(q) = place_box(b, (w, h), &places[i], s) {
                    t.boxes.push(q);
                    t.classes.push(c);
                }
            }
            targets.push(t);
        }
        self.step_arrays(&x, &targets, lr, weight_decay)
    }

    /// Detections of grey frames of any size, in frame pixels (each fitted to the input: the
    /// longer side to S, zero padding).
    pub fn detect_frames(&self, frames: &[GreyFrame], mean: &[f32], std: &[f32]) -> Result<Vec<Detections>> {
        if frames.is_empty() {
            return Ok(vec![]);
        }
        let s = self.model.cfg.encoder.img_size;
        let places: Vec<Placement> = frames.iter().map(|&(_, w, h)| Placement::fit(w, h, s)).collect();
        let (x, sizes) = self.prepare(frames, &places, mean, std)?;
        let mut dets = self.detect_arrays(&x, &sizes)?;
        for ((d, &(_, w, h)), p) in dets.iter_mut().zip(frames).zip(&places) {
            for b in d.boxes.iter_mut() {
                *b = unplace_box(b, (w, h), p);
            }
        }
        Ok(dets)
    }
}
