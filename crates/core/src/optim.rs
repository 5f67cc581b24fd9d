//! AdamW with MAE's two parameter groups, f32 moments, global-norm clipping and exact state
//! save/restore. candle-nn's `AdamW` has one weight decay for everything and no state I/O.
//!
//! The update is `torch.optim.AdamW`'s (decoupled decay applied before the moments):
//! p ← p·(1 − lr·wd); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
//! p ← p − lr/(1 − β₁ᵗ) · m / (sqrt(v)/sqrt(1 − β₂ᵗ) + ε).
//! The learning rate and weight decay come with each step: the schedule lives in TypeScript.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};

use crate::nn::ParamStore;

/// MAE's rule (timm `param_groups_weight_decay`): no decay for 1-D tensors (LayerNorm, biases)
/// and names ending in `.bias`; everything else (weights, cls/mask tokens) decays.
pub fn decays(name: &str, rank: usize) -> bool {
    rank > 1 && !name.ends_with(".bias")
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWParams {
    /// VASOMIM.md §8: β = (0.9, 0.95), ε = 1e-8, weight decay 0.05.
    fn default() -> Self {
        AdamWParams {
            lr: 1.5e-4,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    /// Multiplier of the step's learning rate (layer-wise LR decay in fine-tuning; 1 otherwise).
    lr_scale: f64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

pub struct AdamW {
    slots: Vec<Slot>,
    /// Completed optimizer steps (t in the bias corrections).
    pub step: u64,
}

impl AdamW {
    /// Optimizes every tensor in `params` whose name does not start with one of `frozen`.
    pub fn new(params: &ParamStore, frozen: &[String]) -> Result<Self> {
        let slots = params
            .entries
            .iter()
            .filter(|(n, _)| {
                !frozen
                    .iter()
                    .any(|f| n == f || n.starts_with(&format!("{f}.")))
            })
            .map(|(n, v)| {
                let z = Tensor::zeros(v.shape(), DType::F32, v.device())?;
                Ok(Slot {
                    name: n.clone(),
                    var: v.clone(),
                    decay: decays(n, v.rank()),
                    lr_scale: 1.0,
                    exp_avg: z.clone(),
                    exp_avg_sq: z,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { slots, step: 0 })
    }

    /// Per-parameter learning-rate multipliers, e.g. layer-wise LR decay.
    pub fn set_lr_scales(&mut self, scale: impl Fn(&str) -> f64) {
        for s in &mut self.slots {
            s.lr_scale = scale(&s.name);
        }
    }

    /// Replace the weight-decay rule `decays(name, rank)` of every optimized tensor (fine-tuning
    /// also exempts the cls token and position embedding).
    pub fn set_decays(&mut self, decays: impl Fn(&str, usize) -> bool) {
        for s in &mut self.slots {
            s.decay = decays(&s.name, s.var.rank());
        }
    }

    pub fn lr_scales(&self) -> Vec<(String, f64)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.lr_scale))
            .collect()
    }

    /// Names of the optimized tensors and whether each decays.
    pub fn groups(&self) -> Vec<(String, bool)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.decay))
            .collect()
    }

    pub fn vars(&self) -> Vec<(&str, &Var)> {
        self.slots
            .iter()
            .map(|s| (s.name.as_str(), &s.var))
            .collect()
    }

    /// The gradients of the optimized tensors, in slot order; a tensor absent from `grads`
    /// (not reached by the loss) is an error: it would silently never train.
    pub fn collect(&self, grads: &GradStore) -> Result<Vec<Tensor>> {
        self.slots
            .iter()
            .map(|s| match grads.get(s.var.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => candle_core::bail!("no gradient for trainable tensor {}", s.name),
            })
            .collect()
    }

    /// One update with `grads` in slot order (see [`Self::collect`]).
    pub fn step(&mut self, grads: &[Tensor], p: &AdamWParams) -> Result<()> {
        if grads.len() != self.slots.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            );
        }
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2_sqrt = (1.0 - p.beta2.powi(t)).sqrt();
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let g = g.to_dtype(DType::F32)?;
            let lr = p.lr * s.lr_scale;
            let mut w = s.var.as_tensor().detach();
            if s.decay && p.weight_decay != 0.0 {
                w = (w * (1.0 - lr * p.weight_decay))?;
            }
            s.exp_avg = ((&s.exp_avg * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            s.exp_avg_sq = ((&s.exp_avg_sq * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let denom = ((s.exp_avg_sq.sqrt()? / bc2_sqrt)? + p.eps)?;
            let upd = (s.exp_avg.div(&denom)? * (lr / bc1))?;
            s.var.set(&(w - upd)?)?;
        }
        Ok(())
    }

    /// Moments under `optimizer.exp_avg.<name>` / `optimizer.exp_avg_sq.<name>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("optimizer.exp_avg.{}", s.name), s.exp_avg.clone()),
                    (
                        format!("optimizer.exp_avg_sq.{}", s.name),
                        s.exp_avg_sq.clone(),
                    ),
                ]
            })
            .collect()
    }

    /// Restores moments saved by [`Self::state_tensors`] and the step count; every slot must be
    /// present with its shape, or nothing changes. (Tensors frozen now but trained before simply
    /// have their saved moments ignored.)
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        let mut new = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let mut pair = Vec::with_capacity(2);
            for kind in ["exp_avg", "exp_avg_sq"] {
                let key = format!("optimizer.{kind}.{}", s.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    candle_core::Error::msg(format!("optimizer state: missing {key}"))
                })?;
                if t.dims() != s.var.dims() {
                    candle_core::bail!(
                        "optimizer state: {key} has shape {:?}, parameter has {:?}",
                        t.dims(),
                        s.var.dims()
                    );
                }
                pair.push(t.to_dtype(DType::F32)?.to_device(s.var.device())?);
            }
            new.push(pair);
        }
        for (s, mut pair) in self.slots.iter_mut().zip(new) {
            s.exp_avg_sq = pair.pop().unwrap();
            s.exp_avg = pair.pop().unwrap();
        }
        self.step = step;
        Ok(())
    }
}

/// Global L2 norm of all gradients (f64 accumulation).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut s = 0f64;
    for g in grads {
        s += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    Ok(s.sqrt())
}

/// `torch.nn.utils.clip_grad_norm_`: scales all gradients by max_norm/(norm + 1e-6) when that is
/// below 1. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}
