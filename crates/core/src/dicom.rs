//! DICOM angiograms, single- and multi-frame (cine runs), decoded with dicom-rs.
//!
//! Three stages, each testable against pydicom on its own:
//! 1. [`DicomImage::stored_frame`]: the stored sample values of one frame, as pydicom's
//!    `pixel_array` (bits stored honoured, two's complement when Pixel Representation is 1);
//! 2. [`DicomImage::modality_frame`]: Rescale Slope / Intercept applied (pydicom's
//!    `apply_modality_lut` for the linear case);
//! 3. [`DicomImage::grey_frame`]: display grey in 8-bit units (the unit of every other decoder
//!    here): the first Window Centre / Width when present (DICOM PS3.3 C.11.2.1.2.1, linear
//!    function), otherwise the full range the stored bits can hold after rescale — a fixed map,
//!    so the frames of one run keep their relative brightness (a per-frame min-max would
//!    flicker). MONOCHROME1 is inverted last, so bright always means "more X-ray reached".
//!    Colour frames (RGB, YBR_*) become BT.601 luma.
//!
//! Transfer syntaxes: every native one (implicit/explicit VR, little/big endian), deflate, RLE
//! lossless and JPEG baseline/extended/lossless (pure-Rust codecs of dicom-rs). JPEG-LS and
//! JPEG 2000 need C codecs and are reported as unsupported by name.

use std::io::Cursor;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;

use crate::io::GreyImage;

/// True when `bytes` start like a DICOM Part 10 file (128-byte preamble, then `DICM`).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

/// The value representations of PS3.5 6.2, two letters each.
const VRS: &[u8] = b"AEASATCSDADSDTFLFDISLOLTOBODOFOLOVOWPNSHSLSQSSSTSVTMUCUIULUNURUSUTUV";

