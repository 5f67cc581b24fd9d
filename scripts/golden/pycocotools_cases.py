#!/usr/bin/env python3
"""Golden fixtures for the TypeScript COCO bbox evaluation (ts/test/golden/coco-eval.json).

Each case is a COCO ground truth, a results list and what pycocotools 2.0.11 makes of them:
`stats` (the 12 summary figures), `lines` (what summarize() prints) and `perCategory` (AP, AP50,
AP75 of each category: the mean of precision[t, :, k, area all, maxDets 100] over entries > -1,
as detectron2 reports it). The cases cover score ties (within and across images), duplicate
detections, crowd boxes, detections on images without ground truth, more than 100 detections on
one image, IoU exactly at a threshold (0.5 and 0.75), empty categories (no GT and no
detections; detections but no GT), annotation areas that differ from the box area, and seeded
random scenes over several categories and every size bucket.

usage: python3 scripts/golden/pycocotools_cases.py   (from the repository root; needs
pycocotools==2.0.11 and numpy: pip install -r scripts/peers/requirements.txt)
"""
import contextlib
import io
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers"))
from pycocotools_eval import evaluate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "ts", "test", "golden", "coco-eval.json")


def gt_file(images, anns, cats):
    out = []
    for i, a in enumerate(anns):
        a = dict(a)
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        out.append(a)
    return {
        "images": [{"id": i, "width": 640, "height": 640, "file_name": f"{i}.png"} for i in images],
        "annotations": out,
        "categories": [{"id": c, "name": f"c{c}"} for c in cats],
    }


def det(img, box, score, cat=1):
    return {"image_id": img, "category_id": cat, "bbox": box, "score": score}


