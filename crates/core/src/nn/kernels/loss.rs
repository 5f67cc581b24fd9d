//! Losses as one op each, forward and backward side by side:
//!
//! - [`bce_with_logits`]: mean binary cross-entropy with logits (VasoMIM's L_cons, the
//!   segmentor's and the fine-tuning's BCE term) on full-resolution logit maps. The composite in
//!   `nn::loss` is eight element-wise candle ops, each a full pass with its own output, and as
//!   many more in the backward; here one pass each way, summed in f64.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::host::{f32_slice, use_cpu_kernel, with_f32, zeroed};

/// Mean over all elements of max(x, 0) − x·t + log(1 + exp(−|x|)) (`F.binary_cross_entropy_with_logits`),
/// for logits and targets of one shape; `None` where the fused op does not apply (not f32 on
/// the CPU, autocast, composites forced): the caller runs the composite.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Option<Result<Tensor>> {
    if !use_cpu_kernel(&[logits, targets]) {
        return None;
    }
    Some((|| {
        if logits.dims() != targets.dims() {
            candle_core::bail!("bce_with_logits: logits {:?} and targets {:?} differ", logits.dims(), targets.dims());
        }
        logits.contiguous()?.apply_op2(&targets.contiguous()?, Bce)
    })())
}

struct Bce;

/// Elements per task of the parallel sums (fixed, so the sum's bits do not depend on the threads).
const CHUNK: usize = 1 << 14;

impl CustomOp2 for Bce {
    fn name(&self) -> &'static str {
        "vasomim-bce-with-logits"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, t) = (f32_slice(s1, l1, "bce_with_logits")?, f32_slice(s2, l2, "bce_with_logits")?);
        let parts: Vec<f64> = x
            .par_chunks(CHUNK)
            .zip(t.par_chunks(CHUNK))
            .map(|(xc, tc)| {
                xc.iter().zip(tc).map(|(&x, &t)| (x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()) as f64).sum::<f64>()
            })
            .collect();
        let mean = parts.iter().sum::<f64>() / x.len().max(1) as f64;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    /// d/dx = (σ(x) − t)/N, d/dt = −x/N, times the incoming gradient; each only where it tracks.
    fn bwd(&self, x: &Tensor, t: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / x.elem_count().max(1) as f32;
        let (need_x, need_t) = (x.track_op(), t.track_op());
        let (dx, dt) = with_f32(&[x, t], "bce_with_logits backward", |s| {
            let (xv, tv) = (s[0], s[1]);
            let dx = need_x.then(|| {
                let mut d = zeroed(xv.len());
                d.par_chunks_mut(CHUNK).zip(xv.par_chunks(CHUNK)).zip(tv.par_chunks(CHUNK)).for_each(|((d, x), t)| {
                    for ((d, &x), &t) in d.iter_mut().zip(x).zip(t) {
                        *d = g * (1.0 / (1.0 + (-x).exp()) - t);
                    }
                });
                d
            });
            let dt = need_t.then(|| xv.iter().map(|&x| -g * x).collect::<Vec<f32>>());
            Ok((dx, dt))
        })?;
        let dev = x.device();
        Ok((
            dx.map(|d| Tensor::from_vec(d, x.shape(), dev)).transpose()?,
            dt.map(|d| Tensor::from_vec(d, t.shape(), dev)).transpose()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::force_composite;
    use super::super::testing::{check, rand};
    use super::*;

    /// Against the composite of candle ops, forward and both gradients, with logits far enough
    /// out that the overflow-free form matters.
    #[test]
    fn bce_matches_the_composite() {
        let x = rand(41, &[2, 1, 9, 7]).affine(30.0, 0.0).unwrap();
        let t = rand(42, &[2, 1, 9, 7]).affine(0.5, 0.5).unwrap();
        check(
            &[x, t],
            |a| bce_with_logits(&a[0], &a[1]).unwrap().unwrap().reshape(1).unwrap(),
            |a| {
                force_composite(true);
                let y = crate::nn::loss::bce_with_logits(&a[0], &a[1]).unwrap().reshape(1).unwrap();
                force_composite(false);
                y
            },
            1e-6,
        );
        let err = bce_with_logits(&rand(1, &[2, 3]), &rand(1, &[3, 2])).unwrap().unwrap_err().to_string();
        assert!(err.contains("logits [2, 3] and targets [3, 2] differ"), "{err}");
    }
}