/// Walk the top-level elements and refuse any that declares more bytes than the file has left.
/// dicom-rs allocates (and zero-fills) a declared length before it finds the data short, so a
/// corrupt or truncated file would otherwise cost seconds and gigabytes; here it costs a
/// clear error naming the element. Sequences and items are walked into, fragments of
/// encapsulated pixel data skipped; the walk stops, leaving the rest to the parser, at a
/// deflated data set or an undefined length it cannot follow.
fn check_lengths(bytes: &[u8]) -> Result<(), String> {
    let n = bytes.len();
    let mut p = 132;
    let mut explicit = true;
    let mut big = false;
    let mut in_meta = true;
    let mut syntax = String::new();
    let mut encapsulated = false;
    let u16_at = |p: usize, big: bool| {
        let a = [bytes[p], bytes[p + 1]];
        if big {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    };
    let u32_at = |p: usize, big: bool| {
        let a = [bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]];
        if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    while p + 8 <= n {
        if in_meta && u16_at(p, false) != 0x0002 {
            // The meta group (always explicit VR little endian) is over: switch to the data
            // set's encoding.
            in_meta = false;
            match syntax.trim_end_matches(['\0', ' ']) {
                "1.2.840.10008.1.2" => explicit = false,
                "1.2.840.10008.1.2.2" => big = true,
                "1.2.840.10008.1.2.1.99" => return Ok(()),
                _ => {}
            }
        }
        let b = big && !in_meta;
        let (group, elem) = (u16_at(p, b), u16_at(p + 2, b));
        let left = |header: usize| n - p - header;
        if group == 0xFFFE {
            // Items and delimiters: tag + 4-byte length whatever the VR rules. Items of a
            // sequence are walked into; fragments of encapsulated pixel data are skipped.
            let len = u32_at(p + 4, b);
            if elem == 0xE000 && len != u32::MAX && len as usize > left(8) {
                return Err(format!(
                    "item declares {len} bytes but only {} remain (truncated or corrupt file)",
                    left(8)
                ));
            }
            if elem == 0xE0DD {
                encapsulated = false;
            }
            p += 8 + if encapsulated && elem == 0xE000 { len as usize } else { 0 };
            continue;
        }
        if encapsulated {
            return Err(format!(
                "encapsulated pixel data broken at byte {p}: expected an item, got ({group:04X},{elem:04X})"
            ));
        }
        let (header, len, vr) = if explicit || in_meta {
            let vr = [bytes[p + 4], bytes[p + 5]];
            if !VRS.chunks_exact(2).any(|v| v == vr) {
                // Explicit VR is two capital letters: anything else is a corrupt or misaligned
                // header, and parsing on would read garbage lengths.
                return Err(format!("element ({group:04X},{elem:04X}) at byte {p} has no valid VR (corrupt file)"));
            }
            if matches!(
                &vr,
                b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
            ) {
                if p + 12 > n {
                    break;
                }
                (12, u32_at(p + 8, b), vr)
            } else {
                (8, u16_at(p + 6, b) as u32, vr)
            }
        } else {
            (8, u32_at(p + 4, b), *b"  ")
        };
        if len == u32::MAX {
            // Undefined length: a sequence (walk into it) or encapsulated pixel data (skip its
            // fragments); anything else is left to the parser.
            if (group, elem) == (0x7FE0, 0x0010) {
                encapsulated = true;
            } else if !(vr == *b"SQ" || vr == *b"UN" || !explicit) {
                return Ok(());
            }
            p += header;
            continue;
        }
        let left = left(header);
        if len as usize > left {
            return Err(format!(
                "element ({group:04X},{elem:04X}) declares {len} bytes but only {left} remain \
                 (truncated or corrupt file)"
            ));
        }
        if in_meta && (group, elem) == (0x0002, 0x0010) {
            syntax = String::from_utf8_lossy(&bytes[p + header..p + header + len as usize]).into();
        }
        p += header + len as usize;
    }
    Ok(())
}

/// The image attributes of a DICOM object that the conversions need.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomInfo {
    pub rows: usize,
    pub columns: usize,
    pub frames: usize,
    pub samples_per_pixel: usize,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub photometric: String,
    pub planar: bool,
    pub slope: f64,
    pub intercept: f64,
    /// First (centre, width) of Window Center / Window Width, if both are present.
    pub window: Option<(f64, f64)>,
    pub transfer_syntax: String,
}

pub struct DicomImage {
    obj: DefaultDicomObject,
    pub info: DicomInfo,
}

fn open(bytes: &[u8], header_only: bool) -> Result<DefaultDicomObject, String> {
    if !is_dicom(bytes) {
        return Err("not a DICOM file (no DICM marker after the 128-byte preamble)".into());
    }
    check_lengths(bytes)?;
    let mut opts = OpenFileOptions::new();
    if header_only {
        opts = opts.read_until(tags::PIXEL_DATA);
    }
    opts.from_reader(Cursor::new(&bytes[128..])).map_err(|e| format!("cannot parse DICOM: {}", chain(&e)))
}

fn int_of(obj: &DefaultDicomObject, tag: dicom_core::Tag, name: &str) -> Result<Option<i64>, String> {
    match obj.element_opt(tag).map_err(|e| format!("{name}: {e}"))? {
        None => Ok(None),
        Some(e) => e.to_int::<i64>().map(Some).map_err(|e| format!("{name} is not an integer: {e}")),
    }
}

fn float_of(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    let e = obj.element_opt(tag).ok()??;
    e.to_multi_float64().ok()?.first().copied()
}

