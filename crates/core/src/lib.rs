//! VasoMIM core: everything between files on disk and the numeric kernels.
//!
//! - [`io`]: angiogram decoding (PNG/JPEG/BMP/TIFF, 8/16-bit, grey/RGB) and atomic writers for
//!   PNG and NumPy `.npy`.
//! - [`device`]: the compute device, resolved once from `cpu` | `cuda` | `cuda:N`.
//! - [`trainer`]: the trainers (pre-training, segmentor, segmentation fine-tuning), each owning
//!   its model, optimizer, step counter and device; input checks of their steps.
//! - [`checkpoint`]: safetensors checkpoints of every model, loading of published weights.
//! - [`dicom`]: DICOM single- and multi-frame decoding (dicom-rs), display mapping.
//! - [`frames`]: DICOM cine runs to PNG frames.
//! - [`data`]: dataset samples, paired augmentation (PIL-exact bicubic, torchvision's
//!   RandomResizedCrop sampling) and the deterministic prefetching loader.
//! - [`vessels`]: the vessel-map job (decode -> `frangi` -> post-process -> PNG) over many files
//!   in parallel, one outcome per file; the vesselness response written as `.npy` or a display PNG.
//!
//! Knows nothing of Node; `bindings/` adapts it.

pub mod checkpoint;
pub mod data;
pub mod device;
pub mod dicom;
pub mod embed;
pub mod frames;
pub mod io;
pub mod nn;
pub mod optim;
pub mod trainer;
pub mod vessels;

pub use io::{read_grey, GreyImage};
