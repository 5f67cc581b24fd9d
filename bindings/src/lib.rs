//! N-API adapters over `vasomim-core`: conversions, Promises and error codes. No algorithm
//! lives here. Every long call is a [`Job`] (a Promise in JS) on the libuv pool; a Rust panic
//! inside one becomes a rejected Promise naming the call, never a crashed process. Input errors
//! found before the Promise starts have code `InvalidArg` (the CLI's exit code 2).
//!
//! - this file: errors, [`Job`], the device and config conversions, vesselness and vessel maps.
//! - [`data`]: header probes, DICOM frames, the `Loader` / `Batch` handles.
//! - [`distributed`]: the launcher's rendezvous, `Model.joinGroup` / `Model.allReduce`.
//! - [`model`], [`segmentor`], [`segmentation`], [`detection`]: one handle per core trainer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Device;
use napi::bindgen_prelude::*;
use napi::{Env, Task};
use napi_derive::napi;
use serde::{de::DeserializeOwned, Serialize};
use vasomim_core::vessels::{
    self as vessels_core, map_of, response_of, vessel_maps, vesselness_file as core_file, MapJob, Precision, Response,
};

pub mod data;
pub mod detection;
pub mod distributed;
pub mod model;
pub mod segmentation;
pub mod segmentor;

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(Status::InvalidArg, msg.into())
}

pub(crate) fn failed(msg: impl Into<String>) -> Error {
    Error::new(Status::GenericFailure, msg.into())
}

/// A core error inside a running job.
pub(crate) fn err(e: candle_core::Error) -> Error {
    failed(vasomim_core::error_message(e))
}

/// A core input check that failed before the job started (bad argument).
pub(crate) fn rejected(e: candle_core::Error) -> Error {
    invalid(vasomim_core::error_message(e))
}

/// The device named by the caller (`cpu` when absent); an unknown or unavailable one is a bad
/// argument, never a silent CPU run.
pub(crate) fn device(name: Option<String>) -> Result<Device> {
    vasomim_core::device::resolve(name.as_deref().unwrap_or("cpu")).map_err(rejected)
}

/// A model config from its camelCase JSON object; errors name `what` and the field.
pub(crate) fn config_from_js<T: DeserializeOwned>(v: serde_json::Value, what: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| invalid(format!("{what}: {e}")))
}

pub(crate) fn config_to_js<T: Serialize>(c: &T) -> Result<serde_json::Value> {
    serde_json::to_value(c).map_err(|e| failed(e.to_string()))
}

/// Run `f`, turning a panic into an error that names it.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(failed(format!("internal error in {what}: {msg}")))
    })
}

type Work<T> = Box<dyn FnOnce() -> Result<T> + Send>;

/// One Promise: `work` runs once on the libuv pool (guarded, named); its output is the JS value.
pub struct Job<T> {
    name: &'static str,
    work: Option<Work<T>>,
}

impl<T: ToNapiValue + TypeName + Send + 'static> Task for Job<T> {
    type Output = T;
    type JsValue = T;
    fn compute(&mut self) -> Result<T> {
        let work = self.work.take().ok_or_else(|| failed(format!("{} ran twice", self.name)))?;
        guarded(self.name, work)
    }
    fn resolve(&mut self, _env: Env, out: T) -> Result<T> {
        Ok(out)
    }
}

/// A core object shared by a JS handle and its running Promises; the mutex serialises
/// overlapping calls.
pub(crate) struct Shared<T> {
    inner: Arc<Mutex<T>>,
    what: &'static str,
}