fn info_of(obj: &DefaultDicomObject) -> Result<DicomInfo, String> {
    let req = |tag, name: &str| -> Result<i64, String> {
        int_of(obj, tag, name)?.ok_or_else(|| format!("no {name} attribute (not an image?)"))
    };
    let rows = req(tags::ROWS, "Rows")?;
    let columns = req(tags::COLUMNS, "Columns")?;
    let bits_allocated = req(tags::BITS_ALLOCATED, "Bits Allocated")?;
    let bits_stored = int_of(obj, tags::BITS_STORED, "Bits Stored")?.unwrap_or(bits_allocated);
    let spp = int_of(obj, tags::SAMPLES_PER_PIXEL, "Samples per Pixel")?.unwrap_or(1);
    let frames = int_of(obj, tags::NUMBER_OF_FRAMES, "Number of Frames")?.unwrap_or(1);
    let signed = int_of(obj, tags::PIXEL_REPRESENTATION, "Pixel Representation")?.unwrap_or(0) == 1;
    let planar = int_of(obj, tags::PLANAR_CONFIGURATION, "Planar Configuration")?.unwrap_or(0) == 1;
    if rows < 1 || columns < 1 || frames < 1 || rows > 65535 || columns > 65535 {
        return Err(format!("bad image size: {rows} rows x {columns} columns x {frames} frames"));
    }
    if !matches!(bits_allocated, 8 | 16 | 32) || bits_stored < 1 || bits_stored > bits_allocated {
        return Err(format!("unsupported sample layout: {bits_allocated} bits allocated, {bits_stored} stored"));
    }
    // A corrupt header must not make us allocate gigabytes: 2^26 samples is 8k x 8k.
    if rows * columns * spp.max(1) > 1 << 26 {
        return Err(format!("implausible frame size {rows} x {columns} x {spp}"));
    }
    if !matches!(spp, 1 | 3) {
        return Err(format!("unsupported Samples per Pixel {spp} (1 or 3)"));
    }
    let photometric = obj
        .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| if spp == 1 { "MONOCHROME2" } else { "RGB" }.to_string());
    let centre = float_of(obj, tags::WINDOW_CENTER);
    let width = float_of(obj, tags::WINDOW_WIDTH);
    Ok(DicomInfo {
        rows: rows as usize,
        columns: columns as usize,
        frames: frames as usize,
        samples_per_pixel: spp as usize,
        bits_allocated: bits_allocated as u16,
        bits_stored: bits_stored as u16,
        signed,
        photometric,
        planar,
        slope: float_of(obj, tags::RESCALE_SLOPE).unwrap_or(1.0),
        intercept: float_of(obj, tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        window: match (centre, width) {
            (Some(c), Some(w)) if c.is_finite() && w.is_finite() && w > 0.0 => Some((c, w)),
            _ => None,
        },
        transfer_syntax: obj.meta().transfer_syntax().trim_end_matches('\0').to_string(),
    })
}

/// Attributes only; the pixel data is not parsed (for `data check` over large corpora).
pub fn probe(bytes: &[u8]) -> Result<DicomInfo, String> {
    guard(|| info_of(&open(bytes, true)?))
}

/// Run `f`, turning a panic inside a codec into an error: a malformed file must never take
/// a loader thread (or Node) down.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("decoder panicked on malformed data: {msg}"))
    })
}

/// An error and its causes, outermost first ("a: b: c").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Compressed syntaxes whose codecs are left out of this build (they need C libraries).
fn syntax_name(uid: &str) -> Option<&'static str> {
    match uid {
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some("JPEG-LS"),
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => Some("JPEG 2000"),
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => Some("HTJ2K"),
        _ => None,
    }
}

impl DicomImage {
    pub fn from_bytes(bytes: &[u8]) -> Result<DicomImage, String> {
        guard(|| {
            let obj = open(bytes, false)?;
            let info = info_of(&obj)?;
            // Uncompressed pixel data must fit in the file: checked before the decoder
            // allocates what a corrupt Rows / Columns / Number of Frames ask for.
            let native = matches!(
                info.transfer_syntax.as_str(),
                "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2"
            );
            let need =
                info.rows * info.columns * info.samples_per_pixel * (info.bits_allocated as usize / 8) * info.frames;
            if native && need > bytes.len() {
                return Err(format!(
                    "pixel data truncated: {} frame(s) of {} x {} need {need} bytes, the file has {}",
                    info.frames,
                    info.columns,
                    info.rows,
                    bytes.len()
                ));
            }
            Ok(DicomImage { obj, info })
        })
    }

