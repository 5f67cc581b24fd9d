#!/usr/bin/env python3
"""Golden fixtures for crates/frangi from scikit-image >= 0.20 (the vesselness oracle).

Writes crates/frangi/tests/golden/: raw responses (.npy, float64) on crops of real angiograms
from data/samples, a few tiny and degenerate images, and VasoMIM vessel maps (.png, the
reference post-processing with the C-cast 'wrap' and with 'clamp') of whole frames, plus
manifest.json describing every case. Re-run after changing a case; commit the output.

usage: python3 scripts/golden/skimage_vesselness.py   (from the repository root)
"""
import json, os, sys
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "frangi", "tests", "golden")
SAMPLES = "data/samples"

# (name, image, crop (top, left, height, width) or None)
CROPS = [
    ("xca_train1", f"{SAMPLES}/fercer-xca80/Angios_40_training/1.png", (60, 80, 96, 128)),
    ("cadica_p10", f"{SAMPLES}/cadica-samples/p10_v7_00031.png", (200, 150, 80, 112)),
]
MAPS = [
    f"{SAMPLES}/fercer-xca80/Angios_40_training/1.png",
    f"{SAMPLES}/fercer-xca80/Angios_40_training/2.png",
    f"{SAMPLES}/danilov-stenosis-samples/14_002_5_0016.png",
    f"{SAMPLES}/cadica-samples/p11_v5_00033.png",
]
# Raw-response variants run on every crop and tiny image.
VARIANTS = [
    ("sato", "sato", dict(sigmas=[1, 2, 3, 4], black_ridges=True)),
    ("sato_white", "sato", dict(sigmas=[0.5, 1.5, 2.5], black_ridges=False)),
    ("frangi", "frangi", dict(sigmas=[1, 3, 5, 7, 9], black_ridges=True)),
    ("frangi_g", "frangi", dict(sigmas=[1, 2], black_ridges=True, alpha=0.5, beta=0.8, gamma=12.0)),
]


def load(path):
    from skimage import io
    img = io.imread(os.path.join(ROOT, path))
    if img.ndim == 3:
        img = img[..., 0]
    return img.astype(np.uint8)


def reference_map(v, cast, border=20, pct=92.0):
    from scipy import ndimage
    u8 = np.clip(v, 0, 255).astype(np.uint8) if cast == "clamp" else v.astype(np.int64).astype(np.uint8)
    if border > 0:
        u8[:border, :] = 0; u8[-border:, :] = 0; u8[:, :border] = 0; u8[:, -border:] = 0
    t = np.percentile(u8, pct)
    kept = np.where(u8 >= t, u8, 0)
    out = np.zeros_like(u8)
    if kept.max() > 0:
        seed = np.unravel_index(np.argmax(kept), kept.shape)
        labels, _ = ndimage.label(kept > 0)  # 4-connectivity in 2-D
        out[labels == labels[seed]] = 255
    return out, float(t)


def main():
    import skimage
    from skimage import filters, io
    if tuple(int(x) for x in skimage.__version__.split(".")[:2]) < (0, 20):
        sys.exit(f"scikit-image {skimage.__version__} has pre-0.20 semantics; install >= 0.20")
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261128)
    cases = []
    inputs = [(n, p, c) for n, p, c in CROPS]
    tiny = {"tiny_1x1": rng.integers(0, 256, (1, 1)), "tiny_3x5": rng.integers(0, 256, (3, 5)),
            "tiny_9x40": rng.integers(0, 256, (9, 40)), "flat_6x6": np.full((6, 6), 77)}
    for name, arr in tiny.items():
        np.save(os.path.join(OUT, f"{name}.input.npy"), arr.astype(np.uint8))
        inputs.append((name, None, None))
    for name, path, crop in inputs:
        if path is None:
            img = np.load(os.path.join(OUT, f"{name}.input.npy"))
        else:
            img = load(path)
            if crop:
                t, l, h, w = crop
                img = img[t:t + h, l:l + w]
        for vname, fname, kw in VARIANTS:
            fn = filters.sato if fname == "sato" else filters.frangi
            v = fn(img, mode="reflect", cval=0, **kw)
            f = f"{name}.{vname}.npy"
            np.save(os.path.join(OUT, f), v.astype(np.float64))
            cases.append({"kind": "response", "name": name, "image": path, "crop": crop,
                          "filter": fname, "params": kw, "golden": f, "shape": list(img.shape)})
    for path in MAPS:
        img = load(path)
        v = filters.sato(img, sigmas=[1, 2, 3, 4], black_ridges=True, mode="reflect", cval=0)
        stem = os.path.splitext(os.path.basename(path))[0]
        for cast in ("wrap", "clamp"):
            m, t = reference_map(v, cast)
            f = f"map_{os.path.basename(os.path.dirname(path))}_{stem}.{cast}.png"
            io.imsave(os.path.join(OUT, f), m, check_contrast=False)
            cases.append({"kind": "map", "image": path, "cast": cast, "threshold": t,
                          "golden": f, "vmax": float(v.max()), "map_pixels": int((m > 0).sum())})
    manifest = {"generator": "scripts/golden/skimage_vesselness.py", "skimage": skimage.__version__,
                "numpy": np.__version__, "cases": cases}
    with open(os.path.join(OUT, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    print(f"wrote {len(cases)} cases to {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
