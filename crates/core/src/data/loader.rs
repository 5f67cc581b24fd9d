//! The prefetching loader: which samples make batch b of epoch e on rank r, and worker threads
//! that build those batches ahead of the training loop.
//!
//! Determinism contract (tested): a batch is a pure function of (samples, config, epoch, b).
//! - epoch order: Fisher–Yates over 0..N with SplitMix64 keyed by (seed, epoch) (identity when
//!   shuffle is off);
//! - sharding: torch `DistributedSampler(drop_last=True)` semantics — the permutation is cut to
//!   world·⌊N/world⌋ (N ≥ world required) and rank r takes positions r, r+world, …;
//! - batches: consecutive runs of `batch_size` in the shard, a short last batch dropped when
//!   `drop_last`;
//! - augmentation of dataset sample i: SplitMix64 keyed by (seed, epoch, i, attempt), draws in
//!   torchvision's order (crop parameters, then the flip);
//! - a file that cannot be read is replaced by the next sample in dataset order, (i + k) mod N
//!   for k = 1, 2, … with attempt = k, and reported in the batch's `skipped` list. So worker
//!   count, prefetch depth and resuming at batch k never change a batch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Deserializer};

use super::rng::{key, permutation, SplitMix64, TAG_PERMUTATION, TAG_SAMPLE};
use super::transforms::{hflip, normalise_into, resize_bicubic, resize_nearest, rrc_params, CropBox, View};
use crate::io::{decode_grey8, Grey8};

/// One training sample: an image (a frame of it for multi-frame DICOM) and its vessel map.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image: PathBuf,
    pub map: Option<PathBuf>,
    pub frame: usize,
}

/// The per-sample transform (method §2); camelCase in JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Augment {
    /// Output side in pixels (224).
    pub size: usize,
    /// RandomResizedCrop when true; otherwise the whole image resized (evaluation).
    pub random_crop: bool,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    /// Probability of the horizontal flip.
    pub hflip: f64,
    /// One mean / std per output channel (3: grey replicated, 1: grey-native).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Augment {
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    fn validate(&self) -> Result<(), String> {
        let bad = |m: String| Err(m);
        if self.size == 0 || self.size > 8192 {
            return bad(format!("size must be in 1..=8192, got {}", self.size));
        }
        if !(self.scale.0 > 0.0 && self.scale.0 <= self.scale.1 && self.scale.1 <= 1.0) {
            return bad(format!("scale must satisfy 0 < min <= max <= 1, got {:?}", self.scale));
        }
        if !(self.ratio.0 > 0.0 && self.ratio.0 <= self.ratio.1 && self.ratio.1.is_finite()) {
            return bad(format!("ratio must satisfy 0 < min <= max, got {:?}", self.ratio));
        }
        if !(0.0..=1.0).contains(&self.hflip) {
            return bad(format!("hflip must be in [0, 1], got {}", self.hflip));
        }
        if !matches!(self.mean.len(), 1 | 3) || self.std.len() != self.mean.len() {
            return bad("mean and std must both have 1 or 3 values".into());
        }
        if self.std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return bad("every std must be > 0".into());
        }
        Ok(())
    }
}

/// The loader's settings; camelCase in JSON (the TS layer's `LoaderSchema`, `augment` nested).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// An integer in [0, 2^53) (a JS number).
    #[serde(deserialize_with = "js_seed")]
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    pub rank: usize,
    pub world: usize,
    /// Worker threads building batches (>= 1).
    pub workers: usize,
    /// Batches built ahead of the consumer (>= 1).
    pub prefetch: usize,
    pub augment: Augment,
}

/// A seed from JSON: JS integers above 2^32 arrive as floats, so take any number that is an
/// integer a JS number holds exactly.
fn js_seed<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = f64::deserialize(d)?;
    if !((0.0..9007199254740992.0).contains(&v) && v.fract() == 0.0) {
        let msg = format!("seed must be an integer in [0, 2^53), got {v}");
        return Err(serde::de::Error::custom(msg));
    }
    Ok(v as u64)
}

/// A file that could not be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub index: usize,
    pub path: String,
    pub error: String,
}

/// A batch owned by Rust: images (N, C, S, S) and maps (N, 1, S, S), row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    /// Position of this batch in the rank's epoch.
    pub index: usize,
    pub n: usize,
    pub channels: usize,
    pub size: usize,
    pub images: Vec<f32>,
    /// Present when every sample of the loader has a map.
    pub maps: Option<Vec<f32>>,
    /// Dataset index of each sample actually used (after replacements).
    pub samples: Vec<usize>,
    /// The crop box and flip drawn for each sample (for checks against peers, visualisation).
    pub crops: Vec<(CropBox, bool)>,
    pub skipped: Vec<Skipped>,
}

