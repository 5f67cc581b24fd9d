//! The ViT encoder and MAE decoder of VasoMIM in candle, with layers whose gradients are right.
//!
//! - [`kernels`]: the CPU ops with fused forward and backward, one file per op family (norm,
//!   linear, attention, activation, conv, resample) over one host-slice layer.
//! - [`layers`]: the parameterised layers over them (`Linear`, `LayerNorm`, `Conv2d`,
//!   `BatchNorm2d`).
//! - [`pos_embed`]: fixed 2-D sin-cos position embeddings and their bicubic resampling.
//! - [`presets`]: model sizes by name (micro for tests, tiny … huge).
//! - [`vit`]: the encoder and its `Attention`, `Mlp`, `Block` (timm's `VisionTransformer` names).
//! - [`mae`]: the MAE decoder and `forward_loss`; [`loss`]: the losses (norm-pix MSE,
//!   BCE-with-logits, soft Dice).
//! - [`segmentation`]: the ViT segmentation network; [`unext`]: the UNeXt-S vessel segmentor
//!   (state-dict names of the authors' `unext.pth`).
//! - Here: [`ParamStore`], [`ParamBuilder`], [`Init`], [`InitRng`], [`zeros_like`].
//!
//! Parameters are `Var`s registered under their timm / MAE state-dict names by a [`ParamBuilder`]
//! whose path (`pb.pp("blocks").pp(i)`) *is* the checkpoint key, so the code is the key map.

pub mod kernels;
pub mod layers;
pub mod loss;
pub mod mae;
pub mod pos_embed;
pub mod presets;
pub mod segmentation;
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
    /// Every parameter as a (state-dict name, tensor) pair, in creation order.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.entries.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
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
    frozen: bool,
}

impl ParamBuilder {
    pub fn new(device: &Device, seed: u64) -> Self {
        ParamBuilder {
            store: Rc::new(RefCell::new(ParamStore::default())),
            rng: Rc::new(RefCell::new(InitRng::new(seed))),
            prefix: String::new(),
            device: device.clone(),
            frozen: false,
        }
    }

    /// A builder for a model that is never trained (VasoMIM's frozen segmentor): [`Self::tensor`]
    /// hands the layers plain tensors that share storage with the registered `Var`s, so
    /// loading through the store still sets them, but backward computes no gradient for them.
    pub fn frozen(device: &Device, seed: u64) -> Self {
        ParamBuilder { frozen: true, ..Self::new(device, seed) }
    }

    /// The builder for the sub-path `name` (a module or a block index).
    pub fn pp(&self, name: impl ToString) -> Self {
        let name = name.to_string();
        let prefix = if self.prefix.is_empty() { name } else { format!("{}.{}", self.prefix, name) };
        ParamBuilder { prefix, ..self.clone() }
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
            Init::Uniform(a) => (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * a) as f32).collect(),
            Init::XavierUniform => {
                let fan_out = dims[0] as f64;
                let fan_in = (n / dims[0].max(1)) as f64;
                let a = (6.0 / (fan_in + fan_out)).sqrt();
                (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * a) as f32).collect()
            }
        };
        let v = Var::from_tensor(&Tensor::from_vec(data, dims, &self.device)?)?;
        let full = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{}", self.prefix, name) };
        self.store.borrow_mut().entries.push((full, v.clone()));
        Ok(v)
    }

    /// A parameter as the layers hold it: the registered `Var`'s tensor, or (frozen builder) a
    /// detached tensor on the same storage.
    pub fn tensor(&self, name: &str, dims: &[usize], init: Init) -> Result<Tensor> {
        let v = self.var(name, dims, init)?;
        Ok(if self.frozen { v.as_tensor().detach() } else { v.as_tensor().clone() })
    }

    pub fn into_store(self) -> ParamStore {
        self.store.borrow().clone()
    }
}

/// f32 zeros, for optimizer state and accumulators.
pub fn zeros_like(t: &Tensor) -> Result<Tensor> {
    Tensor::zeros(t.shape(), DType::F32, t.device())
}
