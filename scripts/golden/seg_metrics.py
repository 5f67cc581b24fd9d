#!/usr/bin/env python3
"""Golden fixtures for the segmentation metrics and the COCO polygon fill (ts/test/golden/).

Writes ts/test/golden/seg-metrics.json with
  - skeletons: scikit-image's 2-D `skeletonize` (Zhang-Suen, its lookup table) of real vessel
    masks from data/samples/fercer-xca80, seeded random blobs and degenerate cases;
  - polygons: scikit-image `draw.polygon2mask` fills of COCO-style polygons (float vertices,
    pixel (x, y) covering [x, x+1) x [y, y+1): vertices are shifted by -0.5 so that the fill
    samples pixel centres, which is exact in float64), simple and self-intersecting;
  - auc: pixel ROC-AUC of soft scores with ties, computed here as the Mann-Whitney U statistic
    with average ranks for ties, AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg). This is
    an exact implementation independent of the trapezoid ROC of ts/src/eval/metrics.ts;
    scikit-learn is not installed on the machine that generated the fixture (roc_auc_score
    equals this statistic by definition, ties included);
  - pairs: DSC and clDice (skeletons from skimage) of real masks against perturbed copies.
Masks are stored as base64 of numpy.packbits (row-major, MSB first).

Prints, for the record, how often Pillow's ImageDraw.polygon (the other common rasteriser)
agrees with the fill on the polygon cases.

usage: python3 scripts/golden/seg_metrics.py   (from the repository root; needs scikit-image
>= 0.20, numpy, scipy, Pillow)
"""
import base64
import json
import os

import numpy as np
import PIL
import scipy
import skimage
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage.draw import polygon2mask
from skimage.morphology import skeletonize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "ts", "test", "golden", "seg-metrics.json")
XCA = "data/samples/fercer-xca80"


def pack(a):
    return base64.b64encode(np.packbits(np.asarray(a, dtype=bool).ravel()).tobytes()).decode()


def mask_png(rel):
    return np.array(Image.open(os.path.join(ROOT, rel)).convert("L")) >= 128


def skeleton_cases(rng):
    cases = []
    for rel in [f"{XCA}/Angios_40_training/1_gt.png", f"{XCA}/Angios_40_testing/7_gt.png"]:
        cases.append((rel, mask_png(rel)))
    for k in range(12):
        h, w = int(rng.integers(8, 64)), int(rng.integers(8, 64))
        img = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.7, 3)) > rng.uniform(0.42, 0.58)
        cases.append((f"blob{k}", img))
    z = np.zeros((9, 11), bool)
    cases.append(("empty", z))
    cases.append(("full", np.ones((7, 5), bool)))
    one = z.copy(); one[4, 5] = True
    cases.append(("single", one))
    sq = z.copy(); sq[3:5, 3:5] = True
    cases.append(("square2", sq))
    border = z.copy(); border[0, :] = True; border[:, 0] = True; border[1, 1:4] = True
    cases.append(("border", border))
    thick = z.copy(); thick[2:7, 1:10] = True
    cases.append(("bar5x9", thick))
    return [{"name": n, "height": int(a.shape[0]), "width": int(a.shape[1]), "mask": pack(a),
             "skeleton": pack(skeletonize(a))} for n, a in cases]


