//! AdamW with MAE's two parameter groups, f32 moments, global-norm clipping and exact state
//! save/restore. candle-nn's `AdamW` has one weight decay for everything and no state I/O.
//!
//! The update is `torch.optim.AdamW`'s (decoupled decay applied before the moments):
//! p ← p·(1 − lr·wd); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
//! p ← p − lr/(1 − β₁ᵗ) · m / (sqrt(v)/sqrt(1 − β₂ᵗ) + ε).
//! The learning rate and weight decay come with each step: the schedule lives in TypeScript.

use std::collections::HashMap;

use std::sync::Mutex;

use candle_core::{backprop::GradStore, CpuStorage, DType, InplaceOp1, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use serde::Deserialize;

use crate::nn::kernels::host::zeroed;
use crate::nn::ParamStore;

/// MAE's rule (timm `param_groups_weight_decay`): no decay for 1-D tensors (LayerNorm, biases)
/// and names ending in `.bias`; everything else (weights, cls/mask tokens) decays.
pub fn decays(name: &str, rank: usize) -> bool {
    rank > 1 && !name.ends_with(".bias")
}

/// One step's AdamW hyper-parameters (camelCase in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdamWParams {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWParams {
    /// METHOD.md §8: β = (0.9, 0.95), ε = 1e-8, weight decay 0.05.
    fn default() -> Self {
        AdamWParams { lr: 1.5e-4, weight_decay: 0.05, beta1: 0.9, beta2: 0.95, eps: 1e-8 }
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
            .filter(|(n, _)| !frozen.iter().any(|f| n == f || n.starts_with(&format!("{f}."))))
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
        self.slots.iter().map(|s| (s.name.clone(), s.lr_scale)).collect()
    }

    /// Names of the optimized tensors and whether each decays.
    pub fn groups(&self) -> Vec<(String, bool)> {
        self.slots.iter().map(|s| (s.name.clone(), s.decay)).collect()
    }

    pub fn vars(&self) -> Vec<(&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var)).collect()
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
        self.step_impl(grads, p, true)
    }

    /// `fused`: the one-pass CPU kernel where it applies; otherwise candle's composite ops.
    fn step_impl(&mut self, grads: &[Tensor], p: &AdamWParams, fused: bool) -> Result<()> {
        if grads.len() != self.slots.len() {
            candle_core::bail!("{} gradients for {} parameters", grads.len(), self.slots.len());
        }
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2_sqrt = (1.0 - p.beta2.powi(t)).sqrt();
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let g = g.to_dtype(DType::F32)?;
            let lr = p.lr * s.lr_scale;
            if fused {
                if let Some((m, v)) = fused_step(s, &g, p, bc1, bc2_sqrt)? {
                    s.exp_avg = m;
                    s.exp_avg_sq = v;
                    continue;
                }
            }
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
                    (format!("optimizer.exp_avg_sq.{}", s.name), s.exp_avg_sq.clone()),
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
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::msg(format!("optimizer state: missing {key}")))?;
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

/// The constants of one AdamW update, as the f32 values candle's scalar ops apply (`t * c` is
/// `affine(c, 0)`, `t / c` is `affine(1/c, 0)`, `t + c` is `affine(1, c)`, each cast to f32).
#[derive(Clone, Copy)]
struct Consts {
    decay: Option<f32>,
    b1: f32,
    one_m_b1: f32,
    b2: f32,
    one_m_b2: f32,
    inv_bc2_sqrt: f32,
    eps: f32,
    step_size: f32,
}

