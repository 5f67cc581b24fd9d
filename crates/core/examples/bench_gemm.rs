//! Times the matrix products of a ViT-Ti MAE step (batch 8, mask 0.5) through our gemm entry
//! point on 1 and on all threads, and prints the parallel speed-up of each shape.
//!
//! usage: cargo run --release -p vasomim-core --example bench_gemm

use vasomim_core::nn::kernels::host::{gemm_new, Mat};

fn main() {
    let threads = candle_core::utils::get_num_threads();
    // (m, n, k, what): rows = 8 images × 99 tokens (encoder), 8 × 197 (decoder, 128 wide).
    let shapes = [
        (792, 576, 192, "enc qkv"),
        (792, 192, 192, "enc proj"),
        (792, 768, 192, "enc fc1"),
        (792, 192, 768, "enc fc2"),
        (768, 192, 792, "enc fc1 dW"),
        (1576, 384, 128, "dec qkv"),
        (1576, 512, 128, "dec fc1"),
        (1576, 128, 512, "dec fc2"),
    ];
    for (m, n, k, what) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let time = |t: usize| {
            let reps = 20;
            let _ = gemm_new(m, n, k, Mat(&a, k, 1), Mat(&b, n, 1), t);
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                std::hint::black_box(gemm_new(m, n, k, Mat(&a, k, 1), Mat(&b, n, 1), t));
            }
            t0.elapsed().as_secs_f64() * 1e3 / reps as f64
        };
        let (t1, tn) = vasomim_core::device::exclusive(|| (time(1), time(threads)));
        println!(
            "{what:12} {m:5}x{n:4}x{k:4}  1 thread {t1:7.3} ms  {threads} threads {tn:7.3} ms  speed-up {:.2}",
            t1 / tn
        );
    }
}
