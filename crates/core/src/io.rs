//! Reading angiograms as grey images and writing results atomically.
//!
//! Grey values are kept in 8-bit units (0..=255) whatever the file's depth, because the
//! vesselness parameters and the VasoMIM maps are defined on 8-bit frames:
//! - 8-bit grey: as is;
//! - 16-bit grey: v / 257 (full 16-bit range -> 0..=255, not rounded);
//! - RGB(A), 8 or 16 bit: ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B (as PIL's `convert('L')`,
//!   exact for the usual three identical channels); alpha is ignored;
//! - float images: luma, clamped to [0, 1] and scaled to 255;
//! - DICOM (see [`crate::dicom`]): modality LUT, window or full stored range, MONOCHROME1
//!   inverted; every frame of a multi-frame file is addressable.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader};

/// A decoded frame: `pixels.len() == height * width`, row-major, values in 0..=255.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
    /// Bits per sample in the file (8, 16 or 32).
    pub bit_depth: u8,
    /// Channels in the file (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
    pub channels: u8,
}

impl GreyImage {
    /// Pixels rounded to 8-bit (exact for 8-bit sources).
    pub fn to_u8(&self) -> Vec<u8> {
        self.pixels.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect()
    }
}

/// Decode `path` (the first frame of a multi-frame DICOM); the format comes from the file's
/// signature, never its extension.
pub fn read_grey(path: &Path) -> Result<GreyImage, String> {
    read_frame(path, 0)
}

/// Decode frame `frame` of `path` (0 for every non-DICOM format).
pub fn read_frame(path: &Path, frame: usize) -> Result<GreyImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot open: {e}"))?;
    decode_grey(&bytes, frame)
}

/// Decode an in-memory file to grey (8-bit units).
pub fn decode_grey(bytes: &[u8], frame: usize) -> Result<GreyImage, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    if crate::dicom::is_dicom(bytes) {
        return crate::dicom::DicomImage::from_bytes(bytes)?.grey_frame(frame);
    }
    if frame != 0 {
        return Err(format!("frame {frame} out of range (not a multi-frame file)"));
    }
    Ok(to_grey(decode_raster(bytes)?))
}

/// An 8-bit grey frame, the unit of the augmentation pipeline (PIL's mode "L").
#[derive(Debug, Clone, PartialEq)]
pub struct Grey8 {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// [`decode_grey`] rounded to 8 bits, without the float detour for 8-bit grey files (the
/// common case, and the loader's hot path).
pub fn decode_grey8(bytes: &[u8], frame: usize) -> Result<Grey8, String> {
    if bytes.is_empty() || crate::dicom::is_dicom(bytes) || frame != 0 {
        let g = decode_grey(bytes, frame)?;
        return Ok(Grey8 { width: g.width, height: g.height, pixels: g.to_u8() });
    }
    match decode_raster(bytes)? {
        DynamicImage::ImageLuma8(b) => {
            Ok(Grey8 { width: b.width() as usize, height: b.height() as usize, pixels: b.into_raw() })
        }
        other => {
            let g = to_grey(other);
            Ok(Grey8 { width: g.width, height: g.height, pixels: g.to_u8() })
        }
    }
}

fn decode_raster(bytes: &[u8]) -> Result<DynamicImage, String> {
    let format = image::guess_format(bytes)
        .map_err(|_| "not an image (no PNG, JPEG, BMP, TIFF or DICOM signature)".to_string())?;
    crate::dicom::guard(|| {
        ImageReader::with_format(std::io::Cursor::new(bytes), format)
            .decode()
            .map_err(|e| format!("cannot decode {}: {e}", format_name(format)))
    })
}

/// What `data check` needs to know of a file without decoding its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    /// "png", "jpg", "bmp", "tiff" or "dicom".
    pub format: String,
}

/// Read only the header of `path` (image size, frame count).
pub fn probe_file(path: &Path) -> Result<ImageInfo, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot open: {e}"))?;
    probe_bytes(&bytes)
}

pub fn probe_bytes(bytes: &[u8]) -> Result<ImageInfo, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    if crate::dicom::is_dicom(bytes) {
        let i = crate::dicom::probe(bytes)?;
        return Ok(ImageInfo { width: i.columns, height: i.rows, frames: i.frames, format: "dicom".into() });
    }
    let format = image::guess_format(bytes)
        .map_err(|_| "not an image (no PNG, JPEG, BMP, TIFF or DICOM signature)".to_string())?;
    let (w, h) = crate::dicom::guard(|| {
        ImageReader::with_format(std::io::Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(|e| format!("cannot read {} header: {e}", format_name(format)))
    })?;
    Ok(ImageInfo { width: w as usize, height: h as usize, frames: 1, format: format_name(format).into() })
}