def polygon_cases(rng):
    cases = []
    # simple (star-shaped) polygons with COCO-like coordinates (2 decimals), some vertices on .5
    for k in range(16):
        h, w = int(rng.integers(12, 48)), int(rng.integers(12, 48))
        n = int(rng.choice([3, 4, 5, 8, 13, 24]))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(1, max(h, w) / 2, n)
        xs = np.round(cx + rad * np.cos(ang), 2)
        ys = np.round(cy + rad * np.sin(ang), 2)
        if k % 4 == 0:
            xs = np.round(xs * 2) / 2
            ys = np.round(ys * 2) / 2
        cases.append((f"star{k}", h, w, xs, ys))
    # self-intersecting (even-odd holes) and degenerate ones
    for k in range(6):
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        n = int(rng.choice([4, 5, 7, 9]))
        xs = np.round(rng.uniform(-3, w + 3, n), 1)
        ys = np.round(rng.uniform(-3, h + 3, n), 1)
        cases.append((f"tangle{k}", h, w, xs, ys))
    cases.append(("pentagram", 21, 21, np.round(10 + 9 * np.cos(np.arange(5) * 4 * np.pi / 5 - np.pi / 2), 3),
                  np.round(10 + 9 * np.sin(np.arange(5) * 4 * np.pi / 5 - np.pi / 2), 3)))
    cases.append(("integer_rect", 10, 12, np.array([2.0, 9.0, 9.0, 2.0]), np.array([1.0, 1.0, 7.0, 7.0])))
    cases.append(("half_rect", 10, 12, np.array([2.5, 9.5, 9.5, 2.5]), np.array([1.5, 1.5, 7.5, 7.5])))
    cases.append(("sliver", 10, 12, np.array([1.0, 11.0, 1.2]), np.array([5.0, 5.2, 5.3])))
    cases.append(("collinear", 8, 8, np.array([1.0, 4.0, 7.0]), np.array([1.0, 4.0, 7.0])))
    out, pil_equal = [], 0
    for name, h, w, xs, ys in cases:
        m = polygon2mask((h, w), np.stack([ys - 0.5, xs - 0.5], axis=1))
        im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(im).polygon(list(zip(xs.tolist(), ys.tolist())), fill=1)
        pil_equal += int((np.array(im).astype(bool) == m).all())
        out.append({"name": name, "height": h, "width": w,
                    "polygon": [float(v) for xy in zip(xs, ys) for v in xy], "mask": pack(m)})
    return out, pil_equal


def auc_mwu(scores, labels):
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ss = s[order]
    i = 0
    while i < len(ss):  # average ranks over runs of equal scores (1-based)
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    npos, nneg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def auc_cases(rng):
    out = []
    for k in range(10):
        n = int(rng.integers(5, 600))
        y = rng.random(n) < rng.uniform(0.05, 0.6)
        y[0], y[1] = True, False
        levels = int(rng.choice([2, 5, 17, 256, 0]))
        s = rng.random(n) * 0.6 + 0.4 * y * rng.random(n)
        if levels:
            s = np.floor(s * levels) / levels  # many ties
        s = s.astype(np.float32)
        out.append({"name": f"auc{k}", "scores": [float(v) for v in s], "labels": [int(v) for v in y],
                    "auc": auc_mwu(s, y)})
    out.append({"name": "all_tied", "scores": [0.5] * 7, "labels": [1, 0, 1, 0, 0, 1, 0], "auc": auc_mwu([0.5] * 7, [1, 0, 1, 0, 0, 1, 0])})
    return out


def cldice(p, g):
    sp, sg = skeletonize(p), skeletonize(g)
    tprec = (sp & g).sum() / sp.sum()
    tsens = (sg & p).sum() / sg.sum()
    return float(2 * tprec * tsens / (tprec + tsens))


def pair_cases():
    out = []
    for rel in [f"{XCA}/Angios_40_training/3_gt.png", f"{XCA}/Angios_40_testing/12_gt.png"]:
        g = mask_png(rel)
        preds = []
        for how, p in [("dilated", ndi.binary_dilation(g, iterations=2)),
                       ("eroded", ndi.binary_erosion(g)),
                       ("shifted", np.roll(g, (3, -2), axis=(0, 1)))]:
            dsc = float(2 * (p & g).sum() / (p.sum() + g.sum()))
            preds.append({"how": how, "pred": pack(p), "dsc": dsc, "cldice": cldice(p, g)})
        out.append({"name": rel, "height": int(g.shape[0]), "width": int(g.shape[1]), "truth": pack(g), "preds": preds})
    return out


def main():
    rng = np.random.default_rng(20240601)
    polys, pil_equal = polygon_cases(rng)
    fixture = {
        "generator": "scripts/golden/seg_metrics.py",
        "versions": {"scikit-image": skimage.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                     "pillow": PIL.__version__},
        "encoding": "base64 of numpy.packbits(mask.ravel()), row-major, MSB first",
        "skeletons": skeleton_cases(rng),
        "polygons": polys,
        "auc": auc_cases(rng),
        "pairs": pair_cases(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)} (scikit-image {skimage.__version__}); "
          f"Pillow {PIL.__version__} ImageDraw.polygon equals the fill on {pil_equal}/{len(polys)} polygons")


if __name__ == "__main__":
    main()
