#!/usr/bin/env python3
"""Live parity check: a `vasomim export --format timm` file in timm, against `vasomim embed`.

Loads the exported encoder into timm.create_model(<arch>, num_classes=0) with strict=True (so a
missing or unexpected key fails), preprocesses the images independently of vasomim (PIL bicubic
resize of the float grey image, /255, replicated to 3 channels, ImageNet mean/std), runs timm's
forward_features and compares [cls, mean of patch tokens] with the features .npy written by
`vasomim embed`.

usage: timm_parity.py <arch> <export.safetensors> <features.npy> <image...>
prints one JSON line: {"arch", "missing", "unexpected", "max_abs_diff", "max_abs_feature", "shape"}
Needs torch, timm, safetensors, numpy, pillow (see docs/MODEL.md for an install that fits CPU CI).
"""
import json, sys
import numpy as np
import torch, timm
from PIL import Image
from safetensors.torch import load_file

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def preprocess(path, size):
    im = Image.open(path)
    grey = np.asarray(im.convert("L"), dtype=np.float32) if im.mode not in ("I;16", "I") else np.asarray(im, dtype=np.float32) / 257.0
    if grey.shape != (size, size):
        grey = np.asarray(Image.fromarray(grey, mode="F").resize((size, size), Image.BICUBIC), dtype=np.float32)
    x = grey / 255.0
    return np.stack([(x - MEAN[c]) / STD[c] for c in range(3)]).astype(np.float32)


def main():
    arch, ckpt, feats, *images = sys.argv[1:]
    torch.set_num_threads(2)
    model = timm.create_model(arch, num_classes=0, pretrained=False)
    sd = load_file(ckpt)
    r = model.load_state_dict(sd, strict=False)
    model.load_state_dict(sd, strict=True)
    model.eval()
    size = model.patch_embed.img_size[0]
    x = torch.from_numpy(np.stack([preprocess(p, size) for p in images]))
    with torch.no_grad():
        t = model.forward_features(x)
    ref = torch.stack([t[:, 0], t[:, 1:].mean(1)], 1).numpy()
    ours = np.load(feats)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    print(json.dumps({"arch": arch, "missing": list(r.missing_keys), "unexpected": list(r.unexpected_keys),
                      "max_abs_diff": float(np.abs(ours - ref).max()), "max_abs_feature": float(np.abs(ref).max()),
                      "shape": list(ref.shape), "timm": timm.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
