//! Patches straight out of the image, for the two places the MAE reads pixels (neither needs a
//! gradient with respect to the image):
//!
//! - [`patch_rows`]: the (B, K, C·p·p) rows of the patch embedding, in the conv weight's
//!   (channel, row, col) order, for all patches or only the kept ones. Embedding the kept
//!   patches only is MAE's embed-then-gather with the gather moved first: the same rows, a
//!   quarter of the work at mask 0.75.
//! - [`mae_loss`]: MAE's `forward_loss` (norm-pix target, mean squared error per patch,
//!   averaged over the masked patches) as one op on the predictions: the target of each masked
//!   patch is computed from the image where it is used and never stored, and the backward writes
//!   the prediction's gradient directly. The composite (patchify, normalise, subtract, square,
//!   mean, mask, sum) costs a strided copy of the image and a chain of single-threaded
//!   element-wise ops with their zero-filled gradients, a quarter of the micro step.
//!
//! - [`reconstruct`]: VasoMIM's reconstructed image (predictions de-normalised with each original
//!   patch's μ and σ, unpatchified) as one op on the predictions, in place of patchify → mean →
//!   std → broadcast multiply-add → unpatchify and the gradients of each.
//!
//! All are CPU kernels with the composites in `nn::mae` as the path of other devices and dtypes
//! ([`applies`] says which).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use frangi::simd;
use rayon::prelude::*;

use super::host::{f32_slice, use_cpu_kernel, with_f32, zeroed};
use crate::nn::loss::NORM_PIX_EPS;

/// Whether the fused kernels apply: f32 CPU tensors, no autocast or forced composite, and an
/// image that does not need a gradient.
pub fn applies(imgs: &Tensor, others: &[&Tensor]) -> bool {
    !imgs.track_op() && use_cpu_kernel(&[imgs]) && use_cpu_kernel(others)
}

/// Patch geometry of a (B, C, H, W) image cut into p×p patches.
#[derive(Clone, Copy)]
struct Grid {
    c: usize,
    h: usize,
    w: usize,
    p: usize,
}

impl Grid {
    fn of(imgs: &Tensor, p: usize) -> Result<(usize, Grid)> {
        let (b, c, h, w) = imgs.dims4()?;
        if p == 0 || h % p != 0 || w % p != 0 {
            candle_core::bail!("a ({h}, {w}) image does not cut into {p}×{p} patches");
        }
        Ok((b, Grid { c, h, w, p }))
    }

    fn patches(&self) -> usize {
        (self.h / self.p) * (self.w / self.p)
    }

    fn dim(&self) -> usize {
        self.c * self.p * self.p
    }

