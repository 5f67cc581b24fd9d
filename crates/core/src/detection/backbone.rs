//! The ViTDet backbone: our ViT encoder's parameters (timm names, so our checkpoints, MAE `.pth`
//! and timm files initialise it) run the ViTDet way, and the simple feature pyramid.
//!
//! - [`ViTDetBackbone`]: patch embedding + the position table without its cls row (resampled
//!   to the input grid when the encoder is built or loaded), no cls token, no final norm;
//!   window attention (tokens zero-padded to a multiple of the window after `norm1`, unpadded
//!   after) in every block but the global ones; decomposed relative position terms
//!   (`blocks.{i}.attn.rel_pos_h/w`, (2S − 1, head dim), zero-initialised); drop-path.
//! - [`SimplePyramid`]: P2 = ConvT2×2 → LN → GELU → ConvT2×2, P3 = ConvT2×2, P4 = identity,
//!   P5 = max-pool 2×2, each then 1×1 conv → LN, 3×3 conv → LN (bias-free convs, channel
//!   LayerNorm eps 1e-6); P6 = P5 subsampled by 2 (max-pool k1 s2).
//!
//! Attention here is a composite of candle ops (the fused kernel of `nn::kernels::attention`
//! has no additive bias); the Linear, LayerNorm, GELU and conv layers are the shared ones.

use candle_core::{Result, Tensor};

use crate::nn::kernels::activation::gelu_erf;
use crate::nn::kernels::linear::Epilogue;
use crate::nn::kernels::resample::max_pool2x2;
use crate::nn::layers::{Conv2d, LayerNorm, LN_EPS};
use crate::nn::presets::MaeConfig;
use crate::nn::vit::{Block, VisionTransformer};
use crate::nn::{Init, InitRng, ParamBuilder};

/// Relative-position tables of one block (rows: 2S − 1 offsets for a side of S tokens).
#[derive(Clone, Debug)]
pub struct RelPos {
    pub h: Tensor,
    pub w: Tensor,
}

/// The ViT run as ViTDet's backbone.
#[derive(Clone, Debug)]
pub struct ViTDetBackbone {
    pub vit: VisionTransformer,
    pub rel_pos: Vec<RelPos>,
    /// Window side of each block; 0 = global attention.
    pub windows: Vec<usize>,
    pub drop_path: f64,
}