fn format_name(f: image::ImageFormat) -> &'static str {
    f.extensions_str().first().copied().unwrap_or("image")
}

fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

fn to_grey(img: DynamicImage) -> GreyImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let channels = img.color().channel_count();
    let bit_depth = (img.color().bits_per_pixel() / channels as u16) as u8;
    let pixels: Vec<f32> = match &img {
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().map(|&v| v as f32).collect(),
        DynamicImage::ImageLumaA8(b) => b.as_raw().chunks_exact(2).map(|p| p[0] as f32).collect(),
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().map(|&v| v as f32 / 257.0).collect(),
        DynamicImage::ImageLumaA16(b) => b.as_raw().chunks_exact(2).map(|p| p[0] as f32 / 257.0).collect(),
        DynamicImage::ImageRgb8(b) => b.as_raw().chunks_exact(3).map(rgb8).collect(),
        DynamicImage::ImageRgba8(b) => b.as_raw().chunks_exact(4).map(rgb8).collect(),
        DynamicImage::ImageRgb16(b) => {
            b.as_raw().chunks_exact(3).map(|p| luma(p[0] as f32, p[1] as f32, p[2] as f32) / 257.0).collect()
        }
        DynamicImage::ImageRgba16(b) => {
            b.as_raw().chunks_exact(4).map(|p| luma(p[0] as f32, p[1] as f32, p[2] as f32) / 257.0).collect()
        }
        other => {
            other.to_rgb32f().as_raw().chunks_exact(3).map(|p| luma(p[0], p[1], p[2]).clamp(0.0, 1.0) * 255.0).collect()
        }
    };
    GreyImage { width, height, pixels, bit_depth, channels }
}

/// 8-bit RGB -> grey with integer BT.601 weights and rounding (identical channels stay exact).
fn rgb8(p: &[u8]) -> f32 {
    ((299 * p[0] as u32 + 587 * p[1] as u32 + 114 * p[2] as u32 + 500) / 1000) as f32
}

/// Write `path` atomically: the bytes go to a hidden temporary file in the same folder, are
/// flushed to disk, then renamed over `path`. A crash or error never leaves a partial file
/// under the final name; on error the temporary file is removed.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), String> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = BufWriter::new(File::create(&tmp)?);
        write(&mut f)?;
        let file = f.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// `dir/.name.vasomim-tmp-<pid>-<n>`: hidden, unique per process and call.
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = N.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.vasomim-tmp-{}-{n}", std::process::id()))
}

/// Suffix of the temporary files [`write_atomic`] may leave behind if the process is killed.
pub const TEMP_MARKER: &str = ".vasomim-tmp-";

/// 8-bit grey PNG.
pub fn write_png_grey8(path: &Path, width: usize, height: usize, data: &[u8]) -> Result<(), String> {
    assert_eq!(data.len(), width * height);
    write_atomic(path, |w| {
        let mut enc = png::Encoder::new(w, width as u32, height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut wr = enc.write_header().map_err(std::io::Error::other)?;
        wr.write_image_data(data).map_err(std::io::Error::other)?;
        wr.finish().map_err(std::io::Error::other)
    })
}

/// Element types `.npy` files can hold here.
pub trait NpyElem: Copy {
    const DESCR: &'static str;
    fn put(self, out: &mut Vec<u8>);
}
impl NpyElem for f32 {
    const DESCR: &'static str = "<f4";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes())
    }
}
impl NpyElem for f64 {
    const DESCR: &'static str = "<f8";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes())
    }
}
impl NpyElem for u8 {
    const DESCR: &'static str = "|u1";
    fn put(self, out: &mut Vec<u8>) {
        out.push(self)
    }
}

/// NumPy `.npy` version 1.0, C order (loads with `numpy.load`).
pub fn npy_bytes<T: NpyElem>(shape: &[usize], data: &[T]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape_txt}, }}", T::DESCR);
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    data.iter().for_each(|v| v.put(&mut out));
    out
}

pub fn write_npy<T: NpyElem>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), String> {
    let bytes = npy_bytes(shape, data);
    write_atomic(path, |w| w.write_all(&bytes))
}
