//! Vesselness filters for X-ray angiograms, exact to scikit-image >= 0.20.
//!
//! Data flows `image -> hessian (per sigma) -> eigenvalues -> sato | frangi -> vessel map`.
//! Everything works on row-major slices (`height x width`, axis 0 = rows) in `f32` or `f64`,
//! knows nothing of files or ML, and is deterministic.
//!
//! - [`hessian`]: Gaussian-derivative Hessian per σ (separable kernels, reflected borders).
//! - [`filters`]: eigenvalues → Sato, Frangi (scikit-image) and Frangi-1998 responses.
//! - [`vesselmap`]: VasoMIM's post-processing (uint8 cast, border, percentile, region growing).
//! - [`batch`]: many images in parallel.
//! - [`simd`]: the run-time CPU dispatch (`multiversion!`), lane reductions and fast `exp`, also
//!   used by `vasomim-core`'s kernels.
//! - `conv`, `real` (private): the separable convolution and the f32/f64 abstraction.
//!
//! The semantics (kernel radii, borders, pass order, the gamma rule, numpy's percentile) are
//! specified in `docs/FILTERS.md`; the golden tests in `tests/` hold them to scikit-image.

pub mod batch;
mod conv;
pub mod filters;
pub mod hessian;
mod real;
pub mod simd;
pub mod vesselmap;

pub use filters::{frangi, sato, vesselness, Filter, FrangiParams, VesselnessParams};
pub use hessian::{gaussian_kernels, hessian, reflect_index, Hessian};
pub use real::Real;
pub use vesselmap::{vessel_map, Cast, MapParams};

/// Errors of this crate: bad parameters or mismatched buffers, with the offending values.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// `data.len()` is not `height * width`, or a side is zero.
    Shape { len: usize, height: usize, width: usize },
    /// A parameter is out of its domain (name, value, what is allowed).
    Param { name: &'static str, value: String, expected: &'static str },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Shape { len, height, width } => {
                write!(f, "image buffer has {len} values but the shape is {height}x{width} (height x width, both >= 1)")
            }
            Error::Param { name, value, expected } => {
                write!(f, "invalid {name} = {value}: expected {expected}")
            }
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn check_shape(len: usize, height: usize, width: usize) -> Result<()> {
    if height == 0 || width == 0 || height.checked_mul(width) != Some(len) {
        return Err(Error::Shape { len, height, width });
    }
    Ok(())
}
