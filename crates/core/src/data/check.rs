//! Header probes for `data check`: sizes and frame counts of many files in parallel, one
//! result per file, without holding more than one file in memory per thread.

use std::path::PathBuf;

use rayon::prelude::*;

use crate::io::{decode_grey8, probe_bytes, ImageInfo};

/// Probe every path (`decode`: also decode the pixels of the first frame, which finds
/// truncated or corrupt data that a header read cannot). Results in input order.
pub fn probe_many(paths: Vec<PathBuf>, decode: bool, threads: usize) -> Result<Vec<Result<ImageInfo, String>>, String> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
    Ok(pool.install(|| {
        paths
            .into_par_iter()
            .map(|p| {
                crate::dicom::guard(|| {
                    let bytes = std::fs::read(&p).map_err(|e| format!("cannot open: {e}"))?;
                    let info = probe_bytes(&bytes)?;
                    if decode {
                        decode_grey8(&bytes, 0)?;
                    }
                    Ok(info)
                })
            })
            .collect()
    }))
}
