//! The ViT encoder and MAE decoder of VasoMIM in candle, with layers whose gradients are right.
//!
//! - [`ops`]: LayerNorm, last-dim softmax, exact GELU as `CustomOp`s with fused CPU backward.
//! - [`pos_embed`]: fixed 2-D sin-cos position embeddings and their bicubic resampling.
//! - [`presets`]: model sizes by name (micro for tests, tiny … huge).
//! - [`vit`]: the encoder (timm's `VisionTransformer` names).
//! - [`conv`]: convolutional building blocks (conv, BatchNorm, depthwise conv, pooling,
//!   ×2 upsampling) with CPU forward and backward kernels.
//! - [`unext`]: the UNeXt-S vessel segmentor (state-dict names of the authors' `unext.pth`).
//! - [`mae`]: the decoder, `forward_loss` (norm-pix MSE), BCE-with-logits, soft Dice.
//!
//! Parameters are `Var`s registered under their timm / MAE state-dict names by a [`ParamBuilder`]
//! whose path (`pb.pp("blocks").pp(i)`) *is* the checkpoint key, so the code is the key map.

pub mod conv;
pub mod loss;
pub mod mae;
pub mod ops;
pub mod pos_embed;
pub mod presets;
pub mod segmentation;
pub mod simd;
pub mod unext;
pub mod vit;

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::{DType, Device, Result, Tensor, Var};

/// Named parameters in creation order. Only what is here is trained; fixed buffers (position
/// embeddings) are plain tensors held by the modules.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    pub entries: Vec<(String, Var)>,
}

impl ParamStore {
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    pub fn num_elements(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Deterministic initialisation source (candle's CPU RNG cannot be seeded): SplitMix64.
#[derive(Clone, Debug)]
pub struct InitRng(u64);

impl InitRng {
    pub fn new(seed: u64) -> Self {
        InitRng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        // Box–Muller; 1 − u keeps the log finite.
        let (u1, u2) = (1.0 - self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// How a new parameter is filled.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// Xavier-uniform with the tensor viewed as (dim 0, product of the others), as MAE applies
    /// it to Linear weights and to the patch-embed conv weight.
    XavierUniform,
    Zeros,
    Ones,
    /// N(0, std²) (MAE's cls/mask tokens: 0.02; torch's `normal_`, no truncation).
    Normal(f64),
    /// U(−a, a): PyTorch's default `nn.Conv2d` / `nn.Linear` init has a = 1/sqrt(fan_in) for
    /// the weight (kaiming-uniform with a = √5) and for the bias.
    Uniform(f64),
}

/// Creates and registers parameters under a dotted path prefix.
#[derive(Clone)]
pub struct ParamBuilder {
    store: Rc<RefCell<ParamStore>>,
    rng: Rc<RefCell<InitRng>>,
    prefix: String,
    device: Device,
}

impl ParamBuilder {
    pub fn new(device: &Device, seed: u64) -> Self {
        ParamBuilder {
            store: Rc::new(RefCell::new(ParamStore::default())),
            rng: Rc::new(RefCell::new(InitRng::new(seed))),
            prefix: String::new(),
            device: device.clone(),
        }
    }

    /// The builder for the sub-path `name` (a module or a block index).
    pub fn pp(&self, name: impl ToString) -> Self {
        let name = name.to_string();
        let prefix = if self.prefix.is_empty() {
            name
        } else {
            format!("{}.{}", self.prefix, name)
        };
        ParamBuilder {
            prefix,
            ..self.clone()
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn var(&self, name: &str, dims: &[usize], init: Init) -> Result<Var> {
        let n: usize = dims.iter().product();
        let mut rng = self.rng.borrow_mut();
        let data: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            Init::Uniform(a) => (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * a) as f32)
                .collect(),
            Init::XavierUniform => {
                let fan_out = dims[0] as f64;
                let fan_in = (n / dims[0].max(1)) as f64;
                let a = (6.0 / (fan_in + fan_out)).sqrt();
                (0..n)
                    .map(|_| ((rng.uniform() * 2.0 - 1.0) * a) as f32)
                    .collect()
            }
        };
        let v = Var::from_tensor(&Tensor::from_vec(data, dims, &self.device)?)?;
        let full = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        self.store.borrow_mut().entries.push((full, v.clone()));
        Ok(v)
    }

    pub fn into_store(self) -> ParamStore {
        self.store.borrow().clone()
    }
}

/// `y = x Wᵀ + b` with PyTorch's (out, in) weight layout.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = pb
            .var("weight", &[out_dim, in_dim], Init::XavierUniform)?
            .as_tensor()
            .clone();
        let bias = pb.var("bias", &[out_dim], Init::Zeros)?.as_tensor().clone();
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, ops::Epilogue::None)
    }

    /// `epilogue(x Wᵀ + b)` as one op ([`ops::linear`]), for any number of leading dims.
    pub fn forward_act(&self, x: &Tensor, epilogue: ops::Epilogue) -> Result<Tensor> {
        if x.rank() == 2 {
            return ops::linear(x, &self.weight, &self.bias, epilogue);
        }
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&1);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = ops::linear(
            &x.reshape((rows, in_dim))?,
            &self.weight,
            &self.bias,
            epilogue,
        )?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out)
    }

