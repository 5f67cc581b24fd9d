//! N-API adapters over `vasomim-core`: argument checking, async tasks, conversions.
//! No algorithm lives here. Every long call is an `AsyncTask` (a Promise in JS); a Rust panic
//! inside one becomes a rejected Promise with code `Panic`, never a crashed process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use frangi_params::{filter_params, map_params, precision};
use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use vasomim_core::io::{read_grey, write_png_grey8};
use vasomim_core::vessels::{
    map_of, response_of, vessel_maps, write_response_npy, MapJob, Precision, Response,
};

pub mod data;
mod frangi_params;
pub mod model;
pub mod segmentation;
pub mod segmentor;

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(Status::InvalidArg, msg.into())
}

pub(crate) fn failed(msg: impl Into<String>) -> Error {
    Error::new(Status::GenericFailure, msg.into())
}

/// Run `f`, turning a panic into an error that names it.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::new(
            Status::GenericFailure,
            format!("internal error in {what}: {msg}"),
        ))
    })
}

/// Vesselness filter options (validated again here; the TS layer parses them with zod first).
#[napi(object)]
#[derive(Clone)]
pub struct FilterOptions {
    /// "sato" | "frangi" | "frangi1998"
    pub filter: String,
    pub sigmas: Vec<f64>,
    pub black_ridges: bool,
    pub alpha: f64,
    pub beta: f64,
    pub gamma: Option<f64>,
    /// "f32" | "f64"
    pub precision: String,
}

/// Vessel-map post-processing options.
#[napi(object)]
#[derive(Clone)]
pub struct MapOptions {
    pub border: u32,
    pub percentile: f64,
    /// "clamp" | "wrap"
    pub cast: String,
}

#[napi(object)]
pub struct DecodedImage {
    pub width: u32,
    pub height: u32,
    pub bit_depth: u32,
    pub channels: u32,
    /// Grey values in 8-bit units (see the Rust docs of `vasomim_core::io`).
    pub pixels: Float32Array,
}

#[napi(object)]
pub struct VesselnessResult {
    pub width: u32,
    pub height: u32,
    /// "float32" | "float64"
    pub dtype: String,
    pub data: Either<Float32Array, Float64Array>,
    pub max: f64,
}

#[napi(object)]
pub struct FileResult {
    pub width: u32,
    pub height: u32,
    pub max: f64,
}

#[napi(object)]
pub struct MapPair {
    pub input: String,
    pub output: String,
}

#[napi(object)]
pub struct MapOutcome {
    pub input: String,
    pub output: String,
    pub ok: bool,
    pub error: Option<String>,
    pub width: u32,
    pub height: u32,
    pub vessel_pixels: u32,
    pub millis: f64,
}

fn check_pixels(len: usize, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || (width as usize) * (height as usize) != len {
        return Err(invalid(format!(
            "pixels has {len} values but width x height is {width} x {height} (both must be >= 1)"
        )));
    }
    Ok(())
}

fn response_max(r: &Response) -> f64 {
    match r {
        Response::F32(v) => v.iter().fold(0.0f64, |m, &x| m.max(x as f64)),
        Response::F64(v) => v.iter().fold(0.0f64, |m, &x| m.max(x)),
    }
}

// ---- readImage ---------------------------------------------------------------------------

/// Decodes one frame of a file (frame 0 for every non-DICOM format); behind `readImage` and
/// `readFrame`.
pub struct ReadImageTask {
    pub(crate) path: PathBuf,
    pub(crate) frame: usize,
}

impl Task for ReadImageTask {
    type Output = vasomim_core::GreyImage;
    type JsValue = DecodedImage;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("readImage", || {
            vasomim_core::io::read_frame(&self.path, self.frame)
                .map_err(|e| failed(format!("{}: {e}", self.path.display())))
        })
    }
    fn resolve(&mut self, _env: Env, img: Self::Output) -> Result<Self::JsValue> {
        Ok(DecodedImage {
            width: img.width as u32,
            height: img.height as u32,
            bit_depth: img.bit_depth as u32,
            channels: img.channels as u32,
            pixels: Float32Array::new(img.pixels),
        })
    }
}

