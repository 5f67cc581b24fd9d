//! Mutation fuzzing of the decoders: thousands of truncated, bit-flipped and spliced copies of
//! real PNG, JPEG, BMP, TIFF and DICOM files (seeded, so every run tries the same inputs). The
//! public entry points must return `Ok` or `Err`, never unwind: a loader thread or Node must
//! never see a panic from a malformed file. Codec panics that `guard` had to catch are counted
//! and printed (they are bugs upstream, contained here).

mod common;

use common::{fixtures, samples};
use vasomim_core::data::rng::SplitMix64;
use vasomim_core::dicom::DicomImage;
use vasomim_core::io::{decode_grey, decode_grey8, probe_bytes};

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |p: std::path::PathBuf| {
        let b = std::fs::read(&p).unwrap();
        out.push((p.file_name().unwrap().to_string_lossy().into_owned(), b));
    };
    add(samples().join("fercer-xca80/Angios_40_training/1.png"));
    add(samples().join("dicom-xa/XA1_JPLL.dcm"));
    for f in [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "rtdose.dcm",
        "image_dfl.dcm",
        "SC_rgb_rle_2frame.dcm",
        "mf_mono1_window_rle.dcm",
        "MR_small_bigendian.dcm",
    ] {
        add(fixtures().join("dicom").join(f));
    }
    // Small JPEG / BMP / TIFF seeds made here from a real frame.
    let img = image::open(samples().join("cadica-samples/p10_v7_00031.png")).unwrap().resize_exact(
        64,
        64,
        image::imageops::FilterType::Nearest,
    );
    for fmt in [image::ImageFormat::Jpeg, image::ImageFormat::Bmp, image::ImageFormat::Tiff] {
        let mut c = std::io::Cursor::new(Vec::new());
        img.write_to(&mut c, fmt).unwrap();
        out.push((format!("seed.{:?}", fmt), c.into_inner()));
    }
    out
}

fn mutate(src: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut b = src.to_vec();
    match rng.below(4) {
        0 => b.truncate(rng.below(b.len() as u64) as usize),
        1 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
        }
        2 => {
            // Overwrite a run with a "magic" value: lengths and sizes are where parsers break.
            let i = rng.below(b.len() as u64) as usize;
            let v: [u8; 4] =
                [[0xFF; 4], [0; 4], [0x7F, 0xFF, 0xFF, 0xFF], [0xFF, 0xFF, 0xFF, 0x7F]][rng.below(4) as usize];
            for (k, x) in v.iter().enumerate() {
                if i + k < b.len() {
                    b[i + k] = *x;
                }
            }
        }
        _ => {
            let i = rng.below(b.len() as u64) as usize;
            let j = rng.below(b.len() as u64) as usize;
            let n = rng.below(64) as usize;
            let chunk: Vec<u8> = b[j..(j + n).min(b.len())].to_vec();
            b.splice(i..i, chunk);
        }
    }
    b
}

#[test]
fn malformed_files_never_panic_through_the_api() {
    // The default hook prints (and with RUST_BACKTRACE, symbolises) every contained panic:
    // seconds each. This test binary has no other test, so silence it here.
    std::panic::set_hook(Box::new(|_| {}));
    let (mut ok, mut err, mut contained) = (0, 0, 0);
    let mut rng = SplitMix64::new(2026);
    for (name, bytes) in seeds() {
        // A deflated DICOM data set cannot be length-checked before dicom-rs parses it, and
        // dicom-rs allocates whatever length a corrupt header declares (~0.3 s each): few
        // tries there. FUZZ_TRIES=n runs n per seed.
        let tries = if name.starts_with("image_dfl") {
            10
        } else if vasomim_core::dicom::is_dicom(&bytes) {
            150
        } else {
            300
        };
        let t = std::time::Instant::now();
        let tries = std::env::var("FUZZ_TRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(tries);
        for _ in 0..tries {
            let m = mutate(&bytes, &mut rng);
            let r = std::panic::catch_unwind(|| {
                let a = decode_grey(&m, 0);
                let b = decode_grey8(&m, 0);
                let p = probe_bytes(&m);
                if let Ok(d) = DicomImage::from_bytes(&m) {
                    for k in 0..d.info.frames.min(3) {
                        let _ = d.grey_frame(k);
                    }
                }
                [a.err(), b.err(), p.err()]
            });
            let errs = r.unwrap_or_else(|_| panic!("a panic escaped the API on a mutation of {name}"));
            for e in errs {
                match e {
                    None => ok += 1,
                    Some(e) => {
                        err += 1;
                        contained += e.contains("panicked") as usize;
                    }
                }
            }
        }
        eprintln!("{name}: {:.2}s", t.elapsed().as_secs_f64());
    }
    eprintln!("fuzz: {ok} ok, {err} errors ({contained} codec panics contained)");
    assert!(err > 0 && ok > 0);
}
