//! VasoMIM core: everything between files on disk and the numeric kernels.
//!
//! - [`io`]: angiogram decoding (PNG/JPEG/BMP/TIFF, 8/16-bit, grey/RGB) and atomic writers for
//!   PNG and NumPy `.npy`.
//! - [`vessels`]: the vessel-map job (decode -> `frangi` -> post-process -> PNG) over many files
//!   in parallel, one outcome per file.
//!
//! Knows nothing of Node; `bindings/` adapts it.

pub mod checkpoint;
pub mod embed;
pub mod io;
pub mod nn;
pub mod optim;
pub mod train;
pub mod vessels;

pub use io::{read_grey, GreyImage};