/// Decode an image file to grey (8-bit units).
#[napi(catch_unwind, ts_return_type = "Promise<DecodedImage>")]
pub fn read_image(path: String) -> AsyncTask<ReadImageTask> {
    AsyncTask::new(ReadImageTask {
        path: path.into(),
        frame: 0,
    })
}

// ---- vesselness on pixels ----------------------------------------------------------------

pub struct VesselnessTask {
    pixels: Vec<f32>,
    width: usize,
    height: usize,
    params: frangi::VesselnessParams,
    precision: Precision,
}

impl Task for VesselnessTask {
    type Output = Response;
    type JsValue = VesselnessResult;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("vesselness", || {
            response_of(
                &self.pixels,
                self.height,
                self.width,
                &self.params,
                self.precision,
            )
            .map_err(invalid)
        })
    }
    fn resolve(&mut self, _env: Env, r: Self::Output) -> Result<Self::JsValue> {
        let max = response_max(&r);
        let (dtype, data) = match r {
            Response::F32(v) => ("float32", Either::A(Float32Array::new(v))),
            Response::F64(v) => ("float64", Either::B(Float64Array::new(v))),
        };
        Ok(VesselnessResult {
            width: self.width as u32,
            height: self.height as u32,
            dtype: dtype.into(),
            data,
            max,
        })
    }
}

/// Raw vesselness response of a grey image given as pixels (row-major, 8-bit units).
#[napi(catch_unwind, ts_return_type = "Promise<VesselnessResult>")]
pub fn vesselness(
    pixels: Float32Array,
    width: u32,
    height: u32,
    options: FilterOptions,
) -> Result<AsyncTask<VesselnessTask>> {
    check_pixels(pixels.len(), width, height)?;
    Ok(AsyncTask::new(VesselnessTask {
        pixels: pixels.to_vec(),
        width: width as usize,
        height: height as usize,
        params: filter_params(&options)?,
        precision: precision(&options.precision)?,
    }))
}

// ---- vesselness of a file to .npy / .png -------------------------------------------------

pub struct VesselnessFileTask {
    input: PathBuf,
    output: PathBuf,
    params: frangi::VesselnessParams,
    precision: Precision,
}

impl Task for VesselnessFileTask {
    type Output = FileResult;
    type JsValue = FileResult;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("vesselnessFile", || {
            let img = read_grey(&self.input)
                .map_err(|e| failed(format!("{}: {e}", self.input.display())))?;
            let (h, w) = (img.height, img.width);
            let r =
                response_of(&img.pixels, h, w, &self.params, self.precision).map_err(invalid)?;
            let max = response_max(&r);
            write_response(&self.output, h, w, &r, max).map_err(failed)?;
            Ok(FileResult {
                width: w as u32,
                height: h as u32,
                max,
            })
        })
    }
    fn resolve(&mut self, _env: Env, r: Self::Output) -> Result<Self::JsValue> {
        Ok(r)
    }
}

/// `.npy`: the raw response in its precision. `.png`: a display image, response / max * 255.
fn write_response(
    path: &Path,
    h: usize,
    w: usize,
    r: &Response,
    max: f64,
) -> std::result::Result<(), String> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("npy") => write_response_npy(path, h, w, r),
        Some("png") => {
            let k = if max > 0.0 { 255.0 / max } else { 0.0 };
            let px: Vec<u8> = match r {
                Response::F32(v) => v
                    .iter()
                    .map(|&x| (x as f64 * k).round().clamp(0.0, 255.0) as u8)
                    .collect(),
                Response::F64(v) => v
                    .iter()
                    .map(|&x| (x * k).round().clamp(0.0, 255.0) as u8)
                    .collect(),
            };
            write_png_grey8(path, w, h, &px)
        }
        _ => Err(format!(
            "{}: output must end in .npy (raw response) or .png (display image)",
            path.display()
        )),
    }
}

