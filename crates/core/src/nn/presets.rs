//! Model sizes by name and the full model configuration.
//!
//! Encoder sizes are timm's ViT-Ti/S/B/L/H. Decoders: MAE's 512-wide, 8-block, 16-head decoder
//! for base and larger (METHOD.md §6); lighter ones for tiny/small (the widths the PyTorch step
//! peer `scripts/peers/torch_mae_step.py` uses, so benchmarks compare like with like); micro is
//! a test-only size.

use serde::{Deserialize, Serialize};

/// Everything that fixes the parameter shapes and the forward pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaeConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub decoder_embed_dim: usize,
    pub decoder_depth: usize,
    pub decoder_num_heads: usize,
    pub mlp_ratio: f64,
    pub norm_pix_loss: bool,
}

/// (name, embed, depth, heads, decoder embed, decoder depth, decoder heads, patch)
pub type Preset = (&'static str, usize, usize, usize, usize, usize, usize, usize);

pub const PRESETS: &[Preset] = &[
    ("micro", 64, 2, 2, 64, 1, 2, 16),
    ("tiny", 192, 12, 3, 128, 4, 4, 16),
    ("small", 384, 12, 6, 256, 4, 8, 16),
    ("base", 768, 12, 12, 512, 8, 16, 16),
    ("large", 1024, 24, 16, 512, 8, 16, 16),
    ("huge", 1280, 32, 16, 512, 8, 16, 14),
];

impl MaeConfig {
    /// A preset at 224² with 3 channels (the timm default input).
    pub fn preset(name: &str) -> Option<Self> {
        PRESETS.iter().find(|p| p.0 == name).map(|&(_, e, d, h, de, dd, dh, p)| MaeConfig {
            img_size: 224,
            patch_size: p,
            in_chans: 3,
            embed_dim: e,
            depth: d,
            num_heads: h,
            decoder_embed_dim: de,
            decoder_depth: dd,
            decoder_num_heads: dh,
            mlp_ratio: 4.0,
            norm_pix_loss: true,
        })
    }

    /// The unit-test configuration: micro widths on 32² images with 8² patches (16 patches),
    /// one channel.
    pub fn micro_test() -> Self {
        MaeConfig {
            img_size: 32,
            patch_size: 8,
            in_chans: 1,
            embed_dim: 32,
            num_heads: 2,
            decoder_embed_dim: 32,
            ..Self::preset("micro").unwrap()
        }
    }

    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|p| p.0).collect()
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    /// The preset whose encoder has these widths, if any (for files without a config).
    pub fn preset_name_for(embed_dim: usize, depth: usize) -> Option<&'static str> {
        PRESETS.iter().find(|p| p.1 == embed_dim && p.2 == depth).map(|p| p.0)
    }

    pub fn validate(&self) -> Result<(), String> {
        let pos = |v: usize, n: &str| {
            if v == 0 {
                Err(format!("{n} must be > 0"))
            } else {
                Ok(())
            }
        };
        pos(self.img_size, "imgSize")?;
        pos(self.patch_size, "patchSize")?;
        pos(self.embed_dim, "embedDim")?;
        pos(self.depth, "depth")?;
        pos(self.num_heads, "numHeads")?;
        pos(self.decoder_embed_dim, "decoderEmbedDim")?;
        pos(self.decoder_num_heads, "decoderNumHeads")?;
        if !self.img_size.is_multiple_of(self.patch_size) {
            return Err(format!("imgSize {} is not divisible by patchSize {}", self.img_size, self.patch_size));
        }
        if !matches!(self.in_chans, 1 | 3) {
            return Err(format!("inChans must be 1 or 3, got {}", self.in_chans));
        }
        for (d, h, n) in [
            (self.embed_dim, self.num_heads, "embedDim"),
            (self.decoder_embed_dim, self.decoder_num_heads, "decoderEmbedDim"),
        ] {
            if !d.is_multiple_of(h) {
                return Err(format!("{n} {d} is not divisible by its {h} heads"));
            }
            if !d.is_multiple_of(4) {
                return Err(format!("{n} {d} must be divisible by 4 (2-D sin-cos position embedding)"));
            }
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            return Err("mlpRatio must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for n in MaeConfig::preset_names() {
            MaeConfig::preset(n).unwrap().validate().unwrap();
        }
        MaeConfig::micro_test().validate().unwrap();
        let bad = MaeConfig { img_size: 30, ..MaeConfig::micro_test() };
        assert_eq!(bad.validate().unwrap_err(), "imgSize 30 is not divisible by patchSize 8");
    }
}