/// The whole update for one parameter in one pass (threads over chunks), on contiguous f32 CPU
/// tensors: the parameter in place, new moment tensors returned. Same f32 operations in the same
/// order as the composite path below it in [`AdamW::step`], so bit-identical (tested). `None`
/// where the tensors are elsewhere or strided: the caller runs the composite path.
fn fused_step(s: &Slot, g: &Tensor, p: &AdamWParams, bc1: f64, bc2_sqrt: f64) -> Result<Option<(Tensor, Tensor)>> {
    let w = s.var.as_tensor();
    let all = [w, g, &s.exp_avg, &s.exp_avg_sq];
    #[cfg(feature = "cuda")]
    if crate::nn::kernels::cuda::applies(&all) && all.iter().all(|t| t.dtype() == DType::F32 && t.is_contiguous()) {
        let c = crate::nn::kernels::cuda::AdamWConsts {
            decay: (s.decay && p.weight_decay != 0.0).then_some((1.0 - p.lr * s.lr_scale * p.weight_decay) as f32),
            b1: p.beta1 as f32,
            one_m_b1: (1.0 - p.beta1) as f32,
            b2: p.beta2 as f32,
            one_m_b2: (1.0 - p.beta2) as f32,
            inv_bc2_sqrt: (1.0 / bc2_sqrt) as f32,
            eps: p.eps as f32,
            step_size: (p.lr * s.lr_scale / bc1) as f32,
        };
        return crate::nn::kernels::cuda::adamw(w, g, &s.exp_avg, &s.exp_avg_sq, c).map(Some);
    }
    if !all.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() && t.dims() == w.dims())
    {
        return Ok(None);
    }
    let c = Consts {
        decay: (s.decay && p.weight_decay != 0.0).then_some((1.0 - p.lr * s.lr_scale * p.weight_decay) as f32),
        b1: p.beta1 as f32,
        one_m_b1: (1.0 - p.beta1) as f32,
        b2: p.beta2 as f32,
        one_m_b2: (1.0 - p.beta2) as f32,
        inv_bc2_sqrt: (1.0 / bc2_sqrt) as f32,
        eps: p.eps as f32,
        step_size: (p.lr * s.lr_scale / bc1) as f32,
    };
    let (gs, gl) = g.storage_and_layout();
    let (ms, ml) = s.exp_avg.storage_and_layout();
    let (vs, vl) = s.exp_avg_sq.storage_and_layout();
    let (g, m, v) = (cpu_f32(&gs, gl)?, cpu_f32(&ms, ml)?, cpu_f32(&vs, vl)?);
    let op = AdamWOp { g, m, v, c, out: Mutex::new(None) };
    w.inplace_op1(&op)?;
    let (m, v) = op
        .out
        .into_inner()
        .map_err(|_| candle_core::Error::msg("adamw: poisoned"))?
        .ok_or_else(|| candle_core::Error::msg("adamw: kernel did not run"))?;
    let dev = w.device();
    Ok(Some((Tensor::from_vec(m, w.shape(), dev)?, Tensor::from_vec(v, w.shape(), dev)?)))
}

fn cpu_f32<'a>(st: &'a candle_core::Storage, l: &Layout) -> Result<&'a [f32]> {
    match (st, l.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("adamw: expected contiguous f32 CPU storage"),
    }
}

struct AdamWOp<'a> {
    g: &'a [f32],
    m: &'a [f32],
    v: &'a [f32],
    c: Consts,
    out: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl InplaceOp1 for AdamWOp<'_> {
    fn name(&self) -> &'static str {
        "vasomim-adamw"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let w = match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(w), Some((a, b))) => &mut w[a..b],
            _ => candle_core::bail!("adamw: parameter must be contiguous f32"),
        };
        let n = w.len();
        if self.g.len() != n || self.m.len() != n || self.v.len() != n {
            candle_core::bail!("adamw: parameter, gradient and moments differ in size");
        }
        let (mut m2, mut v2) = (zeroed(n), zeroed(n));
        const CHUNK: usize = 1 << 14;
        let c = self.c;
        if n >= 2 * CHUNK {
            w.par_chunks_mut(CHUNK).zip(m2.par_chunks_mut(CHUNK).zip(v2.par_chunks_mut(CHUNK))).enumerate().for_each(
                |(i, (wc, (mc, vc)))| {
                    let r = i * CHUNK..i * CHUNK + wc.len();
                    adamw_kernel(wc, mc, vc, &self.g[r.clone()], &self.m[r.clone()], &self.v[r], c)
                },
            );
        } else {
            adamw_kernel(w, &mut m2, &mut v2, self.g, self.m, self.v, c);
        }
        *self.out.lock().map_err(|_| candle_core::Error::msg("adamw: poisoned"))? = Some((m2, v2));
        Ok(())
    }
}

