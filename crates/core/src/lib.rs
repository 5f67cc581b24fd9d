//! VasoMIM core: everything between files on disk and the numeric kernels.
//!
//! - [`io`]: angiogram decoding (PNG/JPEG/BMP/TIFF, 8/16-bit, grey/RGB) and atomic writers for
//!   PNG and NumPy `.npy`.
//! - [`device`]: the compute device, resolved once from `cpu` | `cuda` | `cuda:N`.
//! - [`distributed`]: data-parallel training across processes: the collective interface (NCCL,
//!   a TCP test double), gradient buckets, the torchrun / Slurm rendezvous.
//! - [`trainer`]: the trainers (pre-training, segmentor, segmentation fine-tuning), each owning
//!   its model, optimizer, step counter and device; input checks of their steps.
//! - [`checkpoint`]: safetensors checkpoints of every model (timm names), loading of published
//!   weights (MAE `.pth`, timm, the authors' `unext.pth`).
//! - [`optim`]: AdamW (MAE's parameter groups, per-tensor lr scales) and gradient clipping.
//! - [`embed`]: preprocessing and cls / mean-patch features of images for `vasomim embed`.
//! - [`dicom`]: DICOM single- and multi-frame decoding (dicom-rs), display mapping.
//! - [`frames`]: DICOM cine runs to PNG frames.
//! - [`data`]: dataset samples, paired augmentation (PIL-exact bicubic, torchvision's
//!   RandomResizedCrop sampling) and the deterministic prefetching loader.
//! - [`detection`]: stenosis detection (ViTDet + Faster R-CNN): box ops, NMS, RoIAlign.
//! - [`nn`]: the ViT / MAE, segmentation and UNeXt-S networks, their layers and their fused CPU
//!   kernels (`nn::kernels`, one file per op family).
//! - [`vessels`]: the vessel-map job (decode -> `frangi` -> post-process -> PNG) over many files
//!   in parallel, one outcome per file; the vesselness response written as `.npy` or a display PNG.
//!
//! Knows nothing of Node; `bindings/` adapts it.

pub mod checkpoint;
pub mod data;
pub mod detection;
pub mod device;
pub mod dicom;
pub mod distributed;
pub mod embed;
pub mod frames;
pub mod io;
pub mod nn;
pub mod optim;
pub mod parity;
pub mod trainer;
pub mod vessels;

// The kernels' run-time CPU dispatch lives in `frangi::simd`, shared with the filters.
pub(crate) use frangi::multiversion;

pub use io::{read_grey, GreyImage};

/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set
/// (which means nothing to a user of the CLI or the Node API).
pub fn error_message(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => error_message(*inner),
        e => e.to_string(),
    }
}