impl ViTDetBackbone {
    /// `cfg.img_size` is the detector's input side; `window` the window side in tokens;
    /// `global` the blocks with global attention.
    pub fn new(pb: &ParamBuilder, cfg: &MaeConfig, window: usize, global: &[usize], drop_path: f64) -> Result<Self> {
        let vit = VisionTransformer::new(pb, cfg)?;
        let grid = cfg.img_size / cfg.patch_size;
        let hd = cfg.embed_dim / cfg.num_heads;
        let windows: Vec<usize> = (0..cfg.depth).map(|i| if global.contains(&i) { 0 } else { window }).collect();
        let rel_pos = windows
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let s = if w == 0 { grid } else { w };
                let a = pb.pp("blocks").pp(i).pp("attn");
                Ok(RelPos {
                    h: a.var("rel_pos_h", &[2 * s - 1, hd], Init::Zeros)?.as_tensor().clone(),
                    w: a.var("rel_pos_w", &[2 * s - 1, hd], Init::Zeros)?.as_tensor().clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ViTDetBackbone { vit, rel_pos, windows, drop_path })
    }

    /// Last-block features (B, D, g, g) at stride `patch`; `drop` = Some(rng) applies drop-path.
    pub fn forward(&self, imgs: &Tensor, mut drop: Option<&mut InitRng>) -> Result<Tensor> {
        let x = self.vit.patch_embed(imgs)?; // [B, L, D]
        let (b, l, d) = x.dims3()?;
        let g = (l as f64).sqrt().round() as usize;
        let pos = self.vit.pos_embed.narrow(1, 1, l)?;
        let mut x = x.broadcast_add(&pos)?.reshape((b, g, g, d))?;
        let depth = self.vit.blocks.len();
        for (i, blk) in self.vit.blocks.iter().enumerate() {
            let rate = if depth > 1 { self.drop_path * i as f64 / (depth - 1) as f64 } else { self.drop_path };
            let drop = drop.as_deref_mut().filter(|_| rate > 0.0);
            x = self.block(blk, i, &x, rate, drop)?;
        }
        x.permute((0, 3, 1, 2))?.contiguous()
    }

    /// One block on (B, g, g, D): windowed or global attention with relative positions, MLP.
    fn block(&self, blk: &Block, i: usize, x: &Tensor, rate: f64, mut drop: Option<&mut InitRng>) -> Result<Tensor> {
        let (b, h, w, d) = x.dims4()?;
        let y = blk.norm1.forward(&x.reshape((b * h * w, d))?)?.reshape((b, h, w, d))?;
        let s = self.windows[i];
        let y = if s == 0 {
            self.attention(blk, i, &y)?
        } else {
            let (wins, hp, wp) = window_partition(&y, s)?;
            window_unpartition(&self.attention(blk, i, &wins)?, s, (hp, wp), (h, w))?
        };
        let x = (x + drop_path(&y, rate, drop.as_deref_mut())?)?;
        let m = blk.mlp.forward(&blk.norm2.forward(&x.reshape((b * h * w, d))?)?)?.reshape((b, h, w, d))?;
        x + drop_path(&m, rate, drop)?
    }

    /// Multi-head attention on (B', S, S', D) with decomposed relative positions (detectron2
    /// `add_decomposed_rel_pos`: the unscaled query against gathered Rh, Rw tables).
    fn attention(&self, blk: &Block, i: usize, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, d) = x.dims4()?;
        let nh = blk.attn.num_heads;
        let hd = d / nh;
        let n = h * w;
        let qkv = blk.attn.qkv.forward_act(&x.reshape((b * n, d))?, Epilogue::None)?;
        let qkv = qkv.reshape((b, n, 3, nh, hd))?.permute((2, 0, 3, 1, 4))?; // [3, B, nh, N, hd]
        let q = qkv.get(0)?.contiguous()?.reshape((b * nh, n, hd))?;
        let k = qkv.get(1)?.contiguous()?.reshape((b * nh, n, hd))?;
        let v = qkv.get(2)?.contiguous()?.reshape((b * nh, n, hd))?;
        let scale = (hd as f64).powf(-0.5);
        let attn = (&q * scale)?.matmul(&k.t()?)?; // [B·nh, N, N]
        let rp = &self.rel_pos[i];
        let rh = rel_table(&rp.h, h)?; // [h, h, hd]
        let rw = rel_table(&rp.w, w)?; // [w, w, hd]
        let bq = b * nh;
        let rq = q.reshape((bq, h, w, hd))?;
        // rel_h[b, y, x, ky] = Σc q[b, y, x, c] Rh[y, ky, c]: a batched matmul over y.
        let rel_h = rq.permute((1, 0, 2, 3))?.reshape((h, bq * w, hd))?.contiguous()?.matmul(&rh.t()?.contiguous()?)?;
        let rel_h = rel_h.reshape((h, bq, w, h))?.permute((1, 0, 2, 3))?; // [B', y, x, ky]
        let rel_w = rq.permute((2, 0, 1, 3))?.reshape((w, bq * h, hd))?.contiguous()?.matmul(&rw.t()?.contiguous()?)?;
        let rel_w = rel_w.reshape((w, bq, h, w))?.permute((1, 2, 0, 3))?; // [B', y, x, kx]
        let attn = attn
            .reshape((bq, h, w, h, w))?
            .broadcast_add(&rel_h.unsqueeze(4)?)?
            .broadcast_add(&rel_w.unsqueeze(3)?)?
            .reshape((bq, n, n))?;
        let attn = candle_nn::ops::softmax(&attn, candle_core::D::Minus1)?;
        let y = attn.matmul(&v)?; // [B·nh, N, hd]
        let y = y.reshape((b, nh, n, hd))?.permute((0, 2, 1, 3))?.contiguous()?.reshape((b * n, d))?;
        blk.attn.proj.forward(&y)?.reshape((b, h, w, d))
    }
}

