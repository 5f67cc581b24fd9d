#!/usr/bin/env python3
"""Golden fixture for the segmentation ViT + U-Net adapter head (fine-tuning), computed by PyTorch
in float64.

The reference model below is written from the spec (METHOD.md §9 and the module docs of
crates/core/src/nn/segmentation.rs), not copied from the CheXWorld or VasoMIM code. The encoder
blocks, the closed-form weights (`synthetic`) and the sin-cos table come from torch_mae.py, which
crates/core/tests/golden_torch.rs reproduces bit for bit; crates/core/tests/golden_segvit.rs sets
the same weights, so the fixture need not store them.

Writes crates/core/tests/golden/segvit_micro.npz (float32 arrays):
  x, y             input (2 × 1 × 32 × 32) and binary target
  logits           train-mode logits (BatchNorm batch statistics, no drop-path)
  loss, dice, bce  soft Dice (per image, smoothing 1, batch mean) + BCE-with-logits (mean)
  grad.<param>     every parameter gradient of that loss (the unused final `norm` has none)

usage: /usr/bin/python3 scripts/golden/torch_segvit.py   (Debian's python3-torch, CPU, 1.13)
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from torch_mae import Block, sincos_2d, synthetic  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "core", "tests", "golden")
# img, patch, channels, embed, depth, heads; head widths (512, 256, 128, 64, 32) / 32, at least 4.
IMG, PATCH, CH, D, DEPTH, HEADS, B = 32, 16, 1, 16, 2, 2, 2
WIDTHS = [max(4, round(w / 32)) for w in (512, 256, 128, 64, 32)]


class ConvBnAct(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = ConvBnAct(cin, cout, 3)
        self.conv2 = ConvBnAct(cout, cout, 3)
        self.res = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + self.res(x)


class Head(nn.Module):
    def __init__(self, d, cin, w, classes):
        super().__init__()
        self.branch4 = ConvBnAct(d, w[0], 1)
        # branch3: 1 (×2, conv) step at w1, branch2: 2 at w2, branch1: 3 at w3.
        for steps in (1, 2, 3):
            out = w[steps]
            setattr(self, f"branch{4 - steps}",
                    nn.ModuleList([ConvBnAct(d if s == 0 else out, out, 3) for s in range(steps)]))
        self.stem = ConvBnAct(cin, w[4], 3)
        self.decoder = nn.ModuleList([DecoderBlock(w[i] + w[i + 1], w[i + 1]) for i in range(4)])
        self.classifier = nn.Conv2d(w[4], classes, 1)


class SegViT(nn.Module):
    """The model at any size; the defaults are the fixture's (scripts/peers/torch_segvit_step.py
    builds it at a preset's size for the fine-tuning benchmark)."""

    def __init__(self, img=IMG, patch=PATCH, ch=CH, d=D, depth=DEPTH, heads=HEADS, widths=WIDTHS, classes=1):
        super().__init__()
        self.g, self.d = img // patch, d
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(ch, d, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", torch.from_numpy(sincos_2d(d, self.g)))
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)  # kept for timm, unused by the head
        self.head = Head(d, ch, widths, classes)

    def forward(self, imgs):
        b, g = imgs.shape[0], self.g
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        t = x[:, 1:].transpose(1, 2).reshape(b, self.d, g, g)
        up = lambda y: F.interpolate(y, scale_factor=2, mode="nearest")
        h = self.head
        skips = []
        for br in (h.branch3, h.branch2, h.branch1):
            y = t
            for c in br:
                y = c(up(y))
            skips.append(y)
        skips.append(h.stem(imgs))
        d = h.branch4(t)
        for blk, skip in zip(h.decoder, skips):
            d = blk(torch.cat([up(d), skip], 1))
        return h.classifier(d)


def seg_loss(logits, y):
    bce = F.binary_cross_entropy_with_logits(logits, y)
    p = torch.sigmoid(logits).reshape(logits.shape[0], -1)
    t = y.reshape(y.shape[0], -1)
    dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
    return dice + bce, dice, bce


def main():
    torch.set_num_threads(2)
    model = SegViT().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(synthetic(name, tuple(p.shape))).double())
    ii, jj = np.meshgrid(np.arange(IMG), np.arange(IMG), indexing="ij")
    x = np.zeros((B, CH, IMG, IMG), np.float32)
    y = np.zeros((B, 1, IMG, IMG), np.float32)
    for b in range(B):
        band = np.abs(np.sin(0.2 * ii + 0.13 * jj * (b + 1)) + 0.3 * np.cos(0.27 * jj)) < 0.35
        y[b, 0] = band
        x[b, 0] = 1.5 * band - 0.5 + 0.3 * np.sin(0.37 * (ii * IMG + jj) + b)
    model.train()
    logits = model(torch.from_numpy(x).double())
    loss, dice, bce = seg_loss(logits, torch.from_numpy(y).double())
    loss.backward()
    out = {"x": x, "y": y, "logits": logits.detach().float().numpy(), "loss": np.float32(loss.item()),
           "dice": np.float32(dice.item()), "bce": np.float32(bce.item())}
    n = 0
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[f"grad.{name}"] = p.grad.float().numpy()
            n += 1
    np.savez(os.path.join(OUT, "segvit_micro.npz"), **out)
    print(f"loss {loss.item():.6f} dice {dice.item():.6f} bce {bce.item():.6f}; {n} gradients; widths {WIDTHS}")


if __name__ == "__main__":
    main()
