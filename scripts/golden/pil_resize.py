#!/usr/bin/env python3
"""Golden crops + resizes from Pillow for crates/core/tests/transforms.rs.

torchvision's RandomResizedCrop on a PIL image is `img.crop((left, top, left + w, top + h))`
then `.resize((ow, oh), BICUBIC)` (NEAREST for the vessel map); this writes Pillow's result for
fixed crop boxes of real angiograms as PNG, the box in the file name:
  <filter>-<src>-<top>-<left>-<h>-<w>-<ow>-<oh>.png

usage: python3 scripts/golden/pil_resize.py [out_dir]   (needs Pillow)
The committed fixtures: resize/pillow-9.4 (Debian's /usr/bin/python3) and resize/pillow-13.0.
"""
import os
import sys

import PIL
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    ROOT, "crates", "core", "tests", "fixtures", "resize", "pillow-" + ".".join(PIL.__version__.split(".")[:2]))
SRC = {
    "xca1": "data/samples/fercer-xca80/Angios_40_training/1.png",
    "xca1gt": "data/samples/fercer-xca80/Angios_40_training/1_gt.png",
    "cadica": "data/samples/cadica-samples/p10_v7_00031.png",
    "danilov": "data/samples/danilov-stenosis-samples/14_002_5_0016.png",
    "arcade": "data/samples/arcade-samples/STEN_001_0000.png",
}
CASES = [
    ("bicubic", "xca1", 0, 0, 300, 300, 224, 224),
    ("bicubic", "xca1", 10, 37, 150, 113, 224, 224),
    ("bicubic", "xca1", 123, 7, 61, 250, 224, 224),
    ("bicubic", "xca1", 5, 5, 50, 40, 224, 224),
    ("bicubic", "cadica", 0, 0, 512, 512, 224, 224),
    ("bicubic", "cadica", 200, 300, 312, 212, 224, 224),
    ("bicubic", "danilov", 100, 50, 400, 300, 224, 224),
    ("bicubic", "arcade", 17, 99, 229, 261, 224, 224),
    ("bicubic", "arcade", 20, 30, 200, 180, 160, 96),
    ("bicubic", "danilov", 0, 0, 224, 224, 224, 224),
    ("nearest", "xca1gt", 0, 0, 300, 300, 224, 224),
    ("nearest", "xca1gt", 10, 37, 150, 113, 224, 224),
    ("nearest", "xca1gt", 123, 7, 61, 250, 224, 224),
    ("nearest", "xca1gt", 77, 150, 223, 150, 224, 224),
    ("nearest", "xca1gt", 3, 0, 297, 7, 33, 224),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    for filt, src, top, left, h, w, ow, oh in CASES:
        img = Image.open(os.path.join(ROOT, SRC[src])).convert("L")
        res = img.crop((left, top, left + w, top + h)).resize(
            (ow, oh), Image.BICUBIC if filt == "bicubic" else Image.NEAREST)
        res.save(os.path.join(OUT, f"{filt}-{src}-{top}-{left}-{h}-{w}-{ow}-{oh}.png"))
    print(f"wrote {len(CASES)} cases with Pillow {PIL.__version__} to {OUT}")


if __name__ == "__main__":
    main()
