//! The detector: [`DetectionConfig`] (camelCase JSON) and [`ViTDet`] = backbone → simple
//! pyramid → RPN → box head, with its training losses ([`ViTDet::losses`]) and inference
//! ([`ViTDet::detect`]). Keys: the encoder keeps timm's names (plus `blocks.{i}.attn.rel_pos_*`),
//! the rest lives under `pyramid.*`, `rpn.*`, `roi_heads.*`.

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::backbone::{SimplePyramid, ViTDetBackbone};
use super::boxes::BoxF;
use super::heads::{proposals, rpn_losses, BoxHead, Detections, RoiSettings, RpnHead, RpnSettings};
use crate::nn::presets::MaeConfig;
use crate::nn::{InitRng, ParamBuilder, ParamStore};

/// Parameter prefixes the forward pass does not use (the encoder's final norm and cls token).
pub const FROZEN: &[&str] = &["norm", "cls_token"];

/// Everything that fixes the detector's shapes and its training / inference settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectionConfig {
    /// Encoder shape; `imgSize` is the detector's (square) input side.
    pub encoder: MaeConfig,
    /// Foreground classes (1 for stenosis).
    pub num_classes: usize,
    /// Window side in tokens (14 in ViTDet-B).
    pub window_size: usize,
    /// Blocks with global attention (2, 5, 8, 11 in ViTDet-B).
    pub global_blocks: Vec<usize>,
    /// Largest drop-path rate (last block), linear over depth.
    pub drop_path: f64,
    /// Pyramid channels (256).
    pub fpn_dim: usize,
    /// Anchor side per level P2–P6 (32, 64, 128, 256, 512).
    pub anchor_sizes: Vec<f32>,
    pub rpn_batch: usize,
    pub rpn_positive_fraction: f64,
    pub rpn_pre_nms_train: usize,
    pub rpn_pre_nms_test: usize,
    pub rpn_post_nms: usize,
    pub rpn_nms: f32,
    /// Box head: conv channels (256), convs (4), FC width (1024), pooled side (7).
    pub box_conv_dim: usize,
    pub box_convs: usize,
    pub box_fc_dim: usize,
    pub pooler: usize,
    pub roi_batch: usize,
    pub roi_positive_fraction: f64,
    pub score_threshold: f32,
    pub test_nms: f32,
    pub detections_per_image: usize,
}

impl DetectionConfig {
    /// ViTDet's settings (detectron2 `mask_rcnn_vitdet_b_100ep.py` minus the mask branch) for an
    /// encoder whose `img_size` is the input side.
    pub fn vitdet(encoder: MaeConfig, num_classes: usize) -> Self {
        let depth = encoder.depth;
        DetectionConfig {
            encoder,
            num_classes,
            window_size: 14,
            global_blocks: (0..depth).filter(|i| i % 3 == 2).collect(),
            drop_path: 0.1,
            fpn_dim: 256,
            anchor_sizes: vec![32.0, 64.0, 128.0, 256.0, 512.0],
            rpn_batch: 256,
            rpn_positive_fraction: 0.5,
            rpn_pre_nms_train: 2000,
            rpn_pre_nms_test: 1000,
            rpn_post_nms: 1000,
            rpn_nms: 0.7,
            box_conv_dim: 256,
            box_convs: 4,
            box_fc_dim: 1024,
            pooler: 7,
            roi_batch: 512,
            roi_positive_fraction: 0.25,
            score_threshold: 0.05,
            test_nms: 0.5,
            detections_per_image: 100,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        self.encoder.validate()?;
        let e = &self.encoder;
        if self.num_classes == 0 {
            return Err("numClasses must be >= 1".into());
        }
        if !e.embed_dim.is_multiple_of(4) {
            return Err(format!("the pyramid needs embedDim divisible by 4, got {}", e.embed_dim));
        }
        if e.patch_size != 16 {
            return Err(format!("the pyramid's strides 4..64 need patch size 16, got {}", e.patch_size));
        }
        if !e.img_size.is_multiple_of(64) {
            return Err(format!("imgSize must be a multiple of 64 (stride of P6), got {}", e.img_size));
        }
        if let Some(b) = self.global_blocks.iter().find(|&&b| b >= e.depth) {
            return Err(format!("globalBlocks: block {b} does not exist (depth {})", e.depth));
        }
        if self.window_size == 0 {
            return Err("windowSize must be >= 1".into());
        }
        if self.anchor_sizes.len() != 5 || self.anchor_sizes.iter().any(|&s| s <= 0.0) {
            return Err("anchorSizes must be 5 positive sizes (P2..P6)".into());
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(format!("dropPath = {} must be in [0, 1)", self.drop_path));
        }
        for (name, v) in
            [("rpnPositiveFraction", self.rpn_positive_fraction), ("roiPositiveFraction", self.roi_positive_fraction)]
        {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("{name} = {v} must be in (0, 1]"));
            }
        }
        for (name, v) in [
            ("fpnDim", self.fpn_dim),
            ("rpnBatch", self.rpn_batch),
            ("rpnPreNmsTrain", self.rpn_pre_nms_train),
            ("rpnPreNmsTest", self.rpn_pre_nms_test),
            ("rpnPostNms", self.rpn_post_nms),
            ("boxConvDim", self.box_conv_dim),
            ("boxFcDim", self.box_fc_dim),
            ("pooler", self.pooler),
            ("roiBatch", self.roi_batch),
            ("detectionsPerImage", self.detections_per_image),
        ] {
            if v == 0 {
                return Err(format!("{name} must be >= 1"));
            }
        }
        Ok(())
    }

    fn rpn(&self, train: bool) -> RpnSettings {
        RpnSettings {
            batch: self.rpn_batch,
            positive_fraction: self.rpn_positive_fraction,
            pre_nms: if train { self.rpn_pre_nms_train } else { self.rpn_pre_nms_test },
            post_nms: self.rpn_post_nms,
            nms: self.rpn_nms,
        }
    }

    fn roi(&self) -> RoiSettings {
        RoiSettings {
            batch: self.roi_batch,
            positive_fraction: self.roi_positive_fraction,
            score_threshold: self.score_threshold,
            nms: self.test_nms,
            detections: self.detections_per_image,
            pooler: self.pooler,
        }
    }
}