/// Replacement tries before a batch fails: more than this many unreadable files in a row in
/// dataset order means the dataset, not a file, is broken.
const MAX_REPLACEMENTS: usize = 16;

#[derive(Debug)]
pub struct Loader {
    samples: Vec<Sample>,
    config: LoaderConfig,
    with_maps: bool,
}

/// Read, crop, flip and normalise one sample into `img` (C·S·S) and `map` (S·S); returns the
/// crop box and whether it was flipped.
pub fn augment_sample(
    sample: &Sample,
    aug: &Augment,
    rng: &mut SplitMix64,
    img: &mut [f32],
    map: Option<&mut [f32]>,
) -> Result<(CropBox, bool), String> {
    let read = |p: &PathBuf, frame: usize| -> Result<Grey8, String> {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot open: {e}"))?;
        decode_grey8(&bytes, frame)
    };
    let image = read(&sample.image, sample.frame).map_err(|e| named(&sample.image, e))?;
    let vmap = match (&sample.map, &map) {
        (Some(p), Some(_)) => {
            let m = read(p, 0).map_err(|e| named(p, e))?;
            if (m.width, m.height) != (image.width, image.height) {
                return Err(format!(
                    "{}: map is {}x{} but its image {} is {}x{}",
                    p.display(),
                    m.width,
                    m.height,
                    sample.image.display(),
                    image.width,
                    image.height
                ));
            }
            Some(m)
        }
        _ => None,
    };
    let crop = if aug.random_crop {
        rrc_params(image.height, image.width, aug.scale, aug.ratio, rng)
    } else {
        CropBox { top: 0, left: 0, height: image.height, width: image.width }
    };
    let flip = rng.uniform() < aug.hflip;
    let s = aug.size;
    fn view(g: &Grey8, crop: CropBox) -> View<'_> {
        View { pixels: &g.pixels, stride: g.width, crop }
    }
    let mut px = resize_bicubic(view(&image, crop), s, s);
    if flip {
        hflip(&mut px, s);
    }
    normalise_into(&px, &aug.mean, &aug.std, img);
    if let (Some(m), Some(out)) = (vmap, map) {
        let mut mp = resize_nearest(view(&m, crop), s, s);
        if flip {
            hflip(&mut mp, s);
        }
        for (o, &v) in out.iter_mut().zip(&mp) {
            *o = v as f32 / 255.0;
        }
    }
    Ok((crop, flip))
}

fn named(p: &std::path::Path, e: String) -> String {
    format!("{}: {e}", p.display())
}

