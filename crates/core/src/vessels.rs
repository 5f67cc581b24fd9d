//! The vessel-map job: for each (input, output) pair, decode the frame, run the vesselness
//! filter, post-process to a {0, 255} map and write it as PNG, atomically. Files run in
//! parallel on a rayon pool of the requested size; a bad file fails alone with its reason.

use std::path::PathBuf;
use std::time::Instant;

use frangi::{vessel_map, vesselness, Cast, Filter, FrangiParams, MapParams, VesselnessParams};
use rayon::prelude::*;

use crate::io::{read_grey, write_npy, write_png_grey8};

/// Working precision of the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
}

impl Precision {
    /// `f32` | `f64`; any other name is an error naming the field.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "f32" => Ok(Precision::F32),
            "f64" => Ok(Precision::F64),
            other => Err(format!("precision: unknown precision {other:?} (expected f32 or f64)")),
        }
    }
}

/// Filter parameters from their user-facing names: `filter` is `sato`, `frangi` or `frangi1998`
/// (α, β, γ used by the Frangi filters). Errors name the field.
pub fn filter_params(
    filter: &str,
    sigmas: Vec<f64>,
    black_ridges: bool,
    (alpha, beta, gamma): (f64, f64, Option<f64>),
) -> Result<VesselnessParams, String> {
    let frangi = |frangi1998| Filter::Frangi(FrangiParams { alpha, beta, gamma, frangi1998 });
    let filter = match filter {
        "sato" => Filter::Sato,
        "frangi" => frangi(false),
        "frangi1998" => frangi(true),
        other => return Err(format!("filter: unknown filter {other:?} (expected sato, frangi or frangi1998)")),
    };
    let p = VesselnessParams { filter, sigmas, black_ridges };
    p.validate().map_err(|e| e.to_string())?;
    Ok(p)
}

/// Map post-processing from its user-facing names: `cast` is `clamp` or `wrap`, `percentile`
/// in [0, 100]. Errors name the field.
pub fn map_params(border: usize, percentile: f64, cast: &str) -> Result<MapParams, String> {
    let cast = match cast {
        "clamp" => Cast::Clamp,
        "wrap" => Cast::Wrap,
        other => return Err(format!("cast: unknown cast {other:?} (expected clamp or wrap)")),
    };
    if !(percentile.is_finite() && (0.0..=100.0).contains(&percentile)) {
        return Err(format!("percentile: {percentile} is not in [0, 100]"));
    }
    Ok(MapParams { border, percentile, cast, scale: 1.0 })
}

/// Everything that defines a map besides the image.
#[derive(Debug, Clone)]
pub struct MapJob {
    pub filter: VesselnessParams,
    pub map: MapParams,
    pub precision: Precision,
}

impl MapJob {
    /// Frangi responses lie in [0, 1): scale them to grey levels before the uint8 cast.
    fn map_params(&self) -> MapParams {
        let scale = match self.filter.filter {
            Filter::Sato => 1.0,
            Filter::Frangi(_) => 255.0,
        };
        MapParams { scale: self.map.scale * scale, ..self.map.clone() }
    }
}

/// Result of one file.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub input: PathBuf,
    pub output: PathBuf,
    /// `None` when written; otherwise the reason, one line.
    pub error: Option<String>,
    pub width: usize,
    pub height: usize,
    /// Pixels in the map.
    pub vessel_pixels: usize,
    pub millis: f64,
}

/// Raw response in the chosen precision, widened to f64 for callers that need one type.
pub enum Response {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

pub fn response_of(
    pixels: &[f32],
    h: usize,
    w: usize,
    p: &VesselnessParams,
    prec: Precision,
) -> Result<Response, String> {
    match prec {
        Precision::F32 => vesselness(pixels, h, w, p).map(Response::F32),
        Precision::F64 => {
            let x: Vec<f64> = pixels.iter().map(|&v| v as f64).collect();
            vesselness(&x, h, w, p).map(Response::F64)
        }
    }
    .map_err(|e| e.to_string())
}

/// {0, 255} map of a grey image (values in 8-bit units).
pub fn map_of(pixels: &[f32], h: usize, w: usize, job: &MapJob) -> Result<Vec<u8>, String> {
    let m = job.map_params();
    match response_of(pixels, h, w, &job.filter, job.precision)? {
        Response::F32(r) => vessel_map(&r, h, w, &m),
        Response::F64(r) => vessel_map(&r, h, w, &m),
    }
    .map_err(|e| e.to_string())
}

fn one(input: PathBuf, output: PathBuf, job: &MapJob) -> Outcome {
    let t = Instant::now();
    let mut o = Outcome { input, output, error: None, width: 0, height: 0, vessel_pixels: 0, millis: 0.0 };
    let r = read_grey(&o.input).and_then(|img| {
        o.width = img.width;
        o.height = img.height;
        let map = map_of(&img.pixels, img.height, img.width, job)?;
        o.vessel_pixels = map.iter().filter(|&&v| v > 0).count();
        write_png_grey8(&o.output, img.width, img.height, &map)
    });
    o.error = r.err();
    o.millis = t.elapsed().as_secs_f64() * 1e3;
    o
}

/// Run the job on every pair with `threads` workers (0: all cores). Outcomes in input order.
pub fn vessel_maps(pairs: Vec<(PathBuf, PathBuf)>, job: &MapJob, threads: usize) -> Result<Vec<Outcome>, String> {
    job.filter.validate().map_err(|e| e.to_string())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
    Ok(pool.install(|| pairs.into_par_iter().map(|(i, o)| one(i, o, job)).collect()))
}

/// Write a raw response as `.npy` in its own precision.
pub fn write_response_npy(path: &std::path::Path, h: usize, w: usize, r: &Response) -> Result<(), String> {
    match r {
        Response::F32(v) => write_npy(path, &[h, w], v),
        Response::F64(v) => write_npy(path, &[h, w], v),
    }
}

impl Response {
    /// Largest value (0 for an all-negative or empty response): the PNG display scale.
    pub fn max(&self) -> f64 {
        match self {
            Response::F32(v) => v.iter().fold(0.0f64, |m, &x| m.max(x as f64)),
            Response::F64(v) => v.iter().fold(0.0f64, |m, &x| m.max(x)),
        }
    }

