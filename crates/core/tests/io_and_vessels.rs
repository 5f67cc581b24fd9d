//! Decoding of the image kinds angiograms come in, atomic writers, and the vessel-map job's
//! per-file outcomes (bad files fail alone, nothing partial is left behind).

use std::path::{Path, PathBuf};

use frangi::{MapParams, VesselnessParams};
use image::{ImageBuffer, Luma, Rgb};
use vasomim_core::io::{npy_bytes, read_grey, write_atomic, write_png_grey8};
use vasomim_core::vessels::{vessel_maps, MapJob, Precision};

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/samples").join(rel)
}

fn job() -> MapJob {
    MapJob { filter: VesselnessParams::sato(), map: MapParams::default(), precision: Precision::F64 }
}

#[test]
fn eight_bit_grey_png_is_read_exactly() {
    let img = read_grey(&sample("fercer-xca80/Angios_40_training/1.png")).unwrap();
    assert_eq!((img.width, img.height, img.bit_depth, img.channels), (300, 300, 8, 1));
    assert!(img.pixels.iter().all(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v)));
}

#[test]
fn sixteen_bit_and_rgb_become_8_bit_grey_units() {
    let dir = tempfile::tempdir().unwrap();
    let p16 = dir.path().join("g16.png");
    ImageBuffer::<Luma<u16>, _>::from_raw(3, 1, vec![0u16, 257 * 100, 65535]).unwrap().save(&p16).unwrap();
    let g = read_grey(&p16).unwrap();
    assert_eq!((g.bit_depth, g.channels), (16, 1));
    assert_eq!(g.pixels, vec![0.0, 100.0, 255.0]);

    let prgb = dir.path().join("rgb.png");
    ImageBuffer::<Rgb<u8>, _>::from_raw(2, 1, vec![10, 10, 10, 255, 0, 0]).unwrap().save(&prgb).unwrap();
    let g = read_grey(&prgb).unwrap();
    assert_eq!((g.bit_depth, g.channels), (8, 3));
    // identical channels stay exact; pure red is round(0.299 * 255) = 76
    assert_eq!(g.pixels, vec![10.0, 76.0]);

    let pjpg = dir.path().join("x.jpg");
    ImageBuffer::<Luma<u8>, _>::from_raw(16, 16, vec![128u8; 256]).unwrap().save(&pjpg).unwrap();
    let g = read_grey(&pjpg).unwrap();
    assert!(g.pixels.iter().all(|&v| (v - 128.0).abs() <= 1.0));
}

#[test]
fn bad_files_get_one_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, b"these are not pixels").unwrap();
    assert!(read_grey(&text).unwrap_err().contains("not an image"));

    let good = std::fs::read(sample("cadica-samples/p10_v7_00031.png")).unwrap();
    let cut = dir.path().join("cut.png");
    std::fs::write(&cut, &good[..good.len() / 3]).unwrap();
    let e = read_grey(&cut).unwrap_err();
    assert!(e.starts_with("cannot decode"), "{e}");

    let e = read_grey(&dir.path().join("missing.png")).unwrap_err();
    assert!(e.starts_with("cannot open"), "{e}");
}

#[test]
fn npy_header_is_numpy_format_1_0() {
    let b = npy_bytes(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0);
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
    assert!(header.ends_with('\n'));
    assert_eq!(b.len(), 10 + hlen + 24);
    assert!(std::str::from_utf8(&npy_bytes(&[4], &[0u8; 4])[10..]).unwrap().contains("'shape': (4,)"));
}

#[test]
fn failed_atomic_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.png");
    let e = write_atomic(&target, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
    assert!(e.contains("out.png") && e.contains("disk full"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary file left behind");
    // A folder that does not exist: an error naming the file, nothing created.
    let e = write_png_grey8(&dir.path().join("no/such/dir/x.png"), 1, 1, &[0]).unwrap_err();
    assert!(e.contains("x.png"), "{e}");
}

#[test]
fn vessel_map_job_processes_good_files_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("maps");
    std::fs::create_dir(&out).unwrap();
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    let tiny = dir.path().join("tiny.png");
    ImageBuffer::<Luma<u8>, _>::from_raw(1, 1, vec![42u8]).unwrap().save(&tiny).unwrap();
    let pairs = vec![
        (sample("fercer-xca80/Angios_40_training/1.png"), out.join("1.png")),
        (bad.clone(), out.join("bad.png")),
        (tiny, out.join("tiny.png")),
    ];
    let res = vessel_maps(pairs, &job(), 2).unwrap();
    assert!(res[0].error.is_none() && res[0].vessel_pixels > 100, "{:?}", res[0]);
    assert!(res[1].error.as_deref().unwrap().contains("decode"), "{:?}", res[1]);
    assert!(res[2].error.is_none() && (res[2].width, res[2].height) == (1, 1));
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec!["1.png", "tiny.png"]);
    let m = read_grey(&out.join("1.png")).unwrap();
    assert!(m.pixels.iter().all(|&v| v == 0.0 || v == 255.0));
}