impl Loader {
    pub fn new(samples: Vec<Sample>, config: LoaderConfig) -> Result<Loader, String> {
        config.augment.validate()?;
        let c = &config;
        if samples.is_empty() {
            return Err("the dataset has no samples".into());
        }
        if c.batch_size == 0 {
            return Err("batch size must be >= 1".into());
        }
        if c.world == 0 || c.rank >= c.world {
            return Err(format!("rank must be in 0..world, got rank {} of world {}", c.rank, c.world));
        }
        if c.workers == 0 || c.prefetch == 0 {
            return Err("workers and prefetch must be >= 1".into());
        }
        if samples.len() < c.world {
            return Err(format!(
                "{} samples cannot be sharded over {} ranks (drop_last leaves none)",
                samples.len(),
                c.world
            ));
        }
        let with_maps = samples.iter().all(|s| s.map.is_some());
        let loader = Loader { samples, config, with_maps };
        if loader.batches_per_epoch() == 0 {
            return Err(format!(
                "each rank gets {} samples per epoch, fewer than one batch of {} (drop_last)",
                loader.shard_len(),
                loader.config.batch_size
            ));
        }
        Ok(loader)
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn has_maps(&self) -> bool {
        self.with_maps
    }

    /// Samples per rank per epoch (DistributedSampler with drop_last).
    pub fn shard_len(&self) -> usize {
        self.samples.len() / self.config.world
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.shard_len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// This rank's dataset indices for `epoch`, in order.
    pub fn shard(&self, epoch: u64) -> Vec<usize> {
        let c = &self.config;
        let n = self.samples.len();
        let order = if c.shuffle {
            permutation(n, &mut SplitMix64::new(key(TAG_PERMUTATION, &[c.seed, epoch])))
        } else {
            (0..n).collect()
        };
        let total = self.shard_len() * c.world;
        order[..total].iter().skip(c.rank).step_by(c.world).copied().collect()
    }

    /// Build batch `b` of `epoch` (the whole contract lives here; workers just call it).
    pub fn batch(&self, epoch: u64, b: usize) -> Result<Batch, String> {
        let shard = self.shard(epoch);
        self.batch_of(&shard, epoch, b)
    }

    fn batch_of(&self, shard: &[usize], epoch: u64, b: usize) -> Result<Batch, String> {
        let c = &self.config;
        let a = &c.augment;
        let lo = b * c.batch_size;
        if b >= self.batches_per_epoch() {
            return Err(format!("batch {b} out of range (epoch has {})", self.batches_per_epoch()));
        }
        let ids = &shard[lo..(lo + c.batch_size).min(shard.len())];
        let (ch, s) = (a.channels(), a.size);
        let mut images = vec![0f32; ids.len() * ch * s * s];
        let mut maps = self.with_maps.then(|| vec![0f32; ids.len() * s * s]);
        let mut used = Vec::with_capacity(ids.len());
        let mut crops = Vec::with_capacity(ids.len());
        let mut skipped = Vec::new();
        for (slot, &i) in ids.iter().enumerate() {
            let img = &mut images[slot * ch * s * s..(slot + 1) * ch * s * s];
            let mut ok = false;
            for attempt in 0..=MAX_REPLACEMENTS {
                let j = (i + attempt) % self.samples.len();
                let sample = &self.samples[j];
                let mut rng = SplitMix64::new(key(TAG_SAMPLE, &[c.seed, epoch, i as u64, attempt as u64]));
                let map = maps.as_mut().map(|m| &mut m[slot * s * s..(slot + 1) * s * s]);
                let r = crate::dicom::guard(|| augment_sample(sample, a, &mut rng, &mut *img, map));
                match r {
                    Ok(c) => {
                        used.push(j);
                        crops.push(c);
                        ok = true;
                        break;
                    }
                    Err(error) => skipped.push(Skipped { index: j, path: sample.image.display().to_string(), error }),
                }
            }
            if !ok {
                return Err(format!(
                    "{} unreadable samples in a row from {} (last: {})",
                    MAX_REPLACEMENTS + 1,
                    self.samples[i].image.display(),
                    skipped.last().map(|s| s.error.as_str()).unwrap_or("")
                ));
            }
        }
        Ok(Batch { epoch, index: b, n: ids.len(), channels: ch, size: s, images, maps, samples: used, crops, skipped })
    }

    /// Batches `start..` of `epoch`, built by the worker threads ahead of the caller.
    pub fn epoch(self: &Arc<Self>, epoch: u64, start: usize) -> EpochIter {
        let end = self.batches_per_epoch();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_assign: start.min(end),
                next_deliver: start.min(end),
                end,
                ready: BTreeMap::new(),
                stop: false,
            }),
            cv: Condvar::new(),
        });
        let shard = Arc::new(self.shard(epoch));
        let workers = (0..self.config.workers.min(end.saturating_sub(start).max(1)))
            .map(|_| {
                let (loader, shared, shard) = (self.clone(), shared.clone(), shard.clone());
                std::thread::spawn(move || worker(&loader, &shared, &shard, epoch))
            })
            .collect();
        EpochIter { shared, workers, skipped: 0 }
    }
}

struct State {
    next_assign: usize,
    next_deliver: usize,
    end: usize,
    ready: BTreeMap<usize, Result<Batch, String>>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

fn worker(loader: &Loader, shared: &Shared, shard: &[usize], epoch: u64) {
    let prefetch = loader.config.prefetch;
    loop {
        let b = {
            let mut st = shared.state.lock().unwrap();
            loop {
                if st.stop || st.next_assign >= st.end {
                    return;
                }
                if st.next_assign < st.next_deliver + prefetch {
                    break;
                }
                st = shared.cv.wait(st).unwrap();
            }
            st.next_assign += 1;
            st.next_assign - 1
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader.batch_of(shard, epoch, b)))
            .unwrap_or_else(|_| Err(format!("internal error while building batch {b}")));
        let mut st = shared.state.lock().unwrap();
        st.ready.insert(b, r);
        shared.cv.notify_all();
    }
}

/// The remaining batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    skipped: usize,
}

impl EpochIter {
    /// Files skipped so far in the batches delivered by this iterator.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Index of the next batch to be delivered.
    pub fn position(&self) -> usize {
        self.shared.state.lock().unwrap().next_deliver
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if st.next_deliver >= st.end {
                return None;
            }
            let want = st.next_deliver;
            if let Some(r) = st.ready.remove(&want) {
                st.next_deliver += 1;
                self.shared.cv.notify_all();
                if let Ok(b) = &r {
                    self.skipped += b.skipped.len();
                }
                return Some(r);
            }
            st = self.shared.cv.wait(st).unwrap();
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().stop = true;
        self.shared.cv.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