    /// Copies patch `l` of image `img` (C·H·W values) into `out` in (channel, row, col) order
    /// when `channel_first`, else (row, col, channel) (MAE's `patchify`).
    fn copy(&self, img: &[f32], l: usize, channel_first: bool, out: &mut [f32]) {
        let Grid { c, h, w, p } = *self;
        let (gy, gx) = (l / (w / p), l % (w / p));
        let plane = |ch: usize, i: usize| &img[ch * h * w + (gy * p + i) * w + gx * p..][..p];
        if channel_first {
            for ch in 0..c {
                for i in 0..p {
                    out[(ch * p + i) * p..][..p].copy_from_slice(plane(ch, i));
                }
            }
            return;
        }
        for i in 0..p {
            let dst = &mut out[i * p * c..][..p * c];
            match c {
                1 => dst.copy_from_slice(plane(0, i)),
                3 => {
                    let (r, g, b) = (plane(0, i), plane(1, i), plane(2, i));
                    for (j, px) in dst.chunks_exact_mut(3).enumerate() {
                        px.copy_from_slice(&[r[j], g[j], b[j]]);
                    }
                }
                _ => {
                    for ch in 0..c {
                        for (j, v) in plane(ch, i).iter().enumerate() {
                            dst[j * c + ch] = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The patch-embedding rows (B, K, C·p·p) of `imgs` (B, C, H, W), (channel, row, col) inside a
/// row: every patch in raster order (`ids_keep` None, K = L) or the patches `ids_keep` (B, K) u32
/// lists, in its order. Falls back to reshape/permute/gather where [`applies`] is false.
pub fn patch_rows(imgs: &Tensor, p: usize, ids_keep: Option<&Tensor>) -> Result<Tensor> {
    let (b, g) = Grid::of(imgs, p)?;
    let (l, d) = (g.patches(), g.dim());
    if !applies(imgs, &[]) {
        let (gh, gw) = (g.h / p, g.w / p);
        let x = imgs.reshape((b, g.c, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b, l, d))?;
        return match ids_keep {
            Some(ids) => {
                let k = ids.dim(1)?;
                x.gather(&ids.unsqueeze(2)?.broadcast_as((b, k, d))?.contiguous()?, 1)
            }
            None => Ok(x),
        };
    }
    let ids: Vec<u32> = match ids_keep {
        Some(ids) => {
            if ids.dim(0)? != b {
                candle_core::bail!("ids_keep has {} rows for {b} images", ids.dim(0)?);
            }
            ids.flatten_all()?.to_vec1::<u32>()?
        }
        None => (0..b).flat_map(|_| 0..l as u32).collect(),
    };
    let k = ids.len() / b.max(1);
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= l) {
        candle_core::bail!("ids_keep holds patch {bad}, the image has {l}");
    }
    let mut out = zeroed(b * k * d);
    with_f32(&[imgs], "patch rows", |s| {
        let img_len = g.c * g.h * g.w;
        out.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
            g.copy(&s[0][(r / k) * img_len..][..img_len], ids[r] as usize, true, row);
        });
        Ok(())
    })?;
    Tensor::from_vec(out, (b, k, d), imgs.device())
}

/// MAE's reconstruction loss of `pred` (B, L, p·p·C) against `imgs` (B, C, H, W) cut into p×p
/// patches ((row, col, channel) order), per patch normalised by its mean and unbiased std when
/// `norm_pix`: Σ_{b,l} mask·mean_j (pred − target)² / Σ mask, `mask` (B, L). A CPU op on `pred`
/// (callers check [`applies`]; `nn::mae` holds the composite).
pub fn mae_loss(pred: &Tensor, imgs: &Tensor, mask: &Tensor, p: usize, norm_pix: bool) -> Result<Tensor> {
    let (b, g) = Grid::of(imgs, p)?;
    let want = (b, g.patches(), g.dim());
    if pred.dims3()? != want {
        candle_core::bail!(
            "predictions {:?} for images {:?} with {p}×{p} patches: expected {want:?}",
            pred.dims(),
            imgs.dims()
        );
    }
    if mask.dims() != [b, g.patches()] {
        candle_core::bail!("mask {:?}, expected ({b}, {})", mask.dims(), g.patches());
    }
    let op = MaeLoss { imgs: imgs.contiguous()?, mask: mask.flatten_all()?.to_vec1::<f32>()?, grid: g, norm_pix };
    pred.contiguous()?.apply_op1(op)
}

struct MaeLoss {
    imgs: Tensor,
    mask: Vec<f32>,
    grid: Grid,
    norm_pix: bool,
}

impl MaeLoss {
    /// The (normalised) target of row r = b·L + l into `t`, from the images' data `imgs`.
    fn target(&self, imgs: &[f32], r: usize, t: &mut [f32]) {
        let (g, l) = (self.grid, self.grid.patches());
        let img_len = g.c * g.h * g.w;
        g.copy(&imgs[(r / l) * img_len..][..img_len], r % l, false, t);
        if self.norm_pix {
            normalise(t);
        }
    }

    fn mask_sum(&self) -> f32 {
        self.mask.iter().sum()
    }
}

/// (t − μ)/sqrt(var + ε) in place, with the unbiased variance (`loss::norm_pix`).
fn normalise(t: &mut [f32]) {
    let n = t.len() as f32;
    let mean = simd::sum(t) / n;
    let var = simd::sum2(t, t, |v, _| (v - mean) * (v - mean)) / (n - 1.0);
    let inv = 1.0 / (var + NORM_PIX_EPS as f32).sqrt();
    t.iter_mut().for_each(|v| *v = (*v - mean) * inv);
}

impl CustomOp1 for MaeLoss {
    fn name(&self) -> &'static str {
        "vasomim-mae-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let pred = f32_slice(s, layout, "mae loss")?;
        let d = self.grid.dim();
        let per: Vec<f32> = with_f32(&[&self.imgs], "mae loss", |imgs| {
            Ok((0..self.mask.len())
                .into_par_iter()
                .map_init(
                    || vec![0f32; d],
                    |t, r| {
                        if self.mask[r] == 0.0 {
                            return 0.0;
                        }
                        self.target(imgs[0], r, t);
                        let sq = simd::sum2(&pred[r * d..][..d], t, |x, y| (x - y) * (x - y));
                        self.mask[r] * (sq / d as f32)
                    },
                )
                .collect())
        })?;
        // Summed in row order: the same bits for any thread count.
        let total: f64 = per.into_iter().map(f64::from).sum();
        Ok((CpuStorage::F32(vec![(total / self.mask_sum() as f64) as f32]), Shape::from(())))
    }

    fn bwd(&self, pred: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let d = self.grid.dim();
        let scale = 2.0 * g / (d as f32 * self.mask_sum());
        let dx = with_f32(&[pred, &self.imgs], "mae loss backward", |s| {
            let (pred, imgs) = (s[0], s[1]);
            let mut dx = zeroed(pred.len());
            dx.par_chunks_mut(d).enumerate().for_each_init(
                || vec![0f32; d],
                |t, (r, o)| {
                    if self.mask[r] != 0.0 {
                        self.target(imgs, r, t);
                        let w = scale * self.mask[r];
                        o.iter_mut().zip(&pred[r * d..][..d]).zip(t.iter()).for_each(|((o, x), y)| *o = w * (x - y));
                    }
                },
            );
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, pred.shape(), pred.device())?))
    }
}

/// The image (B, C, H, W) of predictions `pred` (B, L, p·p·C) for `imgs` cut into p×p patches:
/// each row times its original patch's unbiased std (+ ε, as `loss::norm_pix`) plus its mean when
/// `norm_pix`, then unpatchified ((row, col, channel) order inside a row). A CPU op on `pred`
/// (callers check [`applies`]; `nn::mae` holds the composite).
pub fn reconstruct(pred: &Tensor, imgs: &Tensor, p: usize, norm_pix: bool) -> Result<Tensor> {
    let (b, g) = Grid::of(imgs, p)?;
    let want = (b, g.patches(), g.dim());
    if pred.dims3()? != want {
        candle_core::bail!(
            "predictions {:?} for images {:?} with {p}×{p} patches: expected {want:?}",
            pred.dims(),
            imgs.dims()
        );
    }
    let op = Reconstruct { imgs: imgs.contiguous()?, grid: g, norm_pix, scale: Mutex::new(Vec::new()) };
    pred.contiguous()?.apply_op1(op)
}

struct Reconstruct {
    imgs: Tensor,
    grid: Grid,
    norm_pix: bool,
    /// Per row, the std its prediction was multiplied by (the backward's scale).
    scale: Mutex<Vec<f32>>,
}

impl Grid {
    /// The scatter that inverts [`Grid::copy`]'s gather for the (row, col, channel) order:
    /// `f(v)` of each value of patch row `row` written to patch `l`'s pixels of image `img`.
    fn scatter(&self, row: &[f32], l: usize, img: &mut [f32], f: impl Fn(f32) -> f32) {
        let Grid { c, h, w, p } = *self;
        let (gy, gx) = (l / (w / p), l % (w / p));
        for i in 0..p {
            let src = &row[i * p * c..][..p * c];
            for ch in 0..c {
                let dst = &mut img[ch * h * w + (gy * p + i) * w + gx * p..][..p];
                for (jx, d) in dst.iter_mut().enumerate() {
                    *d = f(src[jx * c + ch]);
                }
            }
        }
    }
}

impl CustomOp1 for Reconstruct {
    fn name(&self) -> &'static str {
        "vasomim-reconstruct"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let pred = f32_slice(s, layout, "reconstruct")?;
        let (g, l, d) = (self.grid, self.grid.patches(), self.grid.dim());
        let img_len = g.c * g.h * g.w;
        let b = pred.len() / (l * d).max(1);
        let mut out = zeroed(b * img_len);
        let mut scale = vec![1f32; b * l];
        with_f32(&[&self.imgs], "reconstruct", |imgs| {
            out.par_chunks_mut(img_len.max(1)).zip(scale.par_chunks_mut(l.max(1))).enumerate().for_each(
                |(bi, (o, sc))| {
                    let img = &imgs[0][bi * img_len..][..img_len];
                    let mut t = vec![0f32; d];
                    for (li, s) in sc.iter_mut().enumerate() {
                        let (mean, std) = if self.norm_pix {
                            g.copy(img, li, false, &mut t);
                            let n = d as f32;
                            let mean = simd::sum(&t) / n;
                            let var = simd::sum2(&t, &t, |v, _| (v - mean) * (v - mean)) / (n - 1.0);
                            (mean, (var + NORM_PIX_EPS as f32).sqrt())
                        } else {
                            (0.0, 1.0)
                        };
                        *s = std;
                        g.scatter(&pred[(bi * l + li) * d..][..d], li, o, |v| v * std + mean);
                    }
                },
            );
            Ok(())
        })?;
        *self.scale.lock().map_err(|_| candle_core::Error::msg("reconstruct: poisoned"))? = scale;
        Ok((CpuStorage::F32(out), Shape::from((b, g.c, g.h, g.w))))
    }

    fn bwd(&self, pred: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (g, l, d) = (self.grid, self.grid.patches(), self.grid.dim());
        let img_len = g.c * g.h * g.w;
        let scale = self.scale.lock().map_err(|_| candle_core::Error::msg("reconstruct: poisoned"))?;
        if scale.len() * d != pred.elem_count() {
            candle_core::bail!("reconstruct: backward before forward");
        }
        let dp = with_f32(&[grad], "reconstruct backward", |s| {
            let gi = s[0];
            let mut dp = vec![0f32; scale.len() * d];
            // Each row's image gradient is its patch in (row, col, channel) order, times its scale.
            dp.par_chunks_mut(d.max(1)).enumerate().for_each(|(r, row)| {
                g.copy(&gi[(r / l) * img_len..][..img_len], r % l, false, row);
                row.iter_mut().for_each(|v| *v *= scale[r]);
            });
            Ok(dp)
        })?;
        Ok(Some(Tensor::from_vec(dp, pred.shape(), pred.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::force_composite;
    use super::super::testing::{max_diff, rand};
    use super::*;
    use crate::nn::loss::{masked_patch_mse, norm_pix};
    use crate::nn::mae::patchify;
    use candle_core::{Device, Var};

    fn ids(rows: &[&[u32]]) -> Tensor {
        let k = rows[0].len();
        Tensor::from_vec(rows.concat(), (rows.len(), k), &Device::Cpu).unwrap()
    }

    /// The rows equal the composite's (reshape, permute, gather) exactly, kept or all, and a bad
    /// patch index is an error.
    #[test]
    fn patch_rows_match_the_composite() {
        let imgs = rand(1, &[2, 3, 8, 12]);
        let keep = ids(&[&[5, 0, 3], &[1, 2, 4]]);
        for ids in [None, Some(&keep)] {
            let ours = patch_rows(&imgs, 4, ids).unwrap();
            force_composite(true);
            let reference = patch_rows(&imgs, 4, ids).unwrap();
            force_composite(false);
            assert_eq!(ours.dims(), reference.dims());
            assert_eq!(max_diff(&ours, &reference), 0.0);
        }
        let err = patch_rows(&imgs, 4, Some(&ids(&[&[6], &[0]]))).unwrap_err().to_string();
        assert!(err.contains("patch 6, the image has 6"), "{err}");
        assert!(patch_rows(&imgs, 5, None).unwrap_err().to_string().contains("5×5 patches"));
    }

    /// The fused loss and its gradient equal the composite of `nn::loss` (norm-pix or not, a
    /// mask with a fractional weight, 1, 2 and 3 channels), and masked-out rows get a zero
    /// gradient.
    #[test]
    fn mae_loss_matches_the_composite() {
        for c in [1, 2, 3] {
            mae_loss_case(c);
        }
    }

    fn mae_loss_case(c: usize) {
        let (b, hw, p) = (2, 8, 4);
        let imgs = rand(2, &[b, c, hw, hw]);
        let l = (hw / p) * (hw / p);
        let mask = Tensor::from_vec(vec![1f32, 0., 1., 0.5, 0., 1., 1., 0.], (b, l), &Device::Cpu).unwrap();
        for norm in [true, false] {
            let pred = Var::from_tensor(&rand(3, &[b, l, p * p * c])).unwrap();
            let ours = mae_loss(pred.as_tensor(), &imgs, &mask, p, norm).unwrap();
            let target = patchify(&imgs, p).unwrap();
            let target = if norm { norm_pix(&target).unwrap().0 } else { target };
            let reference = masked_patch_mse(pred.as_tensor(), &target, &mask).unwrap();
            let (a, r) = (ours.to_scalar::<f32>().unwrap(), reference.to_scalar::<f32>().unwrap());
            assert!((a - r).abs() <= 1e-6 * r.abs(), "c {c} norm {norm}: {a} vs {r}");
            let ga = ours.affine(3.0, 0.0).unwrap().backward().unwrap();
            let gr = reference.affine(3.0, 0.0).unwrap().backward().unwrap();
            let (ga, gr) = (ga.get(pred.as_tensor()).unwrap(), gr.get(pred.as_tensor()).unwrap());
            assert!(max_diff(ga, gr) <= 1e-7, "c {c} norm {norm}: gradient differs by {}", max_diff(ga, gr));
            let row1 = ga.get(0).unwrap().get(1).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(row1.to_scalar::<f32>().unwrap(), 0.0, "a masked-out patch has a gradient");
        }
    }

    /// The fused reconstruction against the composite (patchify → norm_pix stats → multiply-add
    /// → unpatchify), forward and gradient, for 1 to 3 channels with and without norm-pix.
    #[test]
    fn reconstruct_matches_the_composite() {
        let (b, hw, p) = (2, 8, 4);
        let l = (hw / p) * (hw / p);
        for c in [1, 2, 3] {
            let imgs = rand(4, &[b, c, hw, hw]);
            for norm in [true, false] {
                let pred = Var::from_tensor(&rand(5, &[b, l, p * p * c])).unwrap();
                let ours = reconstruct(pred.as_tensor(), &imgs, p, norm).unwrap();
                let composite = if norm {
                    let (_, mean, std) = norm_pix(&patchify(&imgs, p).unwrap()).unwrap();
                    pred.as_tensor().broadcast_mul(&std).unwrap().broadcast_add(&mean).unwrap()
                } else {
                    pred.as_tensor().clone()
                };
                let reference = crate::nn::mae::unpatchify(&composite, p, c).unwrap();
                assert!(max_diff(&ours, &reference) <= 1e-6, "c {c} norm {norm}: {}", max_diff(&ours, &reference));
                let r = rand(6, ours.dims());
                let ga = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gr = (&reference * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let (ga, gr) = (ga.get(pred.as_tensor()).unwrap(), gr.get(pred.as_tensor()).unwrap());
                assert!(max_diff(ga, gr) <= 1e-6, "c {c} norm {norm}: gradient differs by {}", max_diff(ga, gr));
            }
        }
        let err = reconstruct(&rand(5, &[b, l, 15]), &rand(4, &[b, 1, hw, hw]), p, true).unwrap_err();
        assert!(err.to_string().contains("expected (2, 4, 16)"), "{err}");
    }

    #[test]
    fn mae_loss_rejects_mismatched_shapes() {
        let imgs = rand(2, &[1, 1, 8, 8]);
        let mask = Tensor::ones((1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = mae_loss(&rand(3, &[1, 4, 15]), &imgs, &mask, 4, true).unwrap_err().to_string();
        assert!(err.contains("expected (1, 4, 16)"), "{err}");
        let err = mae_loss(&rand(3, &[1, 4, 16]), &imgs, &mask.narrow(1, 0, 3).unwrap(), 4, true).unwrap_err();
        assert!(err.to_string().contains("mask [1, 3], expected (1, 4)"), "{err}");
    }
}