    /// Samples of frame `k` (interleaved when colour), as pydicom's `pixel_array[k]`.
    pub fn stored_frame(&self, k: usize) -> Result<Vec<i32>, String> {
        let i = &self.info;
        if k >= i.frames {
            return Err(format!("frame {k} out of range (the file has {} frames)", i.frames));
        }
        guard(|| {
            let decoded = self.obj.decode_pixel_data_frame(k as u32).map_err(|e| {
                let s = chain(&e);
                match syntax_name(&i.transfer_syntax) {
                    Some(name) => format!("cannot decode pixel data: {name} is not supported by this build ({s})"),
                    None => format!("cannot decode pixel data of frame {k}: {s}"),
                }
            })?;
            // A multi-frame decode may hand back all frames or just the one asked for.
            let n = i.rows * i.columns * i.samples_per_pixel;
            let bps = (decoded.bits_allocated() as usize).div_ceil(8);
            let data = decoded.data();
            let start = if decoded.number_of_frames() as usize > 1 && data.len() >= (k + 1) * n * bps {
                k * n * bps
            } else {
                0
            };
            if data.len() < start + n * bps {
                return Err(format!(
                    "pixel data truncated: frame {k} needs {} bytes, {} available",
                    n * bps,
                    data.len().saturating_sub(start)
                ));
            }
            let bytes = &data[start..start + n * bps];
            // dicom-rs hands native samples over in little-endian order whatever the syntax.
            let mut out = samples(bytes, decoded.bits_allocated(), i.bits_stored, i.signed, false);
            if i.samples_per_pixel == 3 && decoded.planar_configuration() as u8 == 1 {
                out = interleave(&out, i.rows * i.columns);
            }
            Ok(out)
        })
    }

    /// Stored values through the linear modality LUT (Rescale Slope / Intercept).
    pub fn modality_frame(&self, k: usize) -> Result<Vec<f64>, String> {
        let (m, b) = (self.info.slope, self.info.intercept);
        Ok(self.stored_frame(k)?.into_iter().map(|v| v as f64 * m + b).collect())
    }

    /// Display grey of frame `k` in 8-bit units (see the module docs for the mapping).
    pub fn grey_frame(&self, k: usize) -> Result<GreyImage, String> {
        let i = &self.info;
        let stored = self.stored_frame(k)?;
        let grey: Vec<f64> =
            if i.samples_per_pixel == 3 {
                let ybr = i.photometric.starts_with("YBR");
                stored
                    .chunks_exact(3)
                    .map(|p| {
                        if ybr {
                            p[0] as f64
                        } else {
                            0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
                        }
                    })
                    .collect()
            } else {
                stored.iter().map(|&v| v as f64).collect()
            };
        let map = DisplayMap::new(i);
        let invert = i.photometric == "MONOCHROME1";
        let pixels = grey
            .into_iter()
            .map(|v| {
                let g = map.apply(v) as f32;
                if invert {
                    255.0 - g
                } else {
                    g
                }
            })
            .collect();
        Ok(GreyImage {
            width: i.columns,
            height: i.rows,
            pixels,
            bit_depth: i.bits_stored.min(255) as u8,
            channels: i.samples_per_pixel as u8,
        })
    }
}

/// Stored value -> grey in [0, 255]: modality LUT, then VOI window or the full stored range.
#[derive(Debug, Clone, Copy)]
pub struct DisplayMap {
    slope: f64,
    intercept: f64,
    window: Option<(f64, f64)>,
    lo: f64,
    hi: f64,
}