crate::multiversion! {
    fn adamw_kernel(
        w: &mut [f32],
        m_out: &mut [f32],
        v_out: &mut [f32],
        g: &[f32],
        m: &[f32],
        v: &[f32],
        c: Consts,
    ) {
        let n = w.len();
        let (m_out, v_out, g, m, v) = (&mut m_out[..n], &mut v_out[..n], &g[..n], &m[..n], &v[..n]);
        for i in 0..n {
            let wi = match c.decay {
                Some(d) => w[i] * d + 0.0,
                None => w[i],
            };
            let gi = g[i];
            let mi = (m[i] * c.b1 + 0.0) + (gi * c.one_m_b1 + 0.0);
            let vi = (v[i] * c.b2 + 0.0) + ((gi * gi) * c.one_m_b2 + 0.0);
            // candle's `t + eps` is affine(1, eps): v·1 + eps, and v·1 = v exactly.
            let denom = (vi.sqrt() * c.inv_bc2_sqrt + 0.0) + c.eps;
            let upd = (mi / denom) * c.step_size + 0.0;
            m_out[i] = mi;
            v_out[i] = vi;
            w[i] = wi - upd;
        }
    }
}

/// Global L2 norm of all gradients (f64 accumulation).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut s = 0f64;
    for g in grads {
        s += if g.device().is_cpu() && g.dtype() == DType::F32 {
            // One parallel pass in f64 over fixed chunks, summed in chunk order (the same value
            // for any thread count), instead of candle's serial square and sum.
            crate::nn::kernels::host::with_f32(&[g], "gradient norm", |v| {
                let parts: Vec<f64> =
                    v[0].par_chunks(1 << 14).map(|c| c.iter().map(|&x| x as f64 * x as f64).sum()).collect();
                Ok(parts.iter().sum::<f64>())
            })?
        } else {
            g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Init, InitRng, ParamBuilder};
    use candle_core::Device;

    /// The fused kernel (threaded for large tensors, run-time SIMD dispatch) against the
    /// composite candle path: bit-identical parameters and moments over several steps, with and
    /// without decay, for odd sizes and one above the threading threshold.
    #[test]
    fn fused_step_matches_composite_bitwise() {
        let dev = Device::Cpu;
        let make = || {
            let pb = ParamBuilder::new(&dev, 7);
            pb.pp("a").var("weight", &[37, 29], Init::XavierUniform).unwrap();
            pb.pp("a").var("bias", &[37], Init::Normal(0.1)).unwrap();
            pb.pp("b").var("weight", &[300, 129], Init::XavierUniform).unwrap();
            pb.var("tok", &[1, 1, 5], Init::Normal(0.02)).unwrap();
            let store = pb.into_store();
            let opt = AdamW::new(&store, &[]).unwrap();
            (store, opt)
        };
        let (sa, mut a) = make();
        let (sb, mut b) = make();
        let mut rng = InitRng::new(3);
        let p = AdamWParams { lr: 1e-2, weight_decay: 0.05, ..Default::default() };
        for _ in 0..4 {
            let grads: Vec<Tensor> = sa
                .entries
                .iter()
                .map(|(_, v)| {
                    let n = v.elem_count();
                    let d: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                    Tensor::from_vec(d, v.shape(), &dev).unwrap()
                })
                .collect();
            a.step_impl(&grads, &p, true).unwrap();
            b.step_impl(&grads, &p, false).unwrap();
        }
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
        };
        for ((n, va), (_, vb)) in sa.entries.iter().zip(&sb.entries) {
            assert_eq!(bits(va.as_tensor()), bits(vb.as_tensor()), "{n}");
        }
        for ((n, ta), (_, tb)) in a.state_tensors().iter().zip(&b.state_tensors()) {
            assert_eq!(bits(ta), bits(tb), "{n}");
        }
    }
}
