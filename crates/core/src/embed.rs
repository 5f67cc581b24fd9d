//! Image features from a trained encoder: angiogram files → (N, 2, D) with the cls token after
//! the final norm and the mean of the patch tokens after the final norm (no masking).
//!
//! Preprocessing is the pre-training one: grey values / 255, resized bicubically (PIL-style,
//! antialiased) when the frame is not the model's input size, replicated to the model's channels,
//! normalised per channel with the ImageNet mean/std (a 1-channel model uses their averages,
//! 0.449 / 0.226).

use std::path::Path;

use candle_core::{Device, Result, Tensor};

use crate::io::{read_grey, GreyImage};
use crate::nn::mae::MaskedAutoencoder;
use crate::nn::pos_embed::resize_bicubic;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
pub const GREY_MEAN: f32 = 0.449;
pub const GREY_STD: f32 = 0.226;

/// (C, S, S) input for a model with `chans` channels and size `size`.
pub fn preprocess(img: &GreyImage, size: usize, chans: usize) -> Vec<f32> {
    let unit: Vec<f32> = img.pixels.iter().map(|v| v / 255.0).collect();
    let plane = if img.width == size && img.height == size {
        unit
    } else {
        resize_bicubic(&unit, 1, img.height, img.width, size, size)
    };
    let mut out = Vec::with_capacity(chans * size * size);
    for c in 0..chans {
        let (m, s) = if chans == 3 { (IMAGENET_MEAN[c], IMAGENET_STD[c]) } else { (GREY_MEAN, GREY_STD) };
        out.extend(plane.iter().map(|v| (v - m) / s));
    }
    out
}

/// Features of normalised images (B, C, S, S): (B, 2, D) as a flat vector.
pub fn embed_batch(model: &MaskedAutoencoder, imgs: &Tensor) -> Result<Vec<f32>> {
    model.encoder.embed(imgs)?.flatten_all()?.to_vec1::<f32>()
}

/// Features of image files, `batch` at a time: (N, 2, D) flat, and D.
pub fn embed_files(
    model: &MaskedAutoencoder,
    paths: &[&Path],
    batch: usize,
    device: &Device,
) -> Result<(Vec<f32>, usize)> {
    let (s, c) = (model.cfg.img_size, model.cfg.in_chans);
    let mut out = Vec::new();
    for chunk in paths.chunks(batch.max(1)) {
        let mut data = Vec::with_capacity(chunk.len() * c * s * s);
        for p in chunk {
            let img = read_grey(p).map_err(|e| candle_core::Error::msg(format!("{}: {e}", p.display())))?;
            data.extend(preprocess(&img, s, c));
        }
        let t = Tensor::from_vec(data, (chunk.len(), c, s, s), device)?;
        out.extend(embed_batch(model, &t)?);
    }
    Ok((out, model.cfg.embed_dim))
}
