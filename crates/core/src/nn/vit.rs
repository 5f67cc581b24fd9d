//! The ViT encoder with timm's `VisionTransformer` parameter names (`cls_token`, `pos_embed`,
//! `patch_embed.proj`, `blocks.{i}`, `norm`), run on the kept patches only when `ids_keep` is
//! given (MAE `forward_encoder`), and its parts: [`Attention`], [`Mlp`] and the pre-norm
//! [`Block`] (timm's names; the MAE decoder reuses [`Block`]).

use candle_core::{Result, Tensor, D};

use super::kernels::attention::attention_qkv;
use super::kernels::linear::{bias_add_residual, linear, Epilogue};
use super::kernels::patch::patch_rows;
use super::layers::{LayerNorm, Linear};
use super::pos_embed::sincos_2d_tensor;
use super::presets::MaeConfig;
use super::{Init, ParamBuilder};

#[derive(Clone, Debug)]
pub struct VisionTransformer {
    /// Conv-shaped (D, C, p, p) so the file layout is timm's; applied as a Linear on patches
    /// (identical to the stride-p conv, and its backward is a plain matmul).
    pub patch_embed_weight: Tensor,
    pub patch_embed_bias: Tensor,
    pub cls_token: Tensor,
    /// Fixed buffer (1, 1 + L, D); not a parameter.
    pub pos_embed: Tensor,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub patch_size: usize,
    pub in_chans: usize,
}

impl VisionTransformer {
    pub fn new(pb: &ParamBuilder, cfg: &MaeConfig) -> Result<Self> {
        let (p, c, d) = (cfg.patch_size, cfg.in_chans, cfg.embed_dim);
        let pe = pb.pp("patch_embed").pp("proj");
        let patch_embed_weight = pe.var("weight", &[d, c, p, p], Init::XavierUniform)?.as_tensor().clone();
        let patch_embed_bias = pe.var("bias", &[d], Init::Zeros)?.as_tensor().clone();
        let cls_token = pb.var("cls_token", &[1, 1, d], Init::Normal(0.02))?.as_tensor().clone();
        let pos_embed = sincos_2d_tensor(d, cfg.grid(), pb.device())?;
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(&pb.pp("blocks").pp(i), d, cfg.num_heads, cfg.mlp_ratio))
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(&pb.pp("norm"), d)?;
        Ok(VisionTransformer {
            patch_embed_weight,
            patch_embed_bias,
            cls_token,
            pos_embed,
            blocks,
            norm,
            patch_size: p,
            in_chans: c,
        })
    }

    /// (B, C, H, W) -> (B, L, D): the stride-p conv as patches in (C, p, p) order times the
    /// flattened conv weight.
    pub fn patch_embed(&self, imgs: &Tensor) -> Result<Tensor> {
        self.patch_embed_rows(imgs, None)
    }

    /// The patch embedding of the patches `ids_keep` (B, K) u32 lists (all, in raster order, when
    /// `None`): (B, K, D). Embedding only the kept patches gives the rows MAE's embed-then-gather
    /// gives, for K/L of the work.
    pub fn patch_embed_rows(&self, imgs: &Tensor, ids_keep: Option<&Tensor>) -> Result<Tensor> {
        let (_, c, h, w) = imgs.dims4()?;
        let p = self.patch_size;
        if c != self.in_chans || h % p != 0 || w % p != 0 {
            candle_core::bail!("input (B, {c}, {h}, {w}) does not fit {} channels and patch {p}", self.in_chans);
        }
        let x = patch_rows(imgs, p, ids_keep)?; // [B, K, C·p·p]
        let (b, k, cpp) = x.dims3()?;
        let d = self.patch_embed_weight.dim(0)?;
        let wmat = self.patch_embed_weight.reshape((d, cpp))?;
        linear(&x.reshape((b * k, cpp))?, &wmat, &self.patch_embed_bias, Epilogue::None)?.reshape((b, k, d))
    }

    /// Tokens entering the first block (B, 1 + K, D): the patches listed in `ids_keep` (B, K)
    /// u32 (all when `None`) embedded, their position embedding added, cls (+ its position)
    /// prepended.
    pub fn embed_tokens(&self, imgs: &Tensor, ids_keep: Option<&Tensor>) -> Result<Tensor> {
        let (_, _, h, w) = imgs.dims4()?;
        let l = (h / self.patch_size) * (w / self.patch_size);
        if self.pos_embed.dim(1)? != l + 1 {
            candle_core::bail!("{} patches but a position embedding for {}", l, self.pos_embed.dim(1)? - 1);
        }
        let x = self.patch_embed_rows(imgs, ids_keep)?; // [B, K, D]
        let (b, k, d) = x.dims3()?;
        let pos = self.pos_embed.narrow(1, 1, l)?.squeeze(0)?; // [L, D], a fixed buffer
        let pos = match ids_keep {
            Some(ids) => pos.index_select(&ids.flatten_all()?, 0)?.reshape((b, k, d))?,
            None => pos.unsqueeze(0)?.broadcast_as((b, l, d))?,
        };
        // The residual stream in the parameters' dtype (f32 also under bf16 autocast).
        let x = (x.to_dtype(self.pos_embed.dtype())? + pos)?;
        let cls = self.cls_token.broadcast_add(&self.pos_embed.narrow(1, 0, 1)?)?.broadcast_as((b, 1, d))?;
        Tensor::cat(&[&cls, &x], 1)
    }

    /// MAE `forward_encoder` with the masking decided by the caller: [`Self::embed_tokens`],
    /// the blocks and the final norm. Returns (B, 1 + K, D).
    pub fn forward_encoder(&self, imgs: &Tensor, ids_keep: Option<&Tensor>) -> Result<Tensor> {
        let x = self.embed_tokens(imgs, ids_keep)?;
        let (b, n, d) = x.dims3()?;
        let mut x = x.reshape((b * n, d))?;
        for blk in &self.blocks {
            x = blk.forward_rows(&x, b, n)?;
        }
        self.norm.forward(&x)?.reshape((b, n, d))
    }

    /// Features for downstream use: (B, 2, D) with the cls token after the final norm and the
    /// mean of the patch tokens after the final norm.
    pub fn embed(&self, imgs: &Tensor) -> Result<Tensor> {
        let x = self.forward_encoder(imgs, None)?;
        let n = x.dim(1)?;
        let cls = x.narrow(1, 0, 1)?;
        let mean = x.narrow(1, 1, n - 1)?.mean_keepdim(1)?;
        Tensor::cat(&[&cls, &mean], 1)
    }

    pub fn embed_dim(&self) -> Result<usize> {
        self.cls_token.dim(D::Minus1)
    }
}

