//! N-API adapters of the data pipeline: header probes, DICOM frames, and the `Loader` /
//! `Batch` handles. Batches stay in Rust; JS gets small arrays (indices, skipped files) and,
//! on request, copies of the tensors for tests and visualisation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi_derive::napi;
use vasomim_core::data::check::probe_many;
use vasomim_core::data::{self as core, EpochIter};
use vasomim_core::frames::extract_frames;

use crate::{failed, invalid, job, Pending};

// ---- probes ------------------------------------------------------------------------------

#[napi(object)]
pub struct ProbeResult {
    pub path: String,
    pub ok: bool,
    pub error: Option<String>,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub format: String,
}

fn probe_results(
    (out, paths): (
        Vec<std::result::Result<vasomim_core::io::ImageInfo, String>>,
        Vec<String>,
    ),
) -> Result<Vec<ProbeResult>> {
    Ok(out
        .into_iter()
        .zip(paths)
        .map(|(r, path)| match r {
            Ok(i) => ProbeResult {
                path,
                ok: true,
                error: None,
                width: i.width as u32,
                height: i.height as u32,
                frames: i.frames as u32,
                format: i.format,
            },
            Err(e) => ProbeResult {
                path,
                ok: false,
                error: Some(e),
                width: 0,
                height: 0,
                frames: 0,
                format: String::new(),
            },
        })
        .collect())
}

type Probes = (
    Vec<std::result::Result<vasomim_core::io::ImageInfo, String>>,
    Vec<String>,
);

/// Image size and frame count of every file from its header (`decode`: also decode the first
/// frame's pixels), on `threads` workers (0 = all cores). One result per path, in order.
#[napi(catch_unwind, ts_return_type = "Promise<Array<ProbeResult>>")]
pub fn probe_images(
    paths: Vec<String>,
    decode: bool,
    threads: u32,
) -> Pending<Probes, Vec<ProbeResult>> {
    job("probeImages", probe_results, move || {
        let files = paths.iter().map(PathBuf::from).collect();
        let out = probe_many(files, decode, threads as usize).map_err(invalid)?;
        Ok((out, paths))
    })
}

// ---- frames ------------------------------------------------------------------------------

#[napi(object)]
pub struct FrameFile {
    pub frame: u32,
    pub path: String,
    pub width: u32,
    pub height: u32,
}

fn frame_files(out: Vec<vasomim_core::frames::FrameFile>) -> Result<Vec<FrameFile>> {
    Ok(out
        .into_iter()
        .map(|f| FrameFile {
            frame: f.frame as u32,
            path: f.path.to_string_lossy().into_owned(),
            width: f.width as u32,
            height: f.height as u32,
        })
        .collect())
}

/// Every frame of `input` (DICOM cine or any image) as 8-bit PNG `<outDir>/<stem>_<k>.png`.
#[napi(catch_unwind, ts_return_type = "Promise<Array<FrameFile>>")]
pub fn extract_frames_to_png(
    input: String,
    out_dir: String,
    stem: String,
    overwrite: bool,
) -> Pending<Vec<vasomim_core::frames::FrameFile>, Vec<FrameFile>> {
    job("extractFrames", frame_files, move || {
        extract_frames(input.as_ref(), out_dir.as_ref(), &stem, overwrite)
            .map_err(|e| failed(format!("{input}: {e}")))
    })
}

/// Decode frame `frame` of a file to grey (8-bit units; DICOM display mapping).
#[napi(catch_unwind, ts_return_type = "Promise<DecodedImage>")]
pub fn read_frame(
    path: String,
    frame: u32,
) -> Pending<vasomim_core::GreyImage, crate::DecodedImage> {
    crate::read_frame_job(path, frame as usize)
}

// ---- loader ------------------------------------------------------------------------------

#[napi(object)]
pub struct SampleInput {
    pub image: String,
    pub map: Option<String>,
    pub frame: Option<u32>,
}

