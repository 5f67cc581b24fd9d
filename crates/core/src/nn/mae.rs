//! The masked autoencoder: encoder on the kept patches, a light decoder on all patches, and the
//! reconstruction loss of METHOD.md §7 (the loss functions live in [`super::loss`]). Steps are named as in MAE's `models_mae.py`: `patchify`,
//! `unpatchify`, `random_masking`, `forward_encoder`, `forward_decoder`, `forward_loss`.

use candle_core::{DType, Device, Result, Tensor};

use super::kernels::patch;
use super::layers::{LayerNorm, Linear};
use super::loss::{masked_patch_mse, norm_pix};
use super::pos_embed::sincos_2d_tensor;
use super::presets::MaeConfig;
use super::vit::Block;
use super::vit::VisionTransformer;
use super::{Init, InitRng, ParamBuilder, ParamStore};

#[derive(Clone, Debug)]
pub struct MaskedAutoencoder {
    pub cfg: MaeConfig,
    pub encoder: VisionTransformer,
    pub decoder_embed: Linear,
    pub mask_token: Tensor,
    /// Fixed buffer (1, 1 + L, Dd).
    pub decoder_pos_embed: Tensor,
    pub decoder_blocks: Vec<Block>,
    pub decoder_norm: LayerNorm,
    pub decoder_pred: Linear,
    /// Every trainable tensor under its state-dict name.
    pub params: ParamStore,
}

/// Masking decided outside the model (random or vessel-guided): `ids_keep` (B, K) u32 in the
/// order fed to the encoder, `ids_restore` (B, L) u32, `mask` (B, L) f32 with 1 = masked.
#[derive(Clone, Debug)]
pub struct Masking {
    pub ids_keep: Tensor,
    pub ids_restore: Tensor,
    pub mask: Tensor,
}

/// The output of one MAE forward pass.
pub struct MaeOutput {
    /// (B, L, p·p·C) predictions in the (normalised, if norm-pix) patch space.
    pub pred: Tensor,
    /// Scalar norm-pix MSE on masked patches.
    pub loss: Tensor,
}

