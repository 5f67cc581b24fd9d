//! Where a sample's time goes in the loader (decode, crop + resize, normalise), single thread.
//! usage: cargo run -p vasomim-core --release --example time_augment -- <image.png> [reps]
use std::time::Instant;

use vasomim_core::data::rng::SplitMix64;
use vasomim_core::data::transforms::*;
use vasomim_core::io::decode_grey8;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: time_augment <image> [reps]");
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let bytes = std::fs::read(path).unwrap();
    let t = Instant::now();
    let mut g = decode_grey8(&bytes, 0).unwrap();
    for _ in 1..reps {
        g = decode_grey8(&bytes, 0).unwrap();
    }
    let dec = t.elapsed().as_secs_f64() / reps as f64;
    let mut rng = SplitMix64::new(1);
    let t = Instant::now();
    let mut out = Vec::new();
    for _ in 0..reps {
        let crop = rrc_params(g.height, g.width, (0.2, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        out = resize_bicubic(View { pixels: &g.pixels, stride: g.width, crop }, 224, 224);
    }
    let res = t.elapsed().as_secs_f64() / reps as f64;
    let mut planes = vec![0f32; 3 * 224 * 224];
    let t = Instant::now();
    for _ in 0..reps {
        normalise_into(&out, &IMAGENET_MEAN, &IMAGENET_STD, &mut planes);
    }
    let norm = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{}x{}: decode {:.3} ms, crop+bicubic {:.3} ms, normalise {:.3} ms",
        g.width,
        g.height,
        dec * 1e3,
        res * 1e3,
        norm * 1e3
    );
}