    /// The product x Wᵀ followed by `epilogue(product, bias)` (bias add, or bias + GELU fused).
    pub fn forward_with(
        &self,
        x: &Tensor,
        epilogue: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if x.rank() == 2 {
            return epilogue(&x.matmul(&self.weight.t()?)?, &self.bias);
        }
        // Fold the leading dims into one so candle runs a single 2-D gemm with a transposed
        // (stride-only) weight instead of a batched matmul over a broadcast copy.
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&1);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = epilogue(&x2.matmul(&self.weight.t()?)?, &self.bias)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// LayerNorm with eps 1e-6 (all LayerNorms of the ViT and the MAE decoder).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

pub const LN_EPS: f64 = 1e-6;

impl LayerNorm {
    pub fn new(pb: &ParamBuilder, dim: usize) -> Result<Self> {
        let weight = pb.var("weight", &[dim], Init::Ones)?.as_tensor().clone();
        let bias = pb.var("bias", &[dim], Init::Zeros)?.as_tensor().clone();
        Ok(LayerNorm { weight, bias })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, LN_EPS)
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
        self.forward_rows(&x.reshape((b * n, d))?, b, n)?
            .reshape((b, n, d))
    }

    /// Attention on tokens stored as rows, `x` (B·N, D) -> (B·N, D).
    ///
    /// Shape changes are graph nodes, and candle's backward zero-fills and accumulates a full
    /// gradient for every node; keeping the residual stream 2-D and splitting / merging heads
    /// inside [`ops::attention_qkv`] (strided reads of the fused qkv rows) removes them.
    pub fn forward_rows(&self, x: &Tensor, b: usize, n: usize) -> Result<Tensor> {
        self.forward_rows_residual(x, b, n, None)
    }

    /// [`Self::forward_rows`] plus `residual`, added inside the output projection's epilogue.
    pub fn forward_rows_residual(
        &self,
        x: &Tensor,
        b: usize,
        _n: usize,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let d = x.dim(1)?;
        let hd = d / self.num_heads;
        // [B·N, 3D] -> heads split, attended and merged inside one op -> [B·N, D]
        let qkv = self.qkv.forward(x)?;
        let y = ops::attention_qkv(&qkv, b, self.num_heads, (hd as f64).powf(-0.5))?;
        match residual {
            Some(r) => self
                .proj
                .forward_with(&y, |p, bias| ops::bias_add_residual(p, bias, r)),
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
        Ok(Mlp {
            fc1: Linear::new(&pb.pp("fc1"), dim, hidden)?,
            fc2: Linear::new(&pb.pp("fc2"), hidden, dim)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&self.fc1.forward_act(x, ops::Epilogue::Gelu)?)
    }

    /// `residual + mlp(x)` with the residual added in fc2's epilogue.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward_with(&self.fc1.forward_act(x, ops::Epilogue::Gelu)?, |p, bias| {
                ops::bias_add_residual(p, bias, residual)
            })
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
        self.forward_rows(&x.reshape((b * n, d))?, b, n)?
            .reshape((b, n, d))
    }

    /// The block on tokens stored as rows (B·N, D); see [`Attention::forward_rows`].
    pub fn forward_rows(&self, x: &Tensor, b: usize, n: usize) -> Result<Tensor> {
        // Residual adds ride in the projections' bias epilogues: one pass and one graph node
        // fewer each.
        let x = self
            .attn
            .forward_rows_residual(&self.norm1.forward(x)?, b, n, Some(x))?;
        self.mlp.forward_residual(&self.norm2.forward(&x)?, &x)
    }
}

/// f32 zeros, for optimizer state and accumulators.
pub fn zeros_like(t: &Tensor) -> Result<Tensor> {
    Tensor::zeros(t.shape(), DType::F32, t.device())
}