impl MaskedAutoencoder {
    /// A freshly initialised model (MAE init, deterministic in `seed`).
    pub fn new(cfg: &MaeConfig, device: &Device, seed: u64) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let pb = ParamBuilder::new(device, seed);
        let encoder = VisionTransformer::new(&pb, cfg)?;
        let dd = cfg.decoder_embed_dim;
        let decoder_embed = Linear::new(&pb.pp("decoder_embed"), cfg.embed_dim, dd)?;
        let mask_token = pb.var("mask_token", &[1, 1, dd], Init::Normal(0.02))?.as_tensor().clone();
        let decoder_pos_embed = sincos_2d_tensor(dd, cfg.grid(), device)?;
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|i| Block::new(&pb.pp("decoder_blocks").pp(i), dd, cfg.decoder_num_heads, cfg.mlp_ratio))
            .collect::<Result<Vec<_>>>()?;
        let decoder_norm = LayerNorm::new(&pb.pp("decoder_norm"), dd)?;
        let decoder_pred = Linear::new(&pb.pp("decoder_pred"), dd, cfg.patch_dim())?;
        Ok(MaskedAutoencoder {
            cfg: cfg.clone(),
            encoder,
            decoder_embed,
            mask_token,
            decoder_pos_embed,
            decoder_blocks,
            decoder_norm,
            decoder_pred,
            params: pb.into_store(),
        })
    }

    /// (B, C, H, W) -> (B, L, p·p·C); patch index row·w + col, inside a patch (row, col, channel)
    /// with the channel fastest.
    pub fn patchify(&self, imgs: &Tensor) -> Result<Tensor> {
        patchify(imgs, self.cfg.patch_size)
    }

    /// Exact inverse of [`Self::patchify`] for square images.
    pub fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        unpatchify(x, self.cfg.patch_size, self.cfg.in_chans)
    }

    /// MAE `forward_decoder`: embed the kept tokens, append mask tokens, un-shuffle with
    /// `ids_restore`, add the position embedding, run the blocks, predict pixels; cls dropped.
    pub fn forward_decoder(&self, latent: &Tensor, ids_restore: &Tensor) -> Result<Tensor> {
        let x = self.decoder_embed.forward(latent)?.to_dtype(self.mask_token.dtype())?; // [B, 1+K, Dd]
        let (b, n, dd) = x.dims3()?;
        let l = ids_restore.dim(1)?;
        let mask_tokens = self.mask_token.broadcast_as((b, l + 1 - n, dd))?;
        let x_ = Tensor::cat(&[&x.narrow(1, 1, n - 1)?, &mask_tokens], 1)?; // [B, L, Dd]
        let idx = ids_restore.unsqueeze(2)?.broadcast_as((b, l, dd))?.contiguous()?;
        let x_ = x_.contiguous()?.gather(&idx, 1)?;
        let x = Tensor::cat(&[&x.narrow(1, 0, 1)?, &x_], 1)?.broadcast_add(&self.decoder_pos_embed)?;
        let mut x = x.reshape((b * (l + 1), dd))?;
        for blk in &self.decoder_blocks {
            x = blk.forward_rows(&x, b, l + 1)?;
        }
        // Predictions (and so the loss) in f32 whatever the autocast dtype.
        let x = self.decoder_pred.forward(&self.decoder_norm.forward(&x)?)?.to_dtype(DType::F32)?;
        x.reshape((b, l + 1, ()))?.narrow(1, 1, l) // [B, L, p*p*C]
    }

    /// MAE `forward_loss`: mean squared error per patch against the (norm-pix) target, averaged
    /// over the masked patches.
    pub fn forward_loss(&self, imgs: &Tensor, pred: &Tensor, mask: &Tensor) -> Result<Tensor> {
        if patch::applies(imgs, &[pred, mask]) {
            return patch::mae_loss(pred, imgs, mask, self.cfg.patch_size, self.cfg.norm_pix_loss);
        }
        let target = self.patchify(imgs)?;
        let target = if self.cfg.norm_pix_loss { norm_pix(&target)?.0 } else { target };
        masked_patch_mse(pred, &target, mask)
    }

    pub fn forward(&self, imgs: &Tensor, m: &Masking) -> Result<MaeOutput> {
        let latent = self.encoder.forward_encoder(imgs, Some(&m.ids_keep))?;
        let pred = self.forward_decoder(&latent, &m.ids_restore)?;
        let loss = self.forward_loss(imgs, &pred, &m.mask)?;
        Ok(MaeOutput { pred, loss })
    }

    /// The reconstruction as an image (B, C, H, W) in the normalised input space: predictions
    /// de-normalised with each original patch's μ and σ for every patch (visible patches are not
    /// pasted back), then unpatchified.
    pub fn reconstruct(&self, imgs: &Tensor, pred: &Tensor) -> Result<Tensor> {
        if patch::applies(imgs, &[pred]) {
            return patch::reconstruct(pred, imgs, self.cfg.patch_size, self.cfg.norm_pix_loss);
        }
        let pred = if self.cfg.norm_pix_loss {
            let (_, mean, std) = norm_pix(&self.patchify(imgs)?)?;
            pred.broadcast_mul(&std)?.broadcast_add(&mean)?
        } else {
            pred.clone()
        };
        self.unpatchify(&pred)
    }
}

/// See [`MaskedAutoencoder::patchify`].
pub fn patchify(imgs: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = imgs.dims4()?;
    let (gh, gw) = (h / p, w / p);
    imgs.reshape((b, c, gh, p, gw, p))?.permute((0, 2, 4, 3, 5, 1))?.contiguous()?.reshape((b, gh * gw, p * p * c))
}

/// See [`MaskedAutoencoder::unpatchify`].
pub fn unpatchify(x: &Tensor, p: usize, c: usize) -> Result<Tensor> {
    let (b, l, _) = x.dims3()?;
    let g = (l as f64).sqrt().round() as usize;
    if g * g != l {
        candle_core::bail!("unpatchify: {l} patches do not form a square grid");
    }
    x.reshape((b, g, g, p, p, c))?.permute((0, 5, 1, 3, 2, 4))?.contiguous()?.reshape((b, c, g * p, g * p))
}

