#!/usr/bin/python3
"""The torchvision/PIL peer of `vasomim bench loader`: the reference VasoMIM pipeline.

Same work per sample as ours: decode the 512² PNG and its vessel map, one RandomResizedCrop
draw (scale 0.2-1, ratio 3/4-4/3) for both, bicubic for the image and nearest for the map
(PIL), horizontal flip p = 0.5, ToTensor, ImageNet Normalize, grey replicated to 3 channels.
The grey image is resized once and replicated afterwards (cheaper than the reference's
convert('RGB') before the resize, so the ratio we report is conservative). Batches from a
torch DataLoader with the same number of worker processes; one warm-up batch is not timed.
Prints one JSON line: {"peer": images/s, ...}.

usage: /usr/bin/python3 scripts/bench/loader_peer.py <folder with maps in <folder>_frangi> \
         [--workers 2] [--batches 20] [--batch-size 64] [--size 224]
"""
import argparse
import json
import os
import time

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Paired(Dataset):
    def __init__(self, pairs, size):
        self.pairs, self.size = pairs, size

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        ip, mp = self.pairs[i]
        img = Image.open(ip).convert("L")
        m = Image.open(mp).convert("L")
        top, left, h, w = T.RandomResizedCrop.get_params(img, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
        img = F.resized_crop(img, top, left, h, w, [self.size, self.size], InterpolationMode.BICUBIC)
        m = F.resized_crop(m, top, left, h, w, [self.size, self.size], InterpolationMode.NEAREST)
        if torch.rand(1) < 0.5:
            img, m = F.hflip(img), F.hflip(m)
        x = F.normalize(F.to_tensor(img).expand(3, -1, -1), MEAN, STD)
        return x, F.to_tensor(m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    root = a.root.rstrip("/")
    maps = root + "_frangi"
    files = sorted(f for f in os.listdir(root) if f.endswith(".png"))
    pairs = [(os.path.join(root, f), os.path.join(maps, f)) for f in files if os.path.exists(os.path.join(maps, f))]
    need = (a.batches + 1) * a.batch_size
    pairs = (pairs * (need // len(pairs) + 1))[:need]
    torch.manual_seed(0)
    dl = DataLoader(Paired(pairs, a.size), batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                    drop_last=True)
    it = iter(dl)
    next(it)  # warm-up: workers started, files in the page cache
    t0 = time.perf_counter()
    n = 0
    for _ in range(a.batches):
        x, y = next(it)
        n += x.shape[0]
    secs = time.perf_counter() - t0
    print(json.dumps({"peer": n / secs, "images": n, "seconds": secs, "workers": a.workers,
                      "batchSize": a.batch_size, "torch": torch.__version__,
                      "torchvision": torchvision.__version__, "pillow": Image.__version__}))


if __name__ == "__main__":
    main()
