//! Many images at once: one image per task on the current rayon pool (the caller sizes it).

use rayon::prelude::*;

use crate::{vessel_map, vesselness, MapParams, Real, Result, VesselnessParams};

/// A borrowed grey image: `data.len() == height * width`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a, T> {
    pub data: &'a [T],
    pub height: usize,
    pub width: usize,
}

/// Vesselness of every image, in parallel; results in input order.
pub fn vesselness_batch<T: Real>(images: &[ImageRef<'_, T>], p: &VesselnessParams) -> Vec<Result<Vec<T>>> {
    images.par_iter().map(|im| vesselness(im.data, im.height, im.width, p)).collect()
}

/// Vessel maps of every image, in parallel; results in input order.
pub fn vessel_map_batch<T: Real>(
    images: &[ImageRef<'_, T>],
    p: &VesselnessParams,
    m: &MapParams,
) -> Vec<Result<Vec<u8>>> {
    images
        .par_iter()
        .map(|im| vessel_map(&vesselness(im.data, im.height, im.width, p)?, im.height, im.width, m))
        .collect()
}
