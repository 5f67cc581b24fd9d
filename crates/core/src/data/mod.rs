//! The data pipeline: from (image[, vessel map]) files to normalised batches.
//!
//! - [`rng`]: SplitMix64 and the stream keys that make every draw a function of
//!   (seed, epoch, sample index);
//! - [`transforms`]: torchvision's RandomResizedCrop sampling, Pillow-exact bicubic / nearest
//!   resize, flip, normalisation;
//! - [`loader`]: per-epoch permutation, DistributedSampler sharding, worker threads with a
//!   bounded prefetch queue, bad files skipped and reported;
//! - [`check`]: header probes of many files in parallel for `vasomim data check`.
//!
//! The dataset index itself (XA-170K folders, plain folders, manifests) is built in TS and
//! arrives here as a list of [`Sample`]s.

pub mod check;
pub mod loader;
pub mod rng;
pub mod transforms;

pub use loader::{augment_sample, Augment, Batch, EpochIter, Loader, LoaderConfig, Sample, Skipped};
