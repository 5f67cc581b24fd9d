//! Helpers shared by the integration tests: paths, a small .npy reader and the closed-form
//! weights of the PyTorch golden fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn samples() -> PathBuf {
    repo().join("data/samples")
}

/// A .npy file as f64 values plus its shape (little-endian ints/floats, C order).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let (hlen, off) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[off..off + hlen]).unwrap();
    let descr = header.split("'descr': '").nth(1).unwrap().split('\'').next().unwrap();
    let shape_txt = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        shape_txt.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    let body = &b[off + hlen..];
    let vals: Vec<f64> = match descr {
        "|u1" => body.iter().map(|&v| v as f64).collect(),
        "|i1" => body.iter().map(|&v| v as i8 as f64).collect(),
        "<i2" => body.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f64).collect(),
        "<u2" => body.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f64).collect(),
        "<i4" => body.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        "<u4" => body.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        "<i8" => body.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        "<f4" => body.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        "<f8" => body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        d => panic!("{}: dtype {d} not handled", path.display()),
    };
    assert_eq!(vals.len(), shape.iter().product::<usize>(), "{}", path.display());
    (shape, vals)
}

/// The closed-form weights of `synthetic` in scripts/golden/torch_mae.py (also used by
/// torch_segvit.py), bit for bit.
pub fn synthetic(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let phase = name.bytes().fold(0u64, |h, b| (h * 31 + b as u64) % 1_000_003) as f64 * 1e-3;
    let scale_and_offset = if name == "cls_token" || name == "mask_token" {
        (0.02, 0.0)
    } else if shape.len() >= 2 {
        let (fo, fi) = (shape[0] as f64, (n / shape[0]) as f64);
        ((6.0 / (fi + fo)).sqrt(), 0.0)
    } else if name.ends_with(".weight") {
        (0.1, 1.0)
    } else {
        (0.02, 0.0)
    };
    (0..n).map(|i| (scale_and_offset.1 + scale_and_offset.0 * (0.7 * i as f64 + phase).sin()) as f32).collect()
}
