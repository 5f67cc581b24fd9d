#!/usr/bin/python3
"""Golden DICOM fixtures for crates/core/tests/dicom.rs, produced with pydicom (the oracle).

Run with a Python that has pydicom >= 2.2 and numpy (on Debian: /usr/bin/python3 with
python3-pydicom). It
1. copies a selection of pydicom's own test files (MIT licence; derived from the public NEMA
   WG04 test images) found in the installed pydicom package,
2. writes multi-frame files of its own (MONOCHROME1 with rescale and window, signed, RLE, and
   an 8-bit angiogram-like run compressed as JPEG baseline by Pillow: lossy, so the decoded
   pixels are pydicom's decode, not the pixels that were encoded),
3. stores pydicom's `pixel_array` (its dtype, little-endian) and, when the file has a rescale,
   `apply_modality_lut` (float64) of every frame as
   .npy next to each file, plus manifest.json.

usage: /usr/bin/python3 scripts/golden/pydicom_fixtures.py [out_dir]
"""
import json
import os
import shutil
import sys
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixel_data_handlers.util import apply_modality_lut
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, generate_uid

warnings.simplefilter("ignore")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "..", "crates", "core", "tests", "fixtures", "dicom")
COPY = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm", "rtdose.dcm", "rtdose_rle.dcm", "image_dfl.dcm",
    "SC_rgb_rle_2frame.dcm", "MR_truncated.dcm",
]


def synthetic(name, frames, rows, cols, bits_stored, signed, mono, slope=None, intercept=None,
              window=None, rle=False, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    # A smooth ramp plus noise per frame: values cover the range, frames differ.
    y, x = np.mgrid[0:rows, 0:cols]
    arr = np.stack([lo + (hi - lo) * ((x + y + 7 * f) % (rows + cols)) / (rows + cols) for f in range(frames)])
    arr = np.clip(arr + rng.integers(-3, 4, arr.shape), lo, hi).astype(np.int16 if signed else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1.1"  # Enhanced XA
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = mono
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rle:
        ds.compress(RLELossless, arr)
    else:
        ds.PixelData = arr.tobytes()
    ds.save_as(os.path.join(OUT, name), write_like_original=False)


def jpeg_baseline(name, frames, rows, cols, quality, seed=0):
    """8-bit MONOCHROME2 frames (a dark background, bright vessel-like curves, noise), each frame a
    baseline JPEG (process 1) from Pillow, encapsulated with an offset table."""
    import io
    from PIL import Image
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    encoded = []
    for f in range(frames):
        img = 60 + 40 * np.sin(x / 17 + f) * np.cos(y / 23)
        for k in range(3):
            centre = rows * (0.3 + 0.2 * k) + 8 * np.sin(x / (9 + 4 * k) + f)
            img += 110 * np.exp(-((y - centre) / (1.5 + k)) ** 2)
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, "JPEG", quality=quality)
        encoded.append(buf.getvalue())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate(encoded, has_bot=True)
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.save_as(os.path.join(OUT, name), write_like_original=False)


def golden(name):
    d = pydicom.dcmread(os.path.join(OUT, name))
    entry = {"file": name, "frames": int(d.get("NumberOfFrames", 1)), "rows": d.Rows, "columns": d.Columns,
             "photometric": d.PhotometricInterpretation, "samples_per_pixel": d.SamplesPerPixel,
             "transfer_syntax": str(d.file_meta.TransferSyntaxUID)}
    try:
        a = d.pixel_array
    except Exception as e:  # the expected error of a broken file
        entry["error"] = str(e)[:200]
        return entry
    if entry["frames"] == 1:
        a = a[None]
    base = os.path.splitext(name)[0]
    # Native little-endian dtype keeps the files small (int16 / uint8 / uint32 ...).
    np.save(os.path.join(OUT, base + ".pixels.npy"), a.astype(a.dtype.newbyteorder("<")))
    if d.SamplesPerPixel == 1 and "RescaleSlope" in d:
        np.save(os.path.join(OUT, base + ".modality.npy"),
                np.stack([np.asarray(apply_modality_lut(f, d), dtype=np.float64) for f in a]))
    return entry


def main():
    os.makedirs(OUT, exist_ok=True)
    src = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    for f in COPY:
        shutil.copyfile(os.path.join(src, f), os.path.join(OUT, f))
    synthetic("mf_mono1_window.dcm", 5, 40, 48, 12, False, "MONOCHROME1", "2", "-100", ("2000", "3001"), seed=1)
    synthetic("mf_mono1_window_rle.dcm", 5, 40, 48, 12, False, "MONOCHROME1", "2", "-100", ("2000", "3001"), rle=True, seed=1)
    synthetic("mf_signed10.dcm", 3, 17, 23, 10, True, "MONOCHROME2", "0.5", "3", seed=2)
    jpeg_baseline("xa_jpeg_baseline.dcm", 3, 64, 80, quality=85, seed=3)
    own = ["mf_mono1_window.dcm", "mf_mono1_window_rle.dcm", "mf_signed10.dcm", "xa_jpeg_baseline.dcm"]
    manifest = [golden(f) for f in COPY + own]
    # The real XA test image (data/samples/dicom-xa) is too big for a golden array: keep
    # checksums of pydicom's pixel_array (the JPEG-lossless copy must decode to the same).
    xa = pydicom.dcmread(os.path.join(os.path.dirname(__file__), "..", "..", "data", "samples", "dicom-xa",
                                      "XA1_UNC.dcm")).pixel_array.astype(np.int64).ravel()
    checks = {"sum": int(xa.sum()), "weighted": int((xa * (np.arange(xa.size) % 65521)).sum()),
              "min": int(xa.min()), "max": int(xa.max())}
    with open(os.path.join(OUT, "manifest.json"), "w") as fh:
        json.dump({"pydicom": pydicom.__version__, "numpy": np.__version__, "files": manifest,
                   "XA1_UNC": checks}, fh, indent=1)
    print("XA1_UNC checksums", checks)
    print(f"wrote {len(manifest)} fixtures to {OUT}")


if __name__ == "__main__":
    main()
