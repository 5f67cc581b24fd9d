//! Frame extraction: every frame of a DICOM cine run (or the one frame of any other image) to
//! 8-bit grey PNG, so the rest of the pipeline (vessel maps, loader) reads plain folders.

use std::path::{Path, PathBuf};

use crate::dicom::DicomImage;
use crate::io::{decode_grey, write_png_grey8};

/// One written frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameFile {
    pub frame: usize,
    pub path: PathBuf,
    pub width: usize,
    pub height: usize,
}

/// Write frames of `input` as `<out_dir>/<stem>_<frame:04>.png` (`<stem>.png` for single-frame
/// files), atomically; existing files are kept unless `overwrite`.
pub fn extract_frames(input: &Path, out_dir: &Path, stem: &str, overwrite: bool) -> Result<Vec<FrameFile>, String> {
    let bytes = std::fs::read(input).map_err(|e| format!("cannot open: {e}"))?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let dicom = if crate::dicom::is_dicom(&bytes) { Some(DicomImage::from_bytes(&bytes)?) } else { None };
    let frames = dicom.as_ref().map(|d| d.info.frames).unwrap_or(1);
    let mut out = Vec::with_capacity(frames);
    for k in 0..frames {
        let name = if frames == 1 { format!("{stem}.png") } else { format!("{stem}_{k:04}.png") };
        let path = out_dir.join(name);
        let g = match &dicom {
            Some(d) => d.grey_frame(k),
            None => decode_grey(&bytes, 0),
        }
        .map_err(|e| format!("frame {k}: {e}"))?;
        if overwrite || !path.exists() {
            write_png_grey8(&path, g.width, g.height, &g.to_u8())?;
        }
        out.push(FrameFile { frame: k, path, width: g.width, height: g.height });
    }
    Ok(out)
}
