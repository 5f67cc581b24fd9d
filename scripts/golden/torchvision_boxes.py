#!/usr/bin/env python3
"""Golden fixtures for the detection box ops (crates/core/tests/golden/torchvision_boxes.npz).

From torchvision (the peer named in the design notes), all float32 on the CPU:
  - iou_* / giou_*: `box_iou`, `generalized_box_iou` of two box sets (overlaps, nesting,
    touching edges, disjoint boxes, a zero-area box);
  - nms_*: `nms` keep indices of clustered random boxes with tied scores at IoU 0.5 and 0.7, and
    `batched_nms` with three classes;
  - coder_*: `BoxCoder(weights).encode_single / decode_single` with weights (1,1,1,1) and
    (10,10,5,5), deltas beyond the log(1000/16) clamp included;
  - roi_*: `roi_align(aligned=True)` of a (2, 3, 13, 11) map with boxes inside, partly outside and
    fully outside the map, tiny and large, at spatial scale 0.25 and 1, output 7x7 and 3x2,
    sampling_ratio 0 (adaptive) and 2; plus the gradient of sum(out * r) w.r.t. the map.
Inputs are stored too, so the tests need no Python.

usage: /usr/bin/python3 scripts/golden/torchvision_boxes.py [--out file.npz] [--seed N]   (from the
repository root; needs torch and torchvision, e.g. Debian's python3-torchvision). Another --seed
draws other boxes and maps: the live parity test of crates/core/tests/detection_ops.rs uses one.
"""
import argparse
import os

import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou, generalized_box_iou, nms, roi_align

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "core", "tests", "golden", "torchvision_boxes.npz")


def boxes(rng, n, lo=0.0, hi=100.0, smin=1.0, smax=40.0):
    xy = rng.uniform(lo, hi, size=(n, 2))
    wh = rng.uniform(smin, smax, size=(n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--seed", type=int, default=2021)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    out = {}
    a = boxes(rng, 9)
    a[0] = [10, 10, 20, 20]
    a[1] = [20, 10, 30, 20]  # touches a[0]
    a[2] = [12, 12, 18, 18]  # inside a[0]
    b = boxes(rng, 7)
    b[0] = [10, 10, 20, 20]
    b[1] = [15, 15, 15, 25]  # zero area
    b[2] = [200, 200, 210, 230]  # far away
    out["iou_a"], out["iou_b"] = a, b
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out["iou"] = box_iou(ta, tb).numpy()
    ok = (tb[:, 2:] > tb[:, :2]).all(1)  # GIoU needs positive areas (its union would be 0 otherwise)
    out["giou_b"] = b[ok.numpy()]
    out["giou"] = generalized_box_iou(ta, tb[ok]).numpy()

    # NMS: clusters of jittered boxes; scores rounded to 0.05 so ties are common.
    centres = rng.uniform(20, 180, size=(12, 2))
    nb = []
    for c in centres:
        for _ in range(15):
            s = rng.uniform(10, 40)
            j = rng.normal(0, 4, size=4)
            nb.append([c[0] - s / 2 + j[0], c[1] - s / 2 + j[1], c[0] + s / 2 + j[2], c[1] + s / 2 + j[3]])
    nb = np.array(nb, np.float32)
    ns = (np.round(rng.uniform(0, 1, size=len(nb)) * 20) / 20).astype(np.float32)
    out["nms_boxes"], out["nms_scores"] = nb, ns
    for t in (0.5, 0.7):
        out[f"nms_keep_{int(t * 10)}"] = nms(torch.from_numpy(nb), torch.from_numpy(ns), t).numpy().astype(np.int64)
    cls = rng.integers(0, 3, size=len(nb)).astype(np.int64)
    out["nms_classes"] = cls
    out["nms_batched_keep_5"] = batched_nms(torch.from_numpy(nb), torch.from_numpy(ns), torch.from_numpy(cls), 0.5).numpy()

    # Box coder.
    props = boxes(rng, 20, smin=4, smax=60)
    gts = props + rng.normal(0, 5, size=props.shape).astype(np.float32)
    gts[:, 2:] = np.maximum(gts[:, 2:], gts[:, :2] + 1)
    deltas = rng.normal(0, 1, size=(20, 4)).astype(np.float32)
    deltas[0, 2:] = [6.0, -7.0]  # beyond the clamp
    out["coder_props"], out["coder_gts"], out["coder_deltas"] = props, gts, deltas
    for name, w in (("w1", (1.0, 1.0, 1.0, 1.0)), ("w10", (10.0, 10.0, 5.0, 5.0))):
        coder = BoxCoder(w, bbox_xform_clip=float(np.log(1000.0 / 16)))
        out[f"coder_enc_{name}"] = coder.encode_single(torch.from_numpy(gts), torch.from_numpy(props)).numpy()
        out[f"coder_dec_{name}"] = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(props)).numpy()

    # RoIAlign, aligned=True.
    feat = rng.normal(0, 1, size=(2, 3, 13, 11)).astype(np.float32)
    out["roi_feat"] = feat
    rois = np.array(
        [
            [0, 4.0, 4.0, 30.0, 40.0],
            [1, 0.0, 0.0, 44.0, 52.0],  # the whole map at scale 1/4
            [0, -10.0, -6.0, 12.0, 20.0],  # partly outside (top-left)
            [1, 30.0, 40.0, 60.0, 70.0],  # partly outside (bottom-right)
            [0, 80.0, 80.0, 100.0, 120.0],  # fully outside
            [1, 10.3, 17.7, 11.1, 18.2],  # tiny
            [0, 2.5, 3.25, 41.5, 49.0],
        ],
        np.float32,
    )
    out["roi_rois"] = rois
    r_rng = np.random.default_rng(args.seed + 5)
    for scale, sname in ((0.25, "s4"), (1.0, "s1")):
        for (oh, ow) in ((7, 7), (3, 2)):
            for sr in (0, 2):
                key = f"roi_{sname}_{oh}x{ow}_sr{sr}"
                x = torch.from_numpy(feat).clone().requires_grad_(True)
                rr = torch.from_numpy(rois) if scale == 0.25 else torch.from_numpy(rois * np.array([1, .25, .25, .25, .25], np.float32))
                y = roi_align(x, rr, (oh, ow), spatial_scale=scale, sampling_ratio=sr, aligned=True)
                r = torch.from_numpy(r_rng.normal(0, 1, size=tuple(y.shape)).astype(np.float32))
                (y * r).sum().backward()
                out[key] = y.detach().numpy()
                out[key + "_r"] = r.numpy()
                out[key + "_grad"] = x.grad.numpy()
    np.savez(args.out, **out)
    print(f"wrote {args.out}: {len(out)} arrays (torch {torch.__version__}, torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