impl DisplayMap {
    pub fn new(i: &DicomInfo) -> DisplayMap {
        let bits = if i.samples_per_pixel == 3 { 8.min(i.bits_stored) } else { i.bits_stored } as i32;
        let (smin, smax) = if i.signed && i.samples_per_pixel == 1 {
            (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
        } else {
            (0.0, 2f64.powi(bits) - 1.0)
        };
        let (a, b) = (smin * i.slope + i.intercept, smax * i.slope + i.intercept);
        DisplayMap {
            slope: i.slope,
            intercept: i.intercept,
            window: if i.samples_per_pixel == 1 { i.window } else { None },
            lo: a.min(b),
            hi: a.max(b),
        }
    }

    pub fn apply(&self, stored: f64) -> f64 {
        let x = stored * self.slope + self.intercept;
        match self.window {
            // PS3.3 C.11.2.1.2.1: linear between c - 0.5 -/+ (w - 1) / 2, clipped.
            Some((c, w)) => {
                if w <= 1.0 {
                    if x > c - 0.5 {
                        255.0
                    } else {
                        0.0
                    }
                } else {
                    (((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0).clamp(0.0, 255.0)
                }
            }
            None => {
                if self.hi > self.lo {
                    ((x - self.lo) / (self.hi - self.lo) * 255.0).clamp(0.0, 255.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Little-endian (or big-endian) samples -> values, keeping the low `stored` bits and
/// sign-extending them when `signed`.
fn samples(bytes: &[u8], allocated: u16, stored: u16, signed: bool, big: bool) -> Vec<i32> {
    let bits = stored as u32;
    let raw: Vec<u32> = match allocated {
        8 => bytes.iter().map(|&b| b as u32).collect(),
        16 => bytes
            .chunks_exact(2)
            .map(|c| {
                let a = [c[0], c[1]];
                (if big { u16::from_be_bytes(a) } else { u16::from_le_bytes(a) }) as u32
            })
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| {
                let a = [c[0], c[1], c[2], c[3]];
                if big {
                    u32::from_be_bytes(a)
                } else {
                    u32::from_le_bytes(a)
                }
            })
            .collect(),
    };
    let mask = if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 };
    raw.into_iter()
        .map(|r| {
            let v = r & mask;
            if signed && bits < 32 && v & (1 << (bits - 1)) != 0 {
                (v as i64 - (1i64 << bits)) as i32
            } else {
                v as i32
            }
        })
        .collect()
}

/// RRR..GGG..BBB.. -> RGBRGB..
fn interleave(planar: &[i32], n: usize) -> Vec<i32> {
    let mut out = Vec::with_capacity(planar.len());
    for p in 0..n {
        for c in 0..3 {
            out.push(planar[c * n + p]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_mask_and_sign_extend() {
        // 12 bits stored in 16: 0x0FFF = -1 when signed, 4095 unsigned; junk high bits dropped.
        let b = [0xFF, 0xFF, 0x00, 0x08, 0x01, 0x00];
        assert_eq!(samples(&b, 16, 12, true, false), vec![-1, -2048, 1]);
        assert_eq!(samples(&b, 16, 12, false, false), vec![4095, 2048, 1]);
        assert_eq!(samples(&[0x12, 0x34], 16, 16, false, true), vec![0x1234]);
    }

    #[test]
    fn window_follows_the_dicom_linear_function() {
        let mut info = DicomInfo {
            rows: 1,
            columns: 1,
            frames: 1,
            samples_per_pixel: 1,
            bits_allocated: 16,
            bits_stored: 12,
            signed: false,
            photometric: "MONOCHROME2".into(),
            planar: false,
            slope: 1.0,
            intercept: 0.0,
            window: Some((100.0, 51.0)),
            transfer_syntax: String::new(),
        };
        let m = DisplayMap::new(&info);
        // Bounds c - 0.5 -/+ (w - 1) / 2 = 74.5, 124.5.
        assert_eq!(m.apply(74.5), 0.0);
        assert_eq!(m.apply(124.5), 255.0);
        assert!((m.apply(99.5) - 127.5).abs() < 1e-9);
        info.window = None;
        let m = DisplayMap::new(&info);
        assert_eq!(m.apply(4095.0), 255.0);
        assert_eq!(m.apply(0.0), 0.0);
    }
}