/// Ground truth of one image: boxes in input pixels, their class indices, the valid (h, w).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageTarget {
    pub boxes: Vec<BoxF>,
    pub classes: Vec<usize>,
    pub size: (usize, usize),
}

/// The four training losses (tensors, differentiable).
pub struct DetectionLosses {
    pub rpn_cls: Tensor,
    pub rpn_loc: Tensor,
    pub cls: Tensor,
    pub box_reg: Tensor,
}

impl DetectionLosses {
    pub fn total(&self) -> Result<Tensor> {
        (&self.rpn_cls + &self.rpn_loc)? + (&self.cls + &self.box_reg)?
    }
}

#[derive(Clone, Debug)]
pub struct ViTDet {
    pub cfg: DetectionConfig,
    pub backbone: ViTDetBackbone,
    pub pyramid: SimplePyramid,
    pub rpn: RpnHead,
    pub box_head: BoxHead,
    pub params: ParamStore,
}

const STRIDES: [f32; 5] = [4.0, 8.0, 16.0, 32.0, 64.0];

impl ViTDet {
    pub fn new(cfg: &DetectionConfig, device: &Device, seed: u64) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let pb = ParamBuilder::new(device, seed);
        let backbone = ViTDetBackbone::new(&pb, &cfg.encoder, cfg.window_size, &cfg.global_blocks, cfg.drop_path)?;
        let pyramid = SimplePyramid::new(&pb, cfg.encoder.embed_dim, cfg.fpn_dim)?;
        let rpn = RpnHead::new(&pb.pp("rpn"), cfg.fpn_dim)?;
        let r = pb.pp("roi_heads");
        let box_head = BoxHead::new(
            &r,
            cfg.fpn_dim,
            cfg.box_conv_dim,
            cfg.box_convs,
            cfg.box_fc_dim,
            cfg.num_classes,
            cfg.pooler,
        )?;
        Ok(ViTDet { cfg: cfg.clone(), backbone, pyramid, rpn, box_head, params: pb.into_store() })
    }

    /// Parameters and the position-embedding buffer `pos_embed`.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = self.params.tensors();
        out.push(("pos_embed".into(), self.backbone.vit.pos_embed.clone()));
        out
    }

    /// Pyramid levels P2–P6 of normalised images (B, C, S, S).
    pub fn features(&self, imgs: &Tensor, drop: Option<&mut InitRng>) -> Result<Vec<Tensor>> {
        self.pyramid.forward(&self.backbone.forward(imgs, drop)?)
    }

    /// Training losses of a batch; `rng` draws drop-path and the anchor / RoI samples.
    pub fn losses(&self, imgs: &Tensor, targets: &[ImageTarget], rng: &mut InitRng) -> Result<DetectionLosses> {
        let b = imgs.dim(0)?;
        if targets.len() != b {
            candle_core::bail!("{} targets for {b} images", targets.len());
        }
        let levels = self.features(imgs, Some(rng))?;
        let out = self.rpn.forward(&levels, &STRIDES, &self.cfg.anchor_sizes)?;
        let gt: Vec<Vec<BoxF>> = targets.iter().map(|t| t.boxes.clone()).collect();
        let rs = self.cfg.rpn(true);
        let (rpn_cls, rpn_loc) = rpn_losses(&out, &gt, &rs, rng)?;
        let sizes: Vec<(usize, usize)> = targets.iter().map(|t| t.size).collect();
        let props = proposals(&out, &sizes, &rs)?;
        let gtc: Vec<(Vec<BoxF>, Vec<usize>)> = targets.iter().map(|t| (t.boxes.clone(), t.classes.clone())).collect();
        let (cls, box_reg) = self.box_head.losses(&levels, &props, &gtc, &self.cfg.roi(), rng)?;
        Ok(DetectionLosses { rpn_cls, rpn_loc, cls, box_reg })
    }

    /// Detections of a batch in input pixels; `sizes` are the valid (h, w) of each image.
    pub fn detect(&self, imgs: &Tensor, sizes: &[(usize, usize)]) -> Result<Vec<Detections>> {
        let levels = self.features(imgs, None)?;
        let out = self.rpn.forward(&levels, &STRIDES, &self.cfg.anchor_sizes)?;
        let props = proposals(&out, sizes, &self.cfg.rpn(false))?;
        self.box_head.detect(&levels, &props, sizes, &self.cfg.roi())
    }
}