/// Read `input`, filter it, write the response to `output` (.npy raw or .png display).
#[napi(catch_unwind, ts_return_type = "Promise<FileResult>")]
pub fn vesselness_file(
    input: String,
    output: String,
    options: FilterOptions,
) -> Result<AsyncTask<VesselnessFileTask>> {
    Ok(AsyncTask::new(VesselnessFileTask {
        input: input.into(),
        output: output.into(),
        params: filter_params(&options)?,
        precision: precision(&options.precision)?,
    }))
}

// ---- vessel maps -------------------------------------------------------------------------

pub struct VesselMapTask {
    pixels: Vec<f32>,
    width: usize,
    height: usize,
    job: MapJob,
}

impl Task for VesselMapTask {
    type Output = Vec<u8>;
    type JsValue = Uint8Array;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("vesselMap", || {
            map_of(&self.pixels, self.height, self.width, &self.job).map_err(invalid)
        })
    }
    fn resolve(&mut self, _env: Env, m: Self::Output) -> Result<Self::JsValue> {
        Ok(Uint8Array::new(m))
    }
}

fn map_job(f: &FilterOptions, m: &MapOptions) -> Result<MapJob> {
    Ok(MapJob {
        filter: filter_params(f)?,
        map: map_params(m)?,
        precision: precision(&f.precision)?,
    })
}

/// The {0, 255} VasoMIM vessel map of a grey image given as pixels.
#[napi(catch_unwind, ts_return_type = "Promise<Uint8Array>")]
pub fn vessel_map(
    pixels: Float32Array,
    width: u32,
    height: u32,
    filter: FilterOptions,
    map: MapOptions,
) -> Result<AsyncTask<VesselMapTask>> {
    check_pixels(pixels.len(), width, height)?;
    Ok(AsyncTask::new(VesselMapTask {
        pixels: pixels.to_vec(),
        width: width as usize,
        height: height as usize,
        job: map_job(&filter, &map)?,
    }))
}

pub struct VesselMapFilesTask {
    pairs: Vec<(PathBuf, PathBuf)>,
    job: MapJob,
    threads: usize,
}

impl Task for VesselMapFilesTask {
    type Output = Vec<vasomim_core::vessels::Outcome>;
    type JsValue = Vec<MapOutcome>;
    fn compute(&mut self) -> Result<Self::Output> {
        guarded("vesselMapFiles", || {
            vessel_maps(std::mem::take(&mut self.pairs), &self.job, self.threads).map_err(invalid)
        })
    }
    fn resolve(&mut self, _env: Env, out: Self::Output) -> Result<Self::JsValue> {
        Ok(out
            .into_iter()
            .map(|o| MapOutcome {
                input: o.input.to_string_lossy().into_owned(),
                output: o.output.to_string_lossy().into_owned(),
                ok: o.error.is_none(),
                error: o.error,
                width: o.width as u32,
                height: o.height as u32,
                vessel_pixels: o.vessel_pixels as u32,
                millis: o.millis,
            })
            .collect())
    }
}

/// Vessel maps for many files on `threads` workers (0 = all cores); one outcome per pair,
/// in order. Outputs are written atomically; a failing file does not stop the others.
#[napi(catch_unwind, ts_return_type = "Promise<Array<MapOutcome>>")]
pub fn vessel_map_files(
    pairs: Vec<MapPair>,
    filter: FilterOptions,
    map: MapOptions,
    threads: u32,
) -> Result<AsyncTask<VesselMapFilesTask>> {
    Ok(AsyncTask::new(VesselMapFilesTask {
        pairs: pairs
            .into_iter()
            .map(|p| (p.input.into(), p.output.into()))
            .collect(),
        job: map_job(&filter, &map)?,
        threads: threads as usize,
    }))
}

/// Suffix of temporary files an interrupted write may leave (safe to delete).
#[napi]
pub fn temp_marker() -> String {
    vasomim_core::io::TEMP_MARKER.to_string()
}