impl<T: Send + 'static> Shared<T> {
    pub(crate) fn new(t: T, what: &'static str) -> Self {
        Shared { inner: Arc::new(Mutex::new(t)), what }
    }

    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, T>> {
        let what = self.what;
        (self.inner.lock()).map_err(|_| failed(format!("{what} state is poisoned by an earlier panic")))
    }

    /// A check of the caller's input on the locked object, before a Promise starts: its error is
    /// a bad argument.
    pub(crate) fn check<R>(&self, f: impl FnOnce(&T) -> candle_core::Result<R>) -> Result<R> {
        f(&*self.lock()?).map_err(rejected)
    }

    /// A Promise of `f` on the locked object; core errors reject it.
    pub(crate) fn task<J: ToNapiValue + TypeName + Send + 'static>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut T) -> candle_core::Result<J> + Send + 'static,
    ) -> Pending<J> {
        let (inner, what) = (self.inner.clone(), self.what);
        job(name, move || vasomim_core::device::exclusive(move || f(&mut *Shared { inner, what }.lock()?).map_err(err)))
    }
}

/// A Promise of JS value `J` computed on the pool.
pub type Pending<J> = AsyncTask<Job<J>>;

/// A [`Job`] as the `AsyncTask` napi returns to JS.
pub(crate) fn job<J: ToNapiValue + TypeName + Send + 'static>(
    name: &'static str,
    work: impl FnOnce() -> Result<J> + Send + 'static,
) -> Pending<J> {
    AsyncTask::new(Job { name, work: Some(Box::new(work)) })
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

fn filter_params(o: &FilterOptions) -> Result<frangi::VesselnessParams> {
    let frangi = (o.alpha, o.beta, o.gamma);
    vessels_core::filter_params(&o.filter, o.sigmas.clone(), o.black_ridges, frangi).map_err(invalid)
}

fn map_params(o: &MapOptions) -> Result<frangi::MapParams> {
    vessels_core::map_params(o.border as usize, o.percentile, &o.cast).map_err(invalid)
}

fn precision(p: &str) -> Result<Precision> {
    Precision::parse(p).map_err(invalid)
}

fn check_pixels(len: usize, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || (width as usize) * (height as usize) != len {
        return Err(invalid(format!(
            "pixels has {len} values but width x height is {width} x {height} (both must be >= 1)"
        )));
    }
    Ok(())
}

/// Frame `frame` of a file as a Promise of its grey image; behind `readImage` and `readFrame`.
pub(crate) fn read_frame_job(path: String, frame: usize) -> Pending<DecodedImage> {
    job("readImage", move || {
        let img = vasomim_core::io::read_frame(path.as_ref(), frame).map_err(|e| failed(format!("{path}: {e}")))?;
        Ok(DecodedImage {
            width: img.width as u32,
            height: img.height as u32,
            bit_depth: img.bit_depth as u32,
            channels: img.channels as u32,
            pixels: img.pixels.into(),
        })
    })
}

/// Decode an image file to grey (8-bit units).
#[napi(catch_unwind, ts_return_type = "Promise<DecodedImage>")]
pub fn read_image(path: String) -> Pending<DecodedImage> {
    read_frame_job(path, 0)
}

/// Raw vesselness response of a grey image given as pixels (row-major, 8-bit units).
#[napi(catch_unwind, ts_return_type = "Promise<VesselnessResult>")]
pub fn vesselness(
    pixels: Float32Array,
    width: u32,
    height: u32,
    options: FilterOptions,
) -> Result<Pending<VesselnessResult>> {
    check_pixels(pixels.len(), width, height)?;
    let (params, prec) = (filter_params(&options)?, precision(&options.precision)?);
    let px = pixels.to_vec();
    Ok(job("vesselness", move || {
        let (h, w) = (height as usize, width as usize);
        let r = response_of(&px, h, w, &params, prec).map_err(invalid)?;
        let max = r.max();
        let (dtype, data) = match r {
            Response::F32(v) => ("float32", Either::A(v.into())),
            Response::F64(v) => ("float64", Either::B(v.into())),
        };
        let dtype = dtype.into();
        Ok(VesselnessResult { width, height, dtype, data, max })
    }))
}

/// Read `input`, filter it, write the response to `output` (.npy raw or .png display image,
/// response / max · 255).
#[napi(catch_unwind, ts_return_type = "Promise<FileResult>")]
pub fn vesselness_file(input: String, output: String, options: FilterOptions) -> Result<Pending<FileResult>> {
    let (params, prec) = (filter_params(&options)?, precision(&options.precision)?);
    Ok(job("vesselnessFile", move || {
        let (w, h, max) = core_file(input.as_ref(), output.as_ref(), &params, prec).map_err(failed)?;
        let (width, height) = (w as u32, h as u32);
        Ok(FileResult { width, height, max })
    }))
}

fn map_job(f: &FilterOptions, m: &MapOptions) -> Result<MapJob> {
    Ok(MapJob { filter: filter_params(f)?, map: map_params(m)?, precision: precision(&f.precision)? })
}

/// The {0, 255} VasoMIM vessel map of a grey image given as pixels.
#[napi(catch_unwind, ts_return_type = "Promise<Uint8Array>")]
pub fn vessel_map(
    pixels: Float32Array,
    width: u32,
    height: u32,
    filter: FilterOptions,
    map: MapOptions,
) -> Result<Pending<Uint8Array>> {
    check_pixels(pixels.len(), width, height)?;
    let (job_, px) = (map_job(&filter, &map)?, pixels.to_vec());
    Ok(job("vesselMap", move || {
        let m = map_of(&px, height as usize, width as usize, &job_).map_err(invalid)?;
        Ok(m.into())
    }))
}

/// Vessel maps for many files on `threads` workers (0 = all cores); one outcome per pair,
/// in order. Outputs are written atomically; a failing file does not stop the others.
#[napi(catch_unwind, ts_return_type = "Promise<Array<MapOutcome>>")]
pub fn vessel_map_files(
    pairs: Vec<MapPair>,
    filter: FilterOptions,
    map: MapOptions,
    threads: u32,
) -> Result<Pending<Vec<MapOutcome>>> {
    let job_ = map_job(&filter, &map)?;
    let pairs: Vec<(PathBuf, PathBuf)> = pairs.into_iter().map(|p| (p.input.into(), p.output.into())).collect();
    let name = |p: PathBuf| p.to_string_lossy().into_owned();
    Ok(job("vesselMapFiles", move || {
        let out = vessel_maps(pairs, &job_, threads as usize).map_err(invalid)?;
        let outcome = |o: vessels_core::Outcome| MapOutcome {
            input: name(o.input),
            output: name(o.output),
            ok: o.error.is_none(),
            error: o.error,
            width: o.width as u32,
            height: o.height as u32,
            vessel_pixels: o.vessel_pixels as u32,
            millis: o.millis,
        };
        Ok(out.into_iter().map(outcome).collect())
    }))
}

/// Throws (InvalidArg) when this build cannot run on `device` (`cpu` | `cuda` | `cuda:N`),
/// with a message that says how to get a build that can.
#[napi]
pub fn check_device(device: String) -> Result<()> {
    crate::device(Some(device)).map(|_| ())
}

/// What this build can run on (`vasomim doctor`): its device features, the CUDA driver and
/// devices found, and why CUDA is unavailable when it is.
#[napi(
    ts_return_type = "{ features: string[]; cudaDriver: number | null; cudaDevices: string[]; cudaUnavailable: string | null }"
)]
pub fn device_report() -> Result<serde_json::Value> {
    config_to_js(&vasomim_core::device::report())
}

/// The precision named by the caller for a model on `device`, or a rejection naming the choices.
pub(crate) fn compute_precision(name: &str, device: &Device) -> Result<vasomim_core::device::Precision> {
    vasomim_core::device::Precision::resolve(name, device).map_err(rejected)
}

/// Suffix of temporary files an interrupted write may leave (safe to delete).
#[napi]
pub fn temp_marker() -> String {
    vasomim_core::io::TEMP_MARKER.to_string()
}