def cases():
    yield "ties and duplicates", gt_file(
        [1, 2, 3],
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 30]},
            {"image_id": 2, "category_id": 1, "bbox": [20, 30, 60, 60]},
            {"image_id": 3, "category_id": 1, "bbox": [5, 5, 20, 20]},
        ],
        [1],
    ), [
        det(1, [10, 10, 40, 40], 0.9),
        det(1, [10, 10, 40, 40], 0.9),  # duplicate, same score
        det(1, [12, 8, 40, 44], 0.9),
        det(2, [200, 200, 30, 30], 0.9),  # tie across images: a false positive
        det(2, [22, 30, 58, 61], 0.8),
        det(3, [5, 5, 20, 20], 0.8),
        det(3, [6, 6, 20, 20], 0.8),
        det(1, [101, 99, 50, 31], 0.5),
        det(1, [101, 99, 50, 31], 0.5),
    ]

    yield "IoU exactly at 0.5 and 0.75", gt_file(
        [1, 2, 3, 4],
        [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 4, "category_id": 1, "bbox": [0, 0, 40, 40]},
        ],
        [1],
    ), [
        det(1, [0, 0, 10, 5], 0.9),  # IoU 50/100 = 0.5
        det(2, [0, 0, 10, 7.5], 0.8),  # IoU 0.75
        det(3, [0, 0, 10, 20], 0.7),  # IoU 100/200 = 0.5 through the union
        det(4, [0, 0, 40, 32], 0.6),  # IoU 0.8
        det(4, [0, 0, 40, 30], 0.6),  # 0.75, after the 0.8 one took the GT
    ]

    yield "crowd boxes", gt_file(
        [1, 2],
        [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 200, 200], "iscrowd": 1},
            {"image_id": 1, "category_id": 1, "bbox": [300, 300, 40, 40]},
            {"image_id": 2, "category_id": 1, "bbox": [50, 50, 40, 40]},
            {"image_id": 2, "category_id": 1, "bbox": [40, 40, 80, 80], "iscrowd": 1},
        ],
        [1],
    ), [
        det(1, [10, 10, 30, 30], 0.95),  # inside the crowd region: ignored
        det(1, [20, 20, 30, 30], 0.9),  # a crowd GT matches many
        det(1, [300, 300, 40, 40], 0.85),
        det(1, [150, 150, 100, 100], 0.8),  # half inside the crowd box
        det(2, [50, 50, 40, 40], 0.7),  # real GT preferred over the crowd box
        det(2, [52, 52, 40, 40], 0.7),  # then the crowd box takes the duplicate
        det(2, [400, 400, 20, 20], 0.3),
    ]

    yield "detections on images without GT", gt_file(
        [1, 2, 3, 4],
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},
            {"image_id": 3, "category_id": 1, "bbox": [60, 60, 30, 30]},
        ],
        [1],
    ), [
        det(2, [10, 10, 30, 30], 0.99),
        det(4, [10, 10, 30, 30], 0.6),
        det(1, [11, 10, 30, 30], 0.7),
        det(3, [60, 62, 30, 28], 0.4),
        det(2, [0, 0, 5, 5], 0.1),
    ]

    rng = np.random.default_rng(13)
    anns = [{"image_id": 1, "category_id": 1, "bbox": [float(x), float(y), 30.0, 30.0]}
            for x, y in rng.integers(0, 600, size=(20, 2))]
    dets = []
    for a in anns[:15]:
        x, y, w, h = a["bbox"]
        dets.append(det(1, [x + float(rng.normal()), y + float(rng.normal()), w, h], float(rng.uniform(0.2, 0.9))))
    for _ in range(120):  # more than 100 detections: the low-scored ones are cut
        x, y = rng.uniform(0, 600, size=2)
        dets.append(det(1, [float(x), float(y), 30.0, 30.0], float(rng.uniform(0.0, 1.0))))
    for a in anns[15:]:  # true positives with the lowest scores: past the 100 cut
        dets.append(det(1, list(a["bbox"]), 0.001))
    yield "more than 100 detections on an image", gt_file([1, 2], anns, [1]), dets

    yield "empty categories", {
        **gt_file(
            [1, 2],
            [
                {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},
                {"image_id": 2, "category_id": 3, "bbox": [100, 100, 120, 120]},
            ],
            [1, 2, 3, 4],
        )
    }, [
        det(1, [10, 10, 30, 31], 0.9, 1),
        det(1, [10, 10, 30, 31], 0.8, 2),  # category 2 has no GT: left out (-1)
        det(2, [100, 100, 110, 120], 0.7, 3),
        det(2, [10, 10, 10, 10], 0.7, 5),  # category 5 is not in the GT file: dropped
    ]

    yield "annotation area differs from the box area", gt_file(
        [1, 2],
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 900.0},  # small by area, medium by box
            {"image_id": 2, "category_id": 1, "bbox": [10, 10, 100, 100], "area": 5000.0},
        ],
        [1],
    ), [det(1, [10, 10, 40, 40], 0.9), det(2, [10, 10, 100, 95], 0.8), det(2, [300, 300, 20, 20], 0.7)]

    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        n_img, cats = 12, [1, 2, 3]
        anns, dets = [], []
        for img in range(1, n_img + 1):
            for _ in range(int(rng.integers(0, 6))):
                cat = int(rng.choice(cats))
                s = float(rng.choice([12, 25, 50, 80, 150, 300]) * rng.uniform(0.7, 1.3))
                w, h = s * float(rng.uniform(0.6, 1.4)), s * float(rng.uniform(0.6, 1.4))
                x, y = float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 640 - h))
                crowd = int(rng.uniform() < 0.08)
                anns.append({"image_id": img, "category_id": cat, "bbox": [x, y, w, h], "iscrowd": crowd})
                for _ in range(int(rng.integers(0, 4))):
                    j = rng.normal(0, 0.15 * s, size=4)
                    score = float(np.round(rng.uniform(), 2))  # rounded: many ties
                    dets.append(det(img, [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])], score, cat))
            for _ in range(int(rng.integers(0, 5))):
                dets.append(det(img, [float(v) for v in rng.uniform(0, 500, size=2)] + [40.0, 30.0],
                                float(np.round(rng.uniform(), 2)), int(rng.choice(cats))))
        yield f"random scene {seed}", gt_file(list(range(1, n_img + 1)), anns, cats), dets


def main():
    import pycocotools

    out = []
    for name, gt, dt in cases():
        with contextlib.redirect_stdout(io.StringIO()):
            r = evaluate(gt, dt)
        out.append({"name": name, "gt": gt, "dt": dt, **r})
    with open(OUT, "w") as f:
        json.dump({"generator": "scripts/golden/pycocotools_cases.py",
                   "pycocotools": pycocotools.__version__ if hasattr(pycocotools, "__version__") else "2.0.11",
                   "numpy": np.__version__, "cases": out}, f)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)}: {len(out)} cases")


if __name__ == "__main__":
    main()