/// Multi-head self-attention with a fused qkv projection (timm `Attention`).
#[derive(Clone, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    pub fn new(pb: &ParamBuilder, dim: usize, num_heads: usize) -> Result<Self> {
        Ok(Attention {
            qkv: Linear::new(&pb.pp("qkv"), dim, 3 * dim)?,
            proj: Linear::new(&pb.pp("proj"), dim, dim)?,
            num_heads,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        self.forward_rows(&x.reshape((b * n, d))?, b, n)?.reshape((b, n, d))
    }

    /// Attention on tokens stored as rows, `x` (B·N, D) -> (B·N, D).
    ///
    /// Shape changes are graph nodes, and candle's backward zero-fills and accumulates a full
    /// gradient for every node; keeping the residual stream 2-D and splitting / merging heads
    /// inside [`attention_qkv`] (strided reads of the fused qkv rows) removes them.
    pub fn forward_rows(&self, x: &Tensor, b: usize, n: usize) -> Result<Tensor> {
        self.forward_rows_residual(x, b, n, None)
    }

    /// [`Self::forward_rows`] plus `residual`, added inside the output projection's epilogue.
    pub fn forward_rows_residual(&self, x: &Tensor, b: usize, _n: usize, residual: Option<&Tensor>) -> Result<Tensor> {
        let d = x.dim(1)?;
        let hd = d / self.num_heads;
        // [B·N, 3D] -> heads split, attended and merged inside one op -> [B·N, D]
        let qkv = self.qkv.forward(x)?;
        let y = attention_qkv(&qkv, b, self.num_heads, (hd as f64).powf(-0.5))?;
        match residual {
            Some(r) => self.proj.forward_with(&y, |p, bias| bias_add_residual(p, bias, r)),
            None => self.proj.forward(&y),
        }
    }
}

/// fc1 → exact GELU → fc2 (timm `Mlp`).
#[derive(Clone, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(pb: &ParamBuilder, dim: usize, hidden: usize) -> Result<Self> {
        Ok(Mlp { fc1: Linear::new(&pb.pp("fc1"), dim, hidden)?, fc2: Linear::new(&pb.pp("fc2"), hidden, dim)? })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_act(x, Epilogue::Gelu)?)
    }

    /// `residual + mlp(x)` with the residual added in fc2's epilogue.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.fc2.forward_with(&self.fc1.forward_act(x, Epilogue::Gelu)?, |p, bias| bias_add_residual(p, bias, residual))
    }
}

/// Pre-norm transformer block (timm `Block`, no layer scale, no drop-path).
#[derive(Clone, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn new(pb: &ParamBuilder, dim: usize, num_heads: usize, mlp_ratio: f64) -> Result<Self> {
        Ok(Block {
            norm1: LayerNorm::new(&pb.pp("norm1"), dim)?,
            attn: Attention::new(&pb.pp("attn"), dim, num_heads)?,
            norm2: LayerNorm::new(&pb.pp("norm2"), dim)?,
            mlp: Mlp::new(&pb.pp("mlp"), dim, (dim as f64 * mlp_ratio) as usize)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        self.forward_rows(&x.reshape((b * n, d))?, b, n)?.reshape((b, n, d))
    }

    /// The block on tokens stored as rows (B·N, D); see [`Attention::forward_rows`].
    pub fn forward_rows(&self, x: &Tensor, b: usize, n: usize) -> Result<Tensor> {
        // Residual adds ride in the projections' bias epilogues: one pass and one graph node
        // fewer each.
        let x = self.attn.forward_rows_residual(&self.norm1.forward(x)?, b, n, Some(x))?;
        self.mlp.forward_residual(&self.norm2.forward(&x)?, &x)
    }
}
