//! The CPU kernels of the networks, one file per op family, each op's forward and backward
//! side by side:
//!
//! - [`host`]: the one host-slice layer under all of them (slices out of candle storage, row
//!   loops on the rayon pool, per-thread reductions).
//! - [`norm`]: LayerNorm, BatchNorm (train and eval).
//! - [`linear`]: the fused Linear (bias and GELU epilogues) and the bias + residual add.
//! - [`attention`]: multi-head attention from the fused qkv rows, with its softmax.
//! - [`activation`]: exact GELU (erf).
//! - [`conv`]: conv2d (a direct AVX-512 loop for narrow 3×3 convs, gemms otherwise) with channel
//!   bias, 3×3 conv → max-pool → ReLU fused, depthwise 3×3 conv.
//! - [`patch`]: patches read straight from the image: the patch-embedding rows (kept patches
//!   only), MAE's norm-pix reconstruction loss and VasoMIM's reconstructed image, each one op.
//! - [`loss`]: BCE with logits as one op.
//! - [`resample`]: max-pool 2×2, bilinear / nearest ×2 upsampling (and bilinear ×2 → ReLU → 1×1
//!   conv fused), the shifted MLP's shift.
//! - `cuda` (CUDA builds): our CUDA kernels for the hot ops of the GPU path (LayerNorm, softmax,
//!   GELU, bias add, bias + GELU, AdamW; `cuda::segmentor`: the depthwise conv and BatchNorm);
//!   the other ops run their composites there.
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
pub mod loss;
pub mod norm;
pub mod patch;
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
mod gradient_tests {
    use super::conv::{conv2d, dwconv3x3_nhwc};
    use super::linear::{linear, Epilogue};
    use super::norm::{batch_norm_eval, batch_norm_train, layer_norm};
    use super::testing::{max_diff, rand};
    use candle_core::{Tensor, Var};

    type Op = fn(&[Tensor]) -> Tensor;

