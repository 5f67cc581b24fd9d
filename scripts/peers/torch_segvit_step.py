#!/usr/bin/env python3
"""PyTorch peer of `bench_step --task finetune` (scripts/bench/step.py): one segmentation
fine-tuning step of the ViT encoder + U-Net adapter head, timed as torch_mae_step.py times MAE.

The model is the one of scripts/golden/torch_segvit.py (written for this project from METHOD.md §9
and crates/core/src/nn/segmentation.rs, not copied from CheXWorld or VasoMIM) at a preset's
encoder size: patch embedding, position embedding, cls, the encoder blocks of torch_mae_step.py
(timm layout), tokens reshaped to a (D, g, g) grid, branches of (×2 nearest, 3×3 conv, BN, GELU),
a 3×3 stem on the image, four decoder blocks [conv3×3, BN, GELU]×2 + 1×1 residual conv, a 1×1
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
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_mae_step import PRESETS, Block  # noqa: E402


class ConvBnAct(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, k, 1, k // 2), nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.conv2, self.res = ConvBnAct(cin, cout, 3), ConvBnAct(cout, cout, 3), nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + self.res(x)


class SegViT(nn.Module):
    def __init__(self, img, patch, chans, d, depth, heads, widths):
        super().__init__()
        self.g, self.d = img // patch, d
        self.proj = nn.Conv2d(chans, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos", torch.randn(1, self.g * self.g + 1, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(depth)])
        w = widths
        self.branch4 = ConvBnAct(d, w[0], 1)
        self.branches = nn.ModuleList(
            [nn.ModuleList([ConvBnAct(d if s == 0 else w[n], w[n], 3) for s in range(n)]) for n in (1, 2, 3)])
        self.stem = ConvBnAct(chans, w[4], 3)
        self.decoder = nn.ModuleList([DecoderBlock(w[i] + w[i + 1], w[i + 1]) for i in range(4)])
        self.classifier = nn.Conv2d(w[4], 1, 1)

    def forward(self, imgs):
        b = imgs.shape[0]
        x = self.proj(imgs).flatten(2).transpose(1, 2) + self.pos[:, 1:]
        x = torch.cat([(self.cls + self.pos[:, :1]).expand(b, -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        t = x[:, 1:].transpose(1, 2).reshape(b, self.d, self.g, self.g)
        up = lambda y: F.interpolate(y, scale_factor=2, mode="nearest")
        skips = []
        for br in self.branches:
            y = t
            for c in br:
                y = c(up(y))
            skips.append(y)
        skips.append(self.stem(imgs))
        d = self.branch4(t)
        for blk, skip in zip(self.decoder, skips):
            d = blk(torch.cat([up(d), skip], 1))
        return self.classifier(d)


def loss_fn(logits, y):
    p = torch.sigmoid(logits).reshape(logits.shape[0], -1)
    t = y.reshape(y.shape[0], -1)
    dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
    return dice + F.binary_cross_entropy_with_logits(logits, y)


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
        loss = loss_fn(m(x), y)
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
