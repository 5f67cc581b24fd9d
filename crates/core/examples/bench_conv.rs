//! Times `conv2d` (3×3, stride 1, padding 1, 8 images) at UNeXt-S's geometries, forward and
//! input gradient, with the direct 3×3 kernel and with the per-tap gemms: the measurement behind
//! `DIRECT_MAX_CO` in `src/nn/kernels/conv.rs`.
//!
//! usage: cargo run --release -p vasomim-core --example bench_conv [-- --repeats 10]

use candle_core::{DType, Device, Tensor, Var};
use vasomim_core::nn::kernels::conv::{conv2d, set_direct_conv};
use vasomim_core::nn::InitRng;

/// Median milliseconds of (forward, backward) over `n` runs.
fn time(x: &Var, w: &Tensor, bias: &Tensor, n: usize) -> candle_core::Result<(f64, f64)> {
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for _ in 0..n + 2 {
        let t0 = std::time::Instant::now();
        let y = conv2d(x.as_tensor(), w, Some(bias), 1, 1)?;
        fwd.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = std::time::Instant::now();
        let g = y.backward()?;
        bwd.push(t0.elapsed().as_secs_f64() * 1e3);
        g.get(x.as_tensor()).expect("input gradient");
    }
    let median = |mut v: Vec<f64>| {
        v.drain(..2);
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(fwd), median(bwd)))
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n = args.iter().position(|a| a == "--repeats").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(10);
    let (dev, b) = (Device::Cpu, 8usize);
    let mut rng = InitRng::new(1);
    let mut rand = |dims: &[usize]| {
        let len = dims.iter().product();
        Tensor::from_vec((0..len).map(|_| rng.normal() as f32).collect::<Vec<_>>(), dims, &dev)
    };
    println!(
        "{:>16}  {:>9} {:>9} {:>6}  {:>9} {:>9} {:>6}",
        "conv", "fwd ms", "gemm", "ratio", "dx ms", "gemm", "ratio"
    );
    let shapes =
        [(3, 8, 224), (8, 16, 112), (16, 32, 56), (32, 64, 28), (64, 32, 14), (32, 16, 28), (16, 8, 56), (8, 8, 112)];
    for (c, o, h) in shapes {
        let x = Var::from_tensor(&rand(&[b, c, h, h])?)?;
        let w = rand(&[o, c, 3, 3])?;
        let bias = Tensor::zeros(o, DType::F32, &dev)?;
        set_direct_conv(true);
        let (f, d) = time(&x, &w, &bias, n)?;
        set_direct_conv(false);
        let (fg, dg) = time(&x, &w, &bias, n)?;
        let name = format!("{c}→{o} @{h}²");
        println!("{name:>16}  {f:9.2} {fg:9.2} {:6.2}  {d:9.2} {dg:9.2} {:6.2}", f / fg, d / dg);
    }
    set_direct_conv(true);
    Ok(())
}