    /// The display image: response / max · 255, rounded and clamped to 0..=255 (all zeros
    /// when the response has no positive value).
    pub fn display_u8(&self) -> Vec<u8> {
        let max = self.max();
        let k = if max > 0.0 { 255.0 / max } else { 0.0 };
        let px = |x: f64| (x * k).round().clamp(0.0, 255.0) as u8;
        match self {
            Response::F32(v) => v.iter().map(|&x| px(x as f64)).collect(),
            Response::F64(v) => v.iter().map(|&x| px(x)).collect(),
        }
    }
}

/// Write a response by the output's extension: `.npy` the raw response in its precision,
/// `.png` the display image of [`Response::display_u8`]; any other name is an error naming it.
pub fn write_response(path: &std::path::Path, h: usize, w: usize, r: &Response) -> Result<(), String> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("npy") => write_response_npy(path, h, w, r),
        Some("png") => write_png_grey8(path, w, h, &r.display_u8()),
        _ => Err(format!("{}: output must end in .npy (raw response) or .png (display image)", path.display())),
    }
}

/// Read `input`, filter it and write the response to `output` (see [`write_response`]);
/// returns (width, height, max of the response). Errors name the file.
pub fn vesselness_file(
    input: &std::path::Path,
    output: &std::path::Path,
    p: &VesselnessParams,
    prec: Precision,
) -> Result<(usize, usize, f64), String> {
    let img = read_grey(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let r = response_of(&img.pixels, img.height, img.width, p, prec)?;
    write_response(output, img.height, img.width, &r)?;
    Ok((img.width, img.height, r.max()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_names_are_checked_and_errors_name_the_field() {
        assert_eq!(Precision::parse("f64"), Ok(Precision::F64));
        assert!(Precision::parse("f16").unwrap_err().starts_with("precision:"));
        let f = filter_params("frangi1998", vec![1.0, 2.0], true, (0.5, 0.5, None)).unwrap();
        assert!(matches!(f.filter, Filter::Frangi(FrangiParams { frangi1998: true, .. })));
        let e = filter_params("hessian", vec![1.0], true, (0.5, 0.5, None)).unwrap_err();
        assert!(e.starts_with("filter: unknown filter \"hessian\""), "{e}");
        assert!(map_params(0, 94.0, "wrap").is_ok());
        assert!(map_params(0, 94.0, "round").unwrap_err().starts_with("cast:"));
        assert!(map_params(0, 101.0, "clamp").unwrap_err().starts_with("percentile:"));
    }

    #[test]
    fn display_image_scales_the_max_to_255() {
        let r = Response::F32(vec![-1.0, 0.0, 0.5, 2.0]);
        assert_eq!(r.max(), 2.0);
        assert_eq!(r.display_u8(), vec![0, 0, 64, 255]);
        let r = Response::F64(vec![-3.0, 0.0]);
        assert_eq!((r.max(), r.display_u8()), (0.0, vec![0, 0]));
    }

    #[test]
    fn write_response_picks_the_format_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let r = Response::F64(vec![0.0, 1.0, 2.0, 4.0]);
        write_response(&dir.path().join("a.PNG"), 2, 2, &r).unwrap();
        let img = read_grey(&dir.path().join("a.PNG")).unwrap();
        assert_eq!(img.pixels, vec![0.0, 64.0, 128.0, 255.0]);
        write_response(&dir.path().join("a.npy"), 2, 2, &r).unwrap();
        let e = write_response(&dir.path().join("a.tif"), 2, 2, &r).unwrap_err();
        assert!(e.contains("a.tif") && e.contains(".npy"), "{e}");
    }
}
