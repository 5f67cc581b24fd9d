#!/usr/bin/env python3
"""Reference vesselness and VasoMIM vessel maps from scikit-image (>= 0.20), for parity and speed.
Provenance: the team's peer script (shared/bench/skimage_vessels.py of the project brief), copied
unchanged in behaviour so the project does not depend on shared/ existing.


For each input image (8-bit grey PNG/JPEG/BMP) writes, into --out:
  <stem>.<filter>.npy   the raw filter response, float64 (scikit-image's own output)
  <stem>.map.png        the VasoMIM binary vessel map (uint8 cast, border, percentile, region grow)
and prints one JSON line per image with the filter's wall time (best of --repeat), plus a
summary line with the loop's start and end (`time.time()`, so two processes can be compared).
--maps-only skips the .npy (the reference pipeline writes only maps); --wait-go prints "ready"
after the imports and waits for a line on stdin, so a benchmark can time the work without the
interpreter's start-up.  Post-processing follows the method notes (FILTERS.md); the uint8 cast is the
reference's C cast (wrap modulo 256) unless --clamp is given.

usage: skimage_vessels.py IMAGE... --out DIR [--filter sato|frangi] [--sigmas 1,2,3,4]
                          [--white-ridges] [--border 20] [--percentile 92] [--clamp] [--repeat 3]
                          [--maps-only] [--wait-go]
"""
import argparse, json, os, sys, time
import numpy as np

def main():
    a = argparse.ArgumentParser()
    a.add_argument("images", nargs="+"); a.add_argument("--out", required=True)
    a.add_argument("--filter", default="sato", choices=["sato", "frangi"])
    a.add_argument("--sigmas", default="1,2,3,4"); a.add_argument("--white-ridges", action="store_true")
    a.add_argument("--border", type=int, default=20); a.add_argument("--percentile", type=float, default=92.0)
    a.add_argument("--clamp", action="store_true"); a.add_argument("--repeat", type=int, default=3)
    a.add_argument("--maps-only", action="store_true"); a.add_argument("--wait-go", action="store_true")
    o = a.parse_args()
    import skimage
    from skimage import io, filters
    from scipy import ndimage
    major, minor = (int(x) for x in skimage.__version__.split(".")[:2])
    if (major, minor) < (0, 20):
        sys.exit(f"scikit-image {skimage.__version__} has the pre-0.20 filter semantics; install >= 0.20")
    sigmas = [float(s) for s in o.sigmas.split(",")]
    os.makedirs(o.out, exist_ok=True)
    fn = filters.sato if o.filter == "sato" else filters.frangi
    total = 0.0
    if o.wait_go:
        print("ready", flush=True)
        sys.stdin.readline()
    start = time.time()
    for path in o.images:
        img = io.imread(path)
        if img.ndim == 3:
            img = img[..., 0]
        img = img.astype(np.uint8)
        best = float("inf")
        for _ in range(max(1, o.repeat)):
            t0 = time.perf_counter()
            v = fn(img, sigmas=sigmas, black_ridges=not o.white_ridges, mode="reflect", cval=0)
            best = min(best, time.perf_counter() - t0)
        total += best
        stem = os.path.splitext(os.path.basename(path))[0]
        if not o.maps_only:
            np.save(os.path.join(o.out, f"{stem}.{o.filter}.npy"), v)
        u8 = np.clip(v, 0, 255).astype(np.uint8) if o.clamp else v.astype(np.int64).astype(np.uint8)
        b = o.border
        if b > 0:
            u8[:b, :] = 0; u8[-b:, :] = 0; u8[:, :b] = 0; u8[:, -b:] = 0
        t = np.percentile(u8, o.percentile)
        kept = np.where(u8 >= t, u8, 0)
        out = np.zeros_like(u8)
        if kept.max() > 0:
            seed = np.unravel_index(np.argmax(kept), kept.shape)
            labels, _ = ndimage.label(kept > 0)  # default structure = 4-connectivity in 2-D
            out[labels == labels[seed]] = 255
        io.imsave(os.path.join(o.out, f"{stem}.map.png"), out, check_contrast=False)
        print(json.dumps({"image": os.path.basename(path), "shape": list(img.shape),
                          "filter": o.filter, "ms": round(best * 1e3, 3),
                          "vmax": float(v.max()), "map_pixels": int((out > 0).sum())}))
    print(json.dumps({"summary": True, "images": len(o.images), "filter": o.filter,
                      "total_ms": round(total * 1e3, 3), "start": start, "end": time.time(),
                      "skimage": skimage.__version__}))

if __name__ == "__main__":
    main()
