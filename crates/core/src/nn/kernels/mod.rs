//! The CPU kernels of the networks, one file per op family, each op's forward and backward
//! side by side:
//!
//! - [`host`]: the one host-slice layer under all of them (slices out of candle storage, row
//!   loops on the rayon pool, per-thread reductions).
//! - [`norm`]: LayerNorm, BatchNorm (train and eval).
//! - [`linear`]: the fused Linear (bias and GELU epilogues) and the bias + residual add.
//! - [`attention`]: multi-head attention from the fused qkv rows, with its softmax.
//! - [`activation`]: exact GELU (erf).
//! - [`conv`]: im2col conv with channel bias, depthwise 3×3 conv.
//! - [`resample`]: max-pool 2×2, bilinear / nearest ×2 upsampling, the shifted MLP's shift.
//! - `cuda` (CUDA builds): our CUDA kernels for the hot ops of the GPU path (LayerNorm, softmax,
//!   GELU, bias add, AdamW); the other ops run their composites there.
//!
//! Each op is a candle `CustomOp` with a fused f32 CPU forward *and* backward (candle's own
//! either lack a backward or are slow on the CPU; each file says which). Where the maths has a
//! composite equivalent, other devices and dtypes fall back to it. The row kernels are compiled
//! per instruction set by [`frangi::multiversion!`] and return the same bits at every level.

pub mod activation;
pub mod attention;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
pub mod linear;
pub mod norm;
pub mod resample;

/// Test data and the fused-versus-reference check shared by the kernels' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor, Var};

    pub fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::nn::InitRng::new(seed);
        (0..n).map(|_| (r.normal() * 3.0) as f32).collect()
    }

    pub fn rand(seed: u64, dims: &[usize]) -> Tensor {
        let mut r = crate::nn::InitRng::new(seed);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Forward and the gradients of Σ r·f against a reference built from candle ops.
    pub fn check(
        args: &[Tensor],
        ours: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let vars: Vec<Var> = args.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (ours(&ts), reference(&ts));
        assert!(max_diff(&a, &b) <= tol, "forward differs by {}", max_diff(&a, &b));
        let r = rand(99, a.dims());
        let ga = (&a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, t) in ts.iter().enumerate() {
            let d = max_diff(ga.get(t).unwrap(), gb.get(t).unwrap());
            assert!(d <= tol, "gradient of argument {i} differs by {d}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::activation::{gelu_bwd_row, gelu_bwd_slice, gelu_slice};
    use super::attention::{softmax_bwd_rows, softmax_rows};
    use super::host::add_assign;
    use super::linear::add3_row;
    use super::norm::{layer_norm_bwd_row, layer_norm_row};
    use super::testing::data;
    use frangi::simd;

    /// Every multiversioned kernel gives bit-identical results at every dispatch level (the
    /// levels this CPU lacks fall back to the widest it has), on odd widths with tails.
    #[test]
    fn dispatch_levels_agree_bitwise() {
        let run = |level: u8| -> Vec<Vec<u32>> {
            simd::force_level(Some(level));
            let mut outs = Vec::new();
            for &n in &[1usize, 7, 16, 33, 99, 197] {
                let (x, w, b, g) = (data(3 * n, 1), data(n, 2), data(n, 3), data(3 * n, 4));
                let mut o = vec![0f32; n];
                layer_norm_row(&mut o, &x[..n], &w, &b, 1e-6);
                outs.push(o.clone());
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                layer_norm_bwd_row(&mut o, &x[..n], &g[..n], &w, &mut dw, &mut db, 1e-6);
                outs.extend([o.clone(), dw, db]);
                add3_row(&mut o, &x[..n], &b, &g[..n]);
                outs.push(o.clone());
                let mut acc = w.clone();
                add_assign(&mut acc, &x[..n]);
                outs.push(acc);
                let mut p = x.clone();
                softmax_rows(&mut p, n, 0.37);
                outs.push(p.clone());
                let mut d = g.clone();
                softmax_bwd_rows(&mut d, &p, n, 0.37);
                outs.push(d);
                let mut o3 = vec![0f32; 3 * n];
                gelu_slice(&mut o3, &x);
                outs.push(o3.clone());
                gelu_bwd_slice(&mut o3, &x, &g);
                outs.push(o3);
                let mut acc = w.clone();
                gelu_bwd_row(&mut o, &mut acc, &x[..n], &g[..n]);
                outs.extend([o.clone(), acc]);
                outs.push(vec![simd::sum(&x), simd::max(&x), simd::sum2(&x, &g, |a, b| a * b)]);
            }
            simd::force_level(None);
            outs.into_iter().map(|v| v.iter().map(|f| f.to_bits()).collect()).collect()
        };
        let base = run(0);
        assert_eq!(run(1), base, "AVX2 differs from the baseline");
        assert_eq!(run(2), base, "AVX-512 differs from the baseline");
    }
}
