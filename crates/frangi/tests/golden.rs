//! Parity with scikit-image >= 0.20: raw Sato/Frangi responses and VasoMIM vessel maps against
//! the fixtures written by `scripts/golden/skimage_vesselness.py` (see golden/manifest.json).

use std::path::{Path, PathBuf};

use frangi::{vessel_map, vesselness, Cast, Filter, FrangiParams, MapParams, VesselnessParams};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
fn golden(f: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(f)
}

/// Minimal .npy reader (v1/v2 headers, C order, '<f8' or '|u1').
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}: not .npy", path.display());
    let (hlen, off) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize, 12)
    };
    let header = std::str::from_utf8(&b[off..off + hlen]).unwrap();
    assert!(header.contains("'fortran_order': False"));
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = &b[off + hlen..];
    let vals = if header.contains("<f8") {
        data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    } else if header.contains("|u1") {
        data.iter().map(|&v| v as f64).collect()
    } else if header.contains("<i8") {
        data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
    } else {
        panic!("{}: unsupported dtype in {header}", path.display())
    };
    (shape, vals)
}

fn read_png_grey(path: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let ch = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    let grey = buf.chunks_exact(ch).map(|p| p[0]).collect();
    (info.height as usize, info.width as usize, grey)
}

fn manifest() -> Value {
    serde_json::from_slice(&std::fs::read(golden("manifest.json")).unwrap()).unwrap()
}

fn case_input(c: &Value) -> (usize, usize, Vec<u8>) {
    match c["image"].as_str() {
        None => {
            let (s, v) = read_npy(&golden(&format!("{}.input.npy", c["name"].as_str().unwrap())));
            (s[0], s[1], v.into_iter().map(|x| x as u8).collect())
        }
        Some(p) => {
            let (h, w, img) = read_png_grey(&repo().join(p));
            match c["crop"].as_array() {
                None => (h, w, img),
                Some(cr) => {
                    let [t, l, ch, cw] = [0, 1, 2, 3].map(|i| cr[i].as_u64().unwrap() as usize);
                    let mut out = Vec::with_capacity(ch * cw);
                    for i in t..t + ch {
                        out.extend_from_slice(&img[i * w + l..i * w + l + cw]);
                    }
                    (ch, cw, out)
                }
            }
        }
    }
}

fn params(c: &Value) -> VesselnessParams {
    let p = &c["params"];
    let sigmas = p["sigmas"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let black_ridges = p["black_ridges"].as_bool().unwrap();
    let filter = match c["filter"].as_str().unwrap() {
        "sato" => Filter::Sato,
        _ => Filter::Frangi(FrangiParams {
            alpha: p["alpha"].as_f64().unwrap_or(0.5),
            beta: p["beta"].as_f64().unwrap_or(0.5),
            gamma: p["gamma"].as_f64(),
            frangi1998: false,
        }),
    };
    VesselnessParams { filter, sigmas, black_ridges }
}

/// max |ours - ref| / max |ref| (absolute when the reference is all zero).
fn rel_err(ours: impl Iterator<Item = f64>, reference: &[f64]) -> f64 {
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = ours.zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

#[test]
fn raw_responses_match_skimage_f64_and_f32() {
    let m = manifest();
    let mut n = 0;
    for c in m["cases"].as_array().unwrap().iter().filter(|c| c["kind"] == "response") {
        let (h, w, img) = case_input(c);
        let (shape, reference) = read_npy(&golden(c["golden"].as_str().unwrap()));
        assert_eq!(shape, vec![h, w]);
        let p = params(c);
        let x64: Vec<f64> = img.iter().map(|&v| v as f64).collect();
        let x32: Vec<f32> = img.iter().map(|&v| v as f32).collect();
        let e64 = rel_err(vesselness(&x64, h, w, &p).unwrap().into_iter(), &reference);
        let e32 = rel_err(vesselness(&x32, h, w, &p).unwrap().into_iter().map(|v| v as f64), &reference);
        let name = c["golden"].as_str().unwrap();
        assert!(e64 <= 1e-6, "{name}: f64 relative error {e64:e} > 1e-6");
        assert!(e32 <= 1e-4, "{name}: f32 relative error {e32:e} > 1e-4");
        n += 1;
    }
    assert!(n >= 20, "only {n} response cases in the manifest");
}

#[test]
fn vessel_maps_match_reference_pipeline() {
    let m = manifest();
    let mut n = 0;
    for c in m["cases"].as_array().unwrap().iter().filter(|c| c["kind"] == "map") {
        let (h, w, img) = read_png_grey(&repo().join(c["image"].as_str().unwrap()));
        let x: Vec<f64> = img.iter().map(|&v| v as f64).collect();
        let resp = vesselness(&x, h, w, &VesselnessParams::sato()).unwrap();
        let cast = if c["cast"] == "wrap" { Cast::Wrap } else { Cast::Clamp };
        let ours = vessel_map(&resp, h, w, &MapParams { cast, ..MapParams::default() }).unwrap();
        let (gh, gw, reference) = read_png_grey(&golden(c["golden"].as_str().unwrap()));
        assert_eq!((gh, gw), (h, w));
        let differ = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
        assert!(reference.iter().filter(|&&v| v == 255).count() > 100, "degenerate golden map");
        assert_eq!(differ, 0, "{}: {differ} of {} pixels differ", c["golden"], h * w);
        n += 1;
    }
    assert!(n >= 4);
}
