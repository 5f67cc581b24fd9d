#!/usr/bin/python3
"""RandomResizedCrop parameter samples from torchvision, for the statistical test in
crates/core/tests/transforms.rs.

Draws `transforms.RandomResizedCrop.get_params(img, scale=(0.2, 1.0), ratio=(3/4, 4/3))` N
times for a few image sizes (torch.manual_seed(0)) and stores (top, left, h, w) as int16 .npy
of shape (N, 4), one file per size: rrc-<H>x<W>.npy.

usage: /usr/bin/python3 scripts/golden/torchvision_rrc.py [out_dir]   (needs torch, torchvision)
"""
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision import transforms

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "..", "crates", "core", "tests", "fixtures", "rrc")
N = 4000
SIZES = [(512, 512), (300, 300), (480, 640), (100, 400)]


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    for h, w in SIZES:
        img = torch.zeros(1, h, w)  # get_params only reads the size
        out = np.array([transforms.RandomResizedCrop.get_params(img, scale=[0.2, 1.0], ratio=[3 / 4, 4 / 3])
                        for _ in range(N)], dtype=np.int16)
        np.save(os.path.join(OUT, f"rrc-{h}x{w}.npy"), out)
    print(f"torch {torch.__version__} torchvision {torchvision.__version__}: {N} draws x {len(SIZES)} sizes to {OUT}")


if __name__ == "__main__":
    main()
