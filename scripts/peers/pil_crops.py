#!/usr/bin/env python3
"""Peer of the loader's augmentation for ts/test/parity-pil.test.ts: for each job
{"path", "top", "left", "h", "w", "flip", "size"} in a JSON list, Pillow's
crop -> resize(BICUBIC) [-> FLIP_LEFT_RIGHT] of the 8-bit grey image, as torchvision's
RandomResizedCrop + RandomHorizontalFlip do on PIL images. Writes the size*size u8 results
back to back to <out.bin> and prints Pillow's version.

usage: python3 scripts/peers/pil_crops.py jobs.json out.bin
"""
import json
import sys

import PIL
from PIL import Image


def main():
    jobs = json.load(open(sys.argv[1]))
    with open(sys.argv[2], "wb") as out:
        for j in jobs:
            img = Image.open(j["path"]).convert("L")
            r = img.crop((j["left"], j["top"], j["left"] + j["w"], j["top"] + j["h"])).resize(
                (j["size"], j["size"]), Image.BICUBIC)
            if j["flip"]:
                r = r.transpose(Image.FLIP_LEFT_RIGHT)
            out.write(r.tobytes())
    print(PIL.__version__)


if __name__ == "__main__":
    main()
