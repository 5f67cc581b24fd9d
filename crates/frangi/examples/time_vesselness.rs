//! Single-thread time of one filter on 8-bit PNG frames, best of N: the Rust side of
//! `scripts/bench/vesselness.ts` when run without Node, and a quick check while tuning.
//!
//! usage: cargo run --release -p vasomim-frangi --example time_vesselness -- [--f32] [--frangi] [--repeat N] IMAGE...
//! prints one JSON line per image and a summary line.

use std::time::Instant;

use frangi::{vesselness, VesselnessParams};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let take = |args: &mut Vec<String>, f: &str| args.iter().position(|a| a == f).map(|i| args.remove(i)).is_some();
    let f32_path = take(&mut args, "--f32");
    let p = if take(&mut args, "--frangi") { VesselnessParams::frangi() } else { VesselnessParams::sato() };
    let repeat = match args.iter().position(|a| a == "--repeat") {
        Some(i) => {
            let n = args[i + 1].parse().expect("--repeat N");
            args.drain(i..i + 2);
            n
        }
        None => 3,
    };
    let mut total = 0.0;
    for path in &args {
        let mut r = png::Decoder::new(std::fs::File::open(path).expect(path)).read_info().expect(path);
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).expect(path);
        let ch = info.color_type.samples();
        let (h, w) = (info.height as usize, info.width as usize);
        let grey: Vec<u8> = buf[..info.buffer_size()].chunks_exact(ch).map(|p| p[0]).collect();
        let mut best = f64::INFINITY;
        for _ in 0..repeat {
            let t = Instant::now();
            if f32_path {
                let x: Vec<f32> = grey.iter().map(|&v| v as f32).collect();
                std::hint::black_box(vesselness(&x, h, w, &p).unwrap());
            } else {
                let x: Vec<f64> = grey.iter().map(|&v| v as f64).collect();
                std::hint::black_box(vesselness(&x, h, w, &p).unwrap());
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        total += best;
        println!("{{\"image\":{path:?},\"shape\":[{h},{w}],\"ms\":{:.3}}}", best * 1e3);
    }
    println!(
        "{{\"summary\":true,\"images\":{},\"total_ms\":{:.3},\"dtype\":\"{}\"}}",
        args.len(),
        total * 1e3,
        if f32_path { "f32" } else { "f64" }
    );
}