/// Rows of a (2S − 1, C) relative table for every (query, key) pair of a side of `s` tokens:
/// `table[q − k + s − 1]`, shape (s, s, C).
fn rel_table(table: &Tensor, s: usize) -> Result<Tensor> {
    let rows = table.dim(0)?;
    if rows != 2 * s - 1 {
        candle_core::bail!("relative position table has {rows} rows, a side of {s} tokens needs {}", 2 * s - 1);
    }
    let idx: Vec<u32> = (0..s).flat_map(|q| (0..s).map(move |k| (q + s - 1 - k) as u32)).collect();
    let idx = Tensor::from_vec(idx, s * s, table.device())?;
    table.index_select(&idx, 0)?.reshape((s, s, table.dim(1)?))
}

/// (B, H, W, C) zero-padded to multiples of `s` and cut into (B·nW, s, s, C) windows.
fn window_partition(x: &Tensor, s: usize) -> Result<(Tensor, usize, usize)> {
    let (b, h, w, c) = x.dims4()?;
    let (ph, pw) = ((s - h % s) % s, (s - w % s) % s);
    let x = if ph > 0 || pw > 0 { x.pad_with_zeros(1, 0, ph)?.pad_with_zeros(2, 0, pw)? } else { x.clone() };
    let (hp, wp) = (h + ph, w + pw);
    let x = x.reshape((b, hp / s, s, wp / s, s, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?;
    Ok((x.reshape((b * (hp / s) * (wp / s), s, s, c))?, hp, wp))
}

/// The inverse of [`window_partition`]: windows back to (B, H, W, C), padding dropped.
fn window_unpartition(x: &Tensor, s: usize, (hp, wp): (usize, usize), (h, w): (usize, usize)) -> Result<Tensor> {
    let c = x.dim(3)?;
    let b = x.dim(0)? / ((hp / s) * (wp / s));
    let x = x.reshape((b, hp / s, wp / s, s, s, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?;
    x.reshape((b, hp, wp, c))?.narrow(1, 0, h)?.narrow(2, 0, w)
}

/// Stochastic depth on a residual branch (B, …): each image kept with probability 1 − p and
/// scaled by 1/(1 − p); identity without an RNG.
fn drop_path(x: &Tensor, p: f64, rng: Option<&mut InitRng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    let b = x.dim(0)?;
    let keep: Vec<f32> = (0..b).map(|_| if rng.uniform() >= p { (1.0 / (1.0 - p)) as f32 } else { 0.0 }).collect();
    let mut shape = vec![1usize; x.rank()];
    shape[0] = b;
    x.broadcast_mul(&Tensor::from_vec(keep, shape, x.device())?)
}

/// LayerNorm over the channels of an NCHW map (detectron2's `LayerNorm` of the pyramid).
#[derive(Clone, Debug)]
pub struct ChannelNorm(LayerNorm);

impl ChannelNorm {
    pub fn new(pb: &ParamBuilder, c: usize) -> Result<Self> {
        Ok(ChannelNorm(LayerNorm::new(pb, c)?))
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let rows = x.permute((0, 2, 3, 1))?.contiguous()?.reshape((b * h * w, c))?;
        let y = crate::nn::kernels::norm::layer_norm(&rows, &self.0.weight, &self.0.bias, LN_EPS)?;
        y.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
    }
}

/// `nn.ConvTranspose2d(cin, cout, 2, stride 2)` with bias: each input pixel writes a 2×2 block.
#[derive(Clone, Debug)]
pub struct ConvT2x2 {
    /// PyTorch layout (Cin, Cout, 2, 2).
    pub weight: Tensor,
    pub bias: Tensor,
}

impl ConvT2x2 {
    pub fn new(pb: &ParamBuilder, cin: usize, cout: usize) -> Result<Self> {
        let bound = 1.0 / ((cout * 4) as f64).sqrt();
        Ok(ConvT2x2 {
            weight: pb.var("weight", &[cin, cout, 2, 2], Init::Uniform(bound))?.as_tensor().clone(),
            bias: pb.var("bias", &[cout], Init::Uniform(bound))?.as_tensor().clone(),
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let co = self.weight.dim(1)?;
        let rows = x.permute((0, 2, 3, 1))?.contiguous()?.reshape((b * h * w, c))?;
        let y = rows.matmul(&self.weight.reshape((c, co * 4))?)?; // [BHW, Cout·2·2]
        let y = y.reshape((b, h, w, co, 2, 2))?.permute((0, 3, 1, 4, 2, 5))?.contiguous()?;
        y.reshape((b, co, 2 * h, 2 * w))?.broadcast_add(&self.bias.reshape((1, co, 1, 1))?)
    }
}

/// 1×1 conv → LN → 3×3 conv → LN (bias-free convs).
#[derive(Clone, Debug)]
struct PyramidOut {
    lateral: Conv2d,
    lateral_norm: ChannelNorm,
    output: Conv2d,
    output_norm: ChannelNorm,
}

impl PyramidOut {
    fn new(pb: &ParamBuilder, cin: usize, c: usize) -> Result<Self> {
        Ok(PyramidOut {
            lateral: Conv2d::new(&pb.pp("lateral"), cin, c, 1, 1, 0, false)?,
            lateral_norm: ChannelNorm::new(&pb.pp("lateral_norm"), c)?,
            output: Conv2d::new(&pb.pp("output"), c, c, 3, 1, 1, false)?,
            output_norm: ChannelNorm::new(&pb.pp("output_norm"), c)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.lateral_norm.forward(&self.lateral.forward(x)?)?;
        self.output_norm.forward(&self.output.forward(&y)?)
    }
}

/// The simple feature pyramid P2–P6 from the last block's stride-16 map.
#[derive(Clone, Debug)]
pub struct SimplePyramid {
    p2_up1: ConvT2x2,
    p2_norm: ChannelNorm,
    p2_up2: ConvT2x2,
    p3_up: ConvT2x2,
    outs: Vec<PyramidOut>,
}

impl SimplePyramid {
    pub fn new(pb: &ParamBuilder, dim: usize, out: usize) -> Result<Self> {
        let p = pb.pp("pyramid");
        let outs = [(2, dim / 4), (3, dim / 2), (4, dim), (5, dim)]
            .iter()
            .map(|&(l, cin)| PyramidOut::new(&p.pp(format!("p{l}")), cin, out))
            .collect::<Result<Vec<_>>>()?;
        Ok(SimplePyramid {
            p2_up1: ConvT2x2::new(&p.pp("p2").pp("up1"), dim, dim / 2)?,
            p2_norm: ChannelNorm::new(&p.pp("p2").pp("up_norm"), dim / 2)?,
            p2_up2: ConvT2x2::new(&p.pp("p2").pp("up2"), dim / 2, dim / 4)?,
            p3_up: ConvT2x2::new(&p.pp("p3").pp("up"), dim, dim / 2)?,
            outs,
        })
    }

    /// [P2, P3, P4, P5, P6] at strides 4, 8, 16, 32, 64.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let p2 = self.p2_up2.forward(&gelu_erf(&self.p2_norm.forward(&self.p2_up1.forward(x)?)?)?)?;
        let p3 = self.p3_up.forward(x)?;
        let p5 = max_pool2x2(x, false)?;
        let mut levels = Vec::with_capacity(5);
        for (o, t) in self.outs.iter().zip([&p2, &p3, x, &p5]) {
            levels.push(o.forward(t)?);
        }
        let p6 = subsample2(&levels[3])?;
        levels.push(p6);
        Ok(levels)
    }
}

/// `F.max_pool2d(x, kernel_size=1, stride=2)`: every other row and column.
fn subsample2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let rows = Tensor::from_vec((0..ho as u32).map(|i| 2 * i).collect::<Vec<_>>(), ho, x.device())?;
    let cols = Tensor::from_vec((0..wo as u32).map(|i| 2 * i).collect::<Vec<_>>(), wo, x.device())?;
    let y = x.index_select(&rows, 2)?.index_select(&cols, 3)?;
    debug_assert_eq!(y.dims(), &[b, c, ho, wo]);
    Ok(y)
}
