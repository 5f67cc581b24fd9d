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

use crate::{config_from_js, failed, invalid, job, Pending};

// ---- probes ------------------------------------------------------------------------------

#[napi(object)]
#[derive(Default)]
pub struct ProbeResult {
    pub path: String,
    pub ok: bool,
    pub error: Option<String>,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub format: String,
}

type Probe = std::result::Result<vasomim_core::io::ImageInfo, String>;

/// Image size and frame count of every file from its header (`decode`: also decode the first
/// frame's pixels), on `threads` workers (0 = all cores). One result per path, in order.
#[napi(catch_unwind, ts_return_type = "Promise<Array<ProbeResult>>")]
pub fn probe_images(paths: Vec<String>, decode: bool, threads: u32) -> Pending<Vec<ProbeResult>> {
    job("probeImages", move || {
        let files = paths.iter().map(PathBuf::from).collect();
        let out = probe_many(files, decode, threads as usize).map_err(invalid)?;
        let result = |(r, path): (Probe, String)| match r {
            Ok(i) => ProbeResult {
                path,
                ok: true,
                error: None,
                width: i.width as u32,
                height: i.height as u32,
                frames: i.frames as u32,
                format: i.format,
            },
            Err(e) => ProbeResult { path, error: Some(e), ..Default::default() },
        };
        Ok(out.into_iter().zip(paths).map(result).collect())
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

/// Every frame of `input` (DICOM cine or any image) as 8-bit PNG `<outDir>/<stem>_<k>.png`.
#[napi(catch_unwind, ts_return_type = "Promise<Array<FrameFile>>")]
pub fn extract_frames_to_png(input: String, out_dir: String, stem: String, overwrite: bool) -> Pending<Vec<FrameFile>> {
    job("extractFrames", move || {
        let out = extract_frames(input.as_ref(), out_dir.as_ref(), &stem, overwrite)
            .map_err(|e| failed(format!("{input}: {e}")))?;
        let file = |f: vasomim_core::frames::FrameFile| FrameFile {
            frame: f.frame as u32,
            path: f.path.to_string_lossy().into_owned(),
            width: f.width as u32,
            height: f.height as u32,
        };
        Ok(out.into_iter().map(file).collect())
    })
}

/// Decode frame `frame` of a file to grey (8-bit units; DICOM display mapping).
#[napi(catch_unwind, ts_return_type = "Promise<DecodedImage>")]
pub fn read_frame(path: String, frame: u32) -> Pending<crate::DecodedImage> {
    crate::read_frame_job(path, frame as usize)
}

// ---- loader ------------------------------------------------------------------------------

#[napi(object)]
pub struct SampleInput {
    pub image: String,
    pub map: Option<String>,
    pub frame: Option<u32>,
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
                .flat_map(|(c, f)| [c.top as i32, c.left as i32, c.height as i32, c.width as i32, *f as i32])
                .collect(),
        )
    }
    /// Files skipped while building this batch, each with its reason.
    #[napi(getter)]
    pub fn skipped(&self) -> Vec<SkippedFile> {
        self.inner
            .skipped
            .iter()
            .map(|s| SkippedFile { index: s.index as u32, path: s.path.clone(), error: s.error.clone() })
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

impl Batch {
    fn new(b: core::Batch) -> Self {
        Batch { inner: Arc::new(b) }
    }
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
    /// `options`: the core `LoaderConfig` (camelCase, `augment` nested); errors name the field.
    #[napi(
        constructor,
        ts_args_type = "samples: Array<SampleInput>, options: { batchSize: number; seed: number; \
            shuffle: boolean; dropLast: boolean; rank: number; world: number; workers: number; \
            prefetch: number; augment: { size: number; randomCrop: boolean; \
            scale: [number, number]; ratio: [number, number]; hflip: number; mean: number[]; \
            std: number[] } }"
    )]
    pub fn new(samples: Vec<SampleInput>, options: serde_json::Value) -> Result<Self> {
        let config = config_from_js(options, "loader options")?;
        let samples = samples
            .into_iter()
            .map(|s| core::Sample {
                image: s.image.into(),
                map: s.map.map(Into::into),
                frame: s.frame.unwrap_or(0) as usize,
            })
            .collect();
        let inner = core::Loader::new(samples, config).map_err(invalid)?;
        Ok(Loader { inner: Arc::new(inner), iter: Arc::new(Mutex::new(None)) })
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
        Uint32Array::new(self.inner.shard(epoch as u64).iter().map(|&i| i as u32).collect())
    }

    /// Start (or restart) delivering `epoch` from batch `startBatch`; workers begin at once.
    #[napi]
    pub fn start_epoch(&self, epoch: u32, start_batch: u32) -> Result<()> {
        let n = self.inner.batches_per_epoch();
        if start_batch as usize > n {
            return Err(invalid(format!("startBatch {start_batch} is past the end of the epoch ({n} batches)")));
        }
        drop_later(&self.iter, Some(self.inner.epoch(epoch as u64, start_batch as usize)))
    }

    /// The next batch of the current epoch, or null at its end.
    #[napi(ts_return_type = "Promise<Batch | null>")]
    pub fn next(&self) -> Pending<Option<Batch>> {
        let iter = self.iter.clone();
        job("Loader.next", move || {
            let mut slot = iter.lock().map_err(|_| failed("loader state poisoned"))?;
            let it =
                slot.as_mut().ok_or_else(|| invalid("no epoch started: call startEpoch(epoch, startBatch) first"))?;
            Ok(it.next().transpose().map_err(failed)?.map(Batch::new))
        })
    }

    /// Build batch `index` of `epoch` on the calling pool thread (no prefetch; for checks).
    #[napi(ts_return_type = "Promise<Batch>")]
    pub fn batch_at(&self, epoch: u32, index: u32) -> Pending<Batch> {
        let loader = self.inner.clone();
        job("Loader.batchAt", move || {
            let b = loader.batch(epoch as u64, index as usize);
            b.map(Batch::new).map_err(invalid)
        })
    }

    /// Stop the workers and free prefetched batches.
    #[napi]
    pub fn close(&self) -> Result<()> {
        drop_later(&self.iter, None)
    }
}