/// Loader options (validated again here; the TS layer parses them with zod first).
#[napi(object)]
pub struct NativeLoaderOptions {
    pub batch_size: u32,
    /// Integer in [0, 2^53).
    pub seed: f64,
    pub shuffle: bool,
    pub drop_last: bool,
    pub rank: u32,
    pub world: u32,
    pub workers: u32,
    pub prefetch: u32,
    pub size: u32,
    pub random_crop: bool,
    pub scale: Vec<f64>,
    pub ratio: Vec<f64>,
    pub hflip: f64,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

fn pair(v: &[f64], what: &str) -> Result<(f64, f64)> {
    match v {
        [a, b] => Ok((*a, *b)),
        _ => Err(invalid(format!(
            "{what} must have two values, got {}",
            v.len()
        ))),
    }
}

#[napi(object)]
pub struct SkippedFile {
    pub index: u32,
    pub path: String,
    pub error: String,
}

/// A batch owned by Rust: images (n, channels, size, size), maps (n, 1, size, size).
#[napi]
pub struct Batch {
    pub(crate) inner: Arc<core::Batch>,
}

#[napi]
impl Batch {
    #[napi(getter)]
    pub fn epoch(&self) -> f64 {
        self.inner.epoch as f64
    }
    /// Position of the batch in the rank's epoch.
    #[napi(getter)]
    pub fn index(&self) -> u32 {
        self.inner.index as u32
    }
    #[napi(getter)]
    pub fn n(&self) -> u32 {
        self.inner.n as u32
    }
    #[napi(getter)]
    pub fn channels(&self) -> u32 {
        self.inner.channels as u32
    }
    #[napi(getter)]
    pub fn size(&self) -> u32 {
        self.inner.size as u32
    }
    #[napi(getter)]
    pub fn has_maps(&self) -> bool {
        self.inner.maps.is_some()
    }
    /// Dataset index of each sample used (after replacing unreadable ones).
    #[napi(getter)]
    pub fn samples(&self) -> Uint32Array {
        Uint32Array::new(self.inner.samples.iter().map(|&i| i as u32).collect())
    }
    /// Per sample: top, left, height, width of the crop and 1 if flipped (5 values each).
    #[napi(getter)]
    pub fn crops(&self) -> Int32Array {
        Int32Array::new(
            self.inner
                .crops
                .iter()
                .flat_map(|(c, f)| {
                    [
                        c.top as i32,
                        c.left as i32,
                        c.height as i32,
                        c.width as i32,
                        *f as i32,
                    ]
                })
                .collect(),
        )
    }
    /// Files skipped while building this batch, each with its reason.
    #[napi(getter)]
    pub fn skipped(&self) -> Vec<SkippedFile> {
        self.inner
            .skipped
            .iter()
            .map(|s| SkippedFile {
                index: s.index as u32,
                path: s.path.clone(),
                error: s.error.clone(),
            })
            .collect()
    }
    /// A copy of the image tensor (for tests and visualisation; training never needs it).
    #[napi]
    pub fn images(&self) -> Float32Array {
        Float32Array::new(self.inner.images.clone())
    }
    /// A copy of the vessel-map tensor, or null when the dataset has no maps.
    #[napi]
    pub fn maps(&self) -> Option<Float32Array> {
        self.inner.maps.clone().map(Float32Array::new)
    }
}

type IterSlot = Arc<Mutex<Option<EpochIter>>>;

/// The prefetching loader over a fixed list of samples.
#[napi]
pub struct Loader {
    inner: Arc<core::Loader>,
    iter: IterSlot,
}

fn batch(b: Option<core::Batch>) -> Result<Option<Batch>> {
    Ok(b.map(|b| Batch { inner: Arc::new(b) }))
}

/// Drop an epoch iterator off the JS thread: it joins workers finishing their batch.
fn drop_later(slot: &IterSlot, new: Option<EpochIter>) -> Result<()> {
    let old = {
        let mut s = slot.lock().map_err(|_| failed("loader state poisoned"))?;
        std::mem::replace(&mut *s, new)
    };
    if let Some(old) = old {
        std::thread::spawn(move || drop(old));
    }
    Ok(())
}

#[napi]
impl Loader {
    #[napi(constructor)]
    pub fn new(samples: Vec<SampleInput>, options: NativeLoaderOptions) -> Result<Self> {
        let o = &options;
        if !(o.seed >= 0.0 && o.seed < 9007199254740992.0 && o.seed.fract() == 0.0) {
            return Err(invalid(format!(
                "seed must be an integer in [0, 2^53), got {}",
                o.seed
            )));
        }
        let augment = core::Augment {
            size: o.size as usize,
            random_crop: o.random_crop,
            scale: pair(&o.scale, "scale")?,
            ratio: pair(&o.ratio, "ratio")?,
            hflip: o.hflip,
            mean: o.mean.iter().map(|&v| v as f32).collect(),
            std: o.std.iter().map(|&v| v as f32).collect(),
        };
        let config = core::LoaderConfig {
            batch_size: o.batch_size as usize,
            seed: o.seed as u64,
            shuffle: o.shuffle,
            drop_last: o.drop_last,
            rank: o.rank as usize,
            world: o.world as usize,
            workers: o.workers as usize,
            prefetch: o.prefetch as usize,
            augment,
        };
        let samples = samples
            .into_iter()
            .map(|s| core::Sample {
                image: s.image.into(),
                map: s.map.map(Into::into),
                frame: s.frame.unwrap_or(0) as usize,
            })
            .collect();
        let inner = core::Loader::new(samples, config).map_err(invalid)?;
        Ok(Loader {
            inner: Arc::new(inner),
            iter: Arc::new(Mutex::new(None)),
        })
    }