    /// For each op with (input, weight, bias): with frozen weights (plain tensors) the input
    /// gradient is the trainable case's and no weight or bias gradient is stored (the frozen
    /// segmentor of L_cons); with an input that does not track (an image) the weight gradients are
    /// the trainable case's and no input gradient is stored. Batches of 3 split unevenly over the
    /// threads.
    #[test]
    fn only_tracking_arguments_get_gradients() {
        let cases: Vec<(&str, [Vec<usize>; 3], Op)> = vec![
            ("linear", [vec![7, 5], vec![4, 5], vec![4]], |t| linear(&t[0], &t[1], &t[2], Epilogue::Gelu).unwrap()),
            ("conv3x3", [vec![3, 2, 6, 5], vec![4, 2, 3, 3], vec![4]], |t| {
                conv2d(&t[0], &t[1], Some(&t[2]), 1, 1).unwrap()
            }),
            ("conv3x3/2", [vec![3, 2, 7, 6], vec![4, 2, 3, 3], vec![4]], |t| {
                conv2d(&t[0], &t[1], Some(&t[2]), 2, 1).unwrap()
            }),
            ("conv1x1", [vec![3, 2, 4, 5], vec![4, 2, 1, 1], vec![4]], |t| {
                conv2d(&t[0], &t[1], Some(&t[2]), 1, 0).unwrap()
            }),
            ("dwconv", [vec![3, 4, 5, 6], vec![6, 1, 3, 3], vec![6]], |t| dwconv3x3_nhwc(&t[0], &t[1], &t[2]).unwrap()),
            ("layer_norm", [vec![7, 6], vec![6], vec![6]], |t| layer_norm(&t[0], &t[1], &t[2], 1e-6).unwrap()),
            ("batch_norm eval", [vec![3, 4, 10], vec![4], vec![4]], |t| {
                batch_norm_eval(&t[0], &t[1], &t[2], &[0.1, -0.2, 0.3, 0.0], &[1.0, 0.5, 2.0, 1.5], 1e-5).unwrap()
            }),
            ("batch_norm train", [vec![3, 4, 10], vec![4], vec![4]], |t| {
                batch_norm_train(&t[0], &t[1], &t[2], 1e-5).unwrap().0
            }),
        ];
        for (name, dims, op) in cases {
            let plain: Vec<Tensor> = dims.iter().enumerate().map(|(i, d)| rand(10 + i as u64, d)).collect();
            let vars: Vec<Var> = plain.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
            let run = |args: [&Tensor; 3]| {
                let y = op(&[args[0].clone(), args[1].clone(), args[2].clone()]);
                (&y * &rand(99, y.dims())).unwrap().sum_all().unwrap().backward().unwrap()
            };
            let (xv, wv, bv) = (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
            let all = run([xv, wv, bv]);
            let frozen = run([xv, &plain[1], &plain[2]]);
            assert!(
                frozen.get(&plain[1]).is_none() && frozen.get(&plain[2]).is_none(),
                "{name}: frozen weights got a gradient"
            );
            assert_eq!(max_diff(frozen.get(xv).unwrap(), all.get(xv).unwrap()), 0.0, "{name}: input gradient");
            let image = run([&plain[0], wv, bv]);
            assert!(image.get(&plain[0]).is_none(), "{name}: the input got a gradient");
            for (t, what) in [(wv, "weight"), (bv, "bias")] {
                assert_eq!(max_diff(image.get(t).unwrap(), all.get(t).unwrap()), 0.0, "{name}: {what} gradient");
            }
        }
    }

    /// Running statistics of another width are refused with both sizes named, on the fused and
    /// the composite path alike (the CUDA kernel would otherwise read past them).
    #[test]
    fn batch_norm_eval_checks_the_running_stats_width() {
        use super::host::force_composite;
        let (x, w, b) = (rand(1, &[2, 3, 4]), rand(2, &[3]), rand(3, &[3]));
        for composite in [false, true] {
            force_composite(composite);
            let err = batch_norm_eval(&x, &w, &b, &[0.0; 2], &[1.0; 3], 1e-5).map(|_| ()).unwrap_err().to_string();
            force_composite(false);
            assert!(err.contains("running stats of 2 / 3 values for 3 channels"), "composite {composite}: {err}");
        }
    }

    /// The composite conv (what CUDA runs: candle's conv2d, whose backward is patched in
    /// `vendor/candle-core`) gives the fused kernel's gradients, and only to the arguments that
    /// track: a frozen conv's input gradient (stride 1 through the flipped-kernel conv, stride 2
    /// through conv_transpose2d) and no weight gradient; on an image the weight gradient only.
    #[test]
    fn composite_conv_gradients_only_for_tracking_arguments() {
        use super::host::force_composite;
        for (stride, pad, k) in [(1, 1, 3), (1, 0, 1), (1, 2, 5), (2, 1, 3)] {
            let x0 = rand(1, &[2, 3, 9, 8]);
            let w0 = rand(2, &[4, 3, k, k]);
            let run = |composite: bool, x: &Tensor, w: &Tensor| {
                force_composite(composite);
                let y = conv2d(x, w, None, stride, pad).unwrap();
                force_composite(false);
                (&y * &rand(3, y.dims())).unwrap().sum_all().unwrap().backward().unwrap()
            };
            let (xv, wv) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&w0).unwrap());
            let fused = run(false, xv.as_tensor(), wv.as_tensor());
            let frozen = run(true, xv.as_tensor(), &w0);
            assert!(frozen.get(&w0).is_none(), "stride {stride} k {k}: a frozen weight got a gradient");
            let d = max_diff(frozen.get(xv.as_tensor()).unwrap(), fused.get(xv.as_tensor()).unwrap());
            assert!(d < 1e-5, "stride {stride} k {k}: input gradient differs by {d}");
            let image = run(true, &x0, wv.as_tensor());
            assert!(image.get(&x0).is_none(), "stride {stride} k {k}: the image got a gradient");
            let d = max_diff(image.get(wv.as_tensor()).unwrap(), fused.get(wv.as_tensor()).unwrap());
            assert!(d < 1e-5, "stride {stride} k {k}: weight gradient differs by {d}");
        }
    }

    /// A conv without bias equals candle's, forward and input/weight gradients.
    #[test]
    fn conv2d_without_bias() {
        let x = Var::from_tensor(&rand(1, &[2, 3, 6, 7])).unwrap();
        let w = Var::from_tensor(&rand(2, &[5, 3, 3, 3])).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), None, 1, 1).unwrap();
        let theirs = x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
        let r = rand(3, ours.dims());
        let (a, b) = (
            (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap(),
            (&theirs * &r).unwrap().sum_all().unwrap().backward().unwrap(),
        );
        for t in [x.as_tensor(), w.as_tensor()] {
            assert!(max_diff(a.get(t).unwrap(), b.get(t).unwrap()) < 1e-5);
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