/// MAE `random_masking` decided on the host: per image a random permutation (from `rng`), the
/// first ⌊L(1 − ratio)⌋ kept — in *ascending* patch order, as VasoMIM feeds kept patches.
pub fn random_masking(
    batch: usize,
    num_patches: usize,
    mask_ratio: f64,
    rng: &mut InitRng,
    device: &Device,
) -> Result<Masking> {
    let keep = ((num_patches as f64) * (1.0 - mask_ratio)) as usize;
    let mut ids_keep = Vec::with_capacity(batch * keep);
    let mut ids_restore = Vec::with_capacity(batch * num_patches);
    let mut mask = Vec::with_capacity(batch * num_patches);
    for _ in 0..batch {
        let mut perm: Vec<u32> = (0..num_patches as u32).collect();
        for i in (1..num_patches).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            perm.swap(i, j);
        }
        let mut kept: Vec<u32> = perm[..keep].to_vec();
        kept.sort_unstable();
        let (ks, ids_shuffle) = masking_from_kept(&kept, num_patches);
        ids_keep.extend_from_slice(&ks);
        let mut restore = vec![0u32; num_patches];
        for (pos, &id) in ids_shuffle.iter().enumerate() {
            restore[id as usize] = pos as u32;
        }
        ids_restore.extend_from_slice(&restore);
        let mut m = vec![1f32; num_patches];
        kept.iter().for_each(|&k| m[k as usize] = 0.0);
        mask.extend_from_slice(&m);
    }
    Ok(Masking {
        ids_keep: Tensor::from_vec(ids_keep, (batch, keep), device)?,
        ids_restore: Tensor::from_vec(ids_restore, (batch, num_patches), device)?,
        mask: Tensor::from_vec(mask, (batch, num_patches), device)?,
    })
}

/// The shuffle order for a kept set: kept ids (ascending) then the masked ids (ascending).
fn masking_from_kept(kept: &[u32], l: usize) -> (Vec<u32>, Vec<u32>) {
    let mut is_kept = vec![false; l];
    kept.iter().for_each(|&k| is_kept[k as usize] = true);
    let mut shuffle = kept.to_vec();
    shuffle.extend((0..l as u32).filter(|&i| !is_kept[i as usize]));
    (kept.to_vec(), shuffle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_order_and_inverse() {
        let dev = Device::Cpu;
        // B=1, C=2, 4×4, p=2: element (c, y, x) = 100c + 10y + x
        let v: Vec<f32> =
            (0..2).flat_map(|c| (0..4).flat_map(move |y| (0..4).map(move |x| (100 * c + 10 * y + x) as f32))).collect();
        let img = Tensor::from_vec(v, (1, 2, 4, 4), &dev).unwrap();
        let p = patchify(&img, 2).unwrap();
        assert_eq!(p.dims(), &[1, 4, 8]);
        let rows = p.to_vec3::<f32>().unwrap();
        // patch 1 = grid row 0, col 1; first pixel (y0, x2) with channels fastest: 2, 102, then (y0,x3)
        assert_eq!(rows[0][1], vec![2., 102., 3., 103., 12., 112., 13., 113.]);
        let back = unpatchify(&p, 2, 2).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            img.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn random_masking_is_consistent() {
        let dev = Device::Cpu;
        let m = random_masking(3, 16, 0.75, &mut InitRng::new(1), &dev).unwrap();
        assert_eq!(m.ids_keep.dims(), &[3, 4]);
        let keep = m.ids_keep.to_vec2::<u32>().unwrap();
        let restore = m.ids_restore.to_vec2::<u32>().unwrap();
        let mask = m.mask.to_vec2::<f32>().unwrap();
        for b in 0..3 {
            assert!(keep[b].windows(2).all(|w| w[0] < w[1]));
            for &k in &keep[b] {
                assert_eq!(mask[b][k as usize], 0.0);
                assert!(restore[b][k as usize] < 4, "a kept patch restores to a kept slot");
            }
            assert_eq!(mask[b].iter().sum::<f32>(), 12.0);
        }
    }
}