    #[napi(getter)]
    pub fn batches_per_epoch(&self) -> u32 {
        self.inner.batches_per_epoch() as u32
    }

    /// Samples in the dataset (all ranks).
    #[napi(getter)]
    pub fn length(&self) -> u32 {
        self.inner.samples().len() as u32
    }

    #[napi(getter)]
    pub fn has_maps(&self) -> bool {
        self.inner.has_maps()
    }

    /// This rank's dataset indices for `epoch`, in batch order.
    #[napi]
    pub fn shard(&self, epoch: u32) -> Uint32Array {
        Uint32Array::new(
            self.inner
                .shard(epoch as u64)
                .iter()
                .map(|&i| i as u32)
                .collect(),
        )
    }

    /// Start (or restart) delivering `epoch` from batch `startBatch`; workers begin at once.
    #[napi]
    pub fn start_epoch(&self, epoch: u32, start_batch: u32) -> Result<()> {
        let n = self.inner.batches_per_epoch();
        if start_batch as usize > n {
            return Err(invalid(format!(
                "startBatch {start_batch} is past the end of the epoch ({n} batches)"
            )));
        }
        drop_later(
            &self.iter,
            Some(self.inner.epoch(epoch as u64, start_batch as usize)),
        )
    }

    /// The next batch of the current epoch, or null at its end.
    #[napi(ts_return_type = "Promise<Batch | null>")]
    pub fn next(&self) -> Pending<Option<core::Batch>, Option<Batch>> {
        let iter = self.iter.clone();
        job("Loader.next", batch, move || {
            let mut slot = iter.lock().map_err(|_| failed("loader state poisoned"))?;
            let it = slot.as_mut().ok_or_else(|| {
                invalid("no epoch started: call startEpoch(epoch, startBatch) first")
            })?;
            it.next().transpose().map_err(failed)
        })
    }

    /// Build batch `index` of `epoch` on the calling pool thread (no prefetch; for checks).
    #[napi(ts_return_type = "Promise<Batch>")]
    pub fn batch_at(&self, epoch: u32, index: u32) -> Pending<Option<core::Batch>, Option<Batch>> {
        let loader = self.inner.clone();
        job("Loader.batchAt", batch, move || {
            loader
                .batch(epoch as u64, index as usize)
                .map(Some)
                .map_err(invalid)
        })
    }

    /// Stop the workers and free prefetched batches.
    #[napi]
    pub fn close(&self) -> Result<()> {
        drop_later(&self.iter, None)
    }
}
