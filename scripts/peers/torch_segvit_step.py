#!/usr/bin/env python3
"""PyTorch peer of `bench_step --task finetune` (scripts/bench/step.py): one segmentation
fine-tuning step of the ViT encoder + U-Net adapter head, timed as torch_mae_step.py times MAE.

The model is `SegViT` of scripts/golden/torch_segvit.py (the golden fixture's model, written for
this project from METHOD.md §9 and crates/core/src/nn/segmentation.rs, not copied from CheXWorld or
VasoMIM) built at a preset's encoder size: patch embedding, position embedding, cls, timm-layout
blocks, tokens reshaped to a (D, g, g) grid, branches of (×2 nearest, 3×3 conv, BN, GELU), a 3×3
stem on the image, four decoder blocks [conv3×3, BN, GELU]×2 + 1×1 residual conv, a 1×1
classifier; head widths (512, 256, 128, 64, 32) × --head-scale. Train mode (BatchNorm batch
statistics), no drop-path, loss soft Dice (per image, smoothing 1) + BCE-with-logits, AdamW
(betas 0.9/0.999, weight decay 0.05), as `vasomim finetune`'s step.

usage: torch_segvit_step.py [--preset tiny] [--batch 8] [--img 224] [--chans 3] [--head-scale 0.25]
                            [--steps 10] [--warmup 2] [--threads N] [--device cpu]
prints one JSON line: {"task", "preset", "batch", "img", "head_scale", "threads", "ms_per_step",
                       "img_per_s", "torch"}
"""
import argparse, json, os, sys, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "golden")]
from torch_mae_step import PRESETS  # noqa: E402
from torch_segvit import SegViT, seg_loss  # noqa: E402  (the golden fixture's model and loss)


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--preset", default="tiny", choices=PRESETS)
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--img", type=int, default=224)
    a.add_argument("--chans", type=int, default=3)
    a.add_argument("--head-scale", type=float, default=0.25)
    a.add_argument("--steps", type=int, default=10)
    a.add_argument("--warmup", type=int, default=2)
    a.add_argument("--threads", type=int, default=0)
    a.add_argument("--device", default="cpu")
    o = a.parse_args()
    if o.threads:
        torch.set_num_threads(o.threads)
    torch.manual_seed(0)
    d, depth, heads = PRESETS[o.preset][:3]
    widths = [max(4, round(w * o.head_scale)) for w in (512, 256, 128, 64, 32)]
    m = SegViT(o.img, 16, o.chans, d, depth, heads, widths).to(o.device).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    x = torch.randn(o.batch, o.chans, o.img, o.img, device=o.device)
    y = (torch.rand(o.batch, 1, o.img, o.img, device=o.device) < 0.1).float()

    def step():
        loss = seg_loss(m(x), y)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(o.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(o.steps):
        step()
    dt = (time.perf_counter() - t0) / o.steps
    print(json.dumps({"task": "finetune", "preset": o.preset, "batch": o.batch, "img": o.img,
                      "head_scale": o.head_scale, "threads": torch.get_num_threads(),
                      "ms_per_step": round(dt * 1e3, 2), "img_per_s": round(o.batch / dt, 2),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
