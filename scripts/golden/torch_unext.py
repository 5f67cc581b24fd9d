#!/usr/bin/env python3
"""Golden fixtures for the candle UNeXt-S segmentor, computed by PyTorch in float64.

The reference model below is an independent re-implementation from the spec (METHOD.md §4 as
summarised in docs/MODEL.md, "Segmentor (UNeXt-S)"): the authors' code is not used. Weights are a
closed-form hash of the parameter name and element index (`synthetic`, SplitMix64 in counter
mode), which crates/core/tests/golden_unext.rs reproduces bit for bit, so the fixture need not
store them; the input and target are stored.

Writes crates/core/tests/golden/:
  unext_s64.npz  batch 2 × 3 × 64 × 64, float32 arrays:
      x, y                       input and binary target
      logits_train               train-mode logits (batch statistics)
      loss, bce, dice            0.5·BCE-with-logits + 0.5·(1 − dice), batch-global soft Dice
      grad.<param>               every parameter gradient of that loss
      x_grad_train               its input gradient
      <bn>.running_mean / _var   running stats after that one train-mode forward
      logits_eval                eval-mode logits (initial weights, those running stats)
      x_grad_eval                input gradient of the same loss in eval mode
      loss_step2                 loss of a second train-mode forward after one Adam step
      adam2.<param>              weights after two Adam steps (lr 1e-3, β (0.9, 0.999), ε 1e-8);
                                 tensors over 4096 elements keep their first 4096 (size limit)
  unext_s64_state.pth  the model's state dict after the first forward, under a `seg_model.`
      prefix, float16 (small), plus one unrelated key `mask_token`: the .pth import test.

usage: /usr/bin/python3 scripts/golden/torch_unext.py   (Debian's python3-torch, CPU, 1.13)
"""
import os
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "core", "tests", "golden")
B, C, S = 2, 3, 64
ADAM = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
KEEP = 4096
M64 = (1 << 64) - 1


def fnv1a(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def uniform01(seed, n):
    """SplitMix64 outputs for counters 1..n from `seed`, as doubles in [0, 1)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def synthetic(name, shape):
    """Conv/Linear weights U(±1/sqrt(fan_in)); 1-D weights 1 + U(±0.1); biases U(±0.1)."""
    n = int(np.prod(shape))
    u = 2.0 * uniform01(fnv1a(name), n) - 1.0
    if len(shape) >= 2:
        v = u / np.sqrt(n // shape[0])
    elif name.endswith(".weight"):
        v = 1.0 + 0.1 * u
    else:
        v = 0.1 * u
    return v.astype(np.float32).reshape(shape)


# ------------------------------------------------------------------ model (from the spec)

def shift(x, dim):
    """Zero-pad 2, torch.chunk into 5 along channels, roll chunk k by k-2 along `dim`, crop."""
    _, _, h, w = x.shape
    xp = F.pad(x, (2, 2, 2, 2))
    parts = torch.chunk(xp, 5, dim=1)
    rolled = [torch.roll(p, k - 2, dims=dim) for k, p in enumerate(parts)]
    return torch.cat(rolled, 1)[:, :, 2:2 + h, 2:2 + w]


class DW(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=True)


class ShiftMLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Linear(c, c)
        self.dwconv = DW(c)
        self.fc2 = nn.Linear(c, c)

    def forward(self, t, h, w):
        b, n, c = t.shape
        g = lambda t: t.transpose(1, 2).reshape(b, c, h, w)
        tok = lambda x: x.flatten(2).transpose(1, 2)
        t = tok(shift(g(t), 2))
        t = self.fc1(t)
        t = tok(F.gelu(self.dwconv.dwconv(g(t))))
        t = tok(shift(g(t), 3))
        return self.fc2(t)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm2 = nn.LayerNorm(c)
        self.mlp = ShiftMLP(c)

    def forward(self, t, h, w):
        return t + self.mlp(self.norm2(t), h, w)


class PatchEmbed(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.proj = nn.Conv2d(i, o, 3, 2, 1)
        self.norm = nn.LayerNorm(o)

    def forward(self, x):
        y = self.proj(x)
        _, _, h, w = y.shape
        return self.norm(y.flatten(2).transpose(1, 2)), h, w


class UNeXtS(nn.Module):
    def __init__(self, cin=3):
        super().__init__()
        self.encoder1 = nn.Conv2d(cin, 8, 3, 1, 1)
        self.encoder2 = nn.Conv2d(8, 16, 3, 1, 1)
        self.encoder3 = nn.Conv2d(16, 32, 3, 1, 1)
        self.ebn1, self.ebn2, self.ebn3 = nn.BatchNorm2d(8), nn.BatchNorm2d(16), nn.BatchNorm2d(32)
        self.norm3, self.norm4 = nn.LayerNorm(64), nn.LayerNorm(128)
        self.dnorm3, self.dnorm4 = nn.LayerNorm(64), nn.LayerNorm(32)
        self.block1 = nn.ModuleList([Block(64)])
        self.block2 = nn.ModuleList([Block(128)])
        self.dblock1 = nn.ModuleList([Block(64)])
        self.dblock2 = nn.ModuleList([Block(32)])
        self.patch_embed3 = PatchEmbed(32, 64)
        self.patch_embed4 = PatchEmbed(64, 128)
        self.decoder1 = nn.Conv2d(128, 64, 3, 1, 1)
        self.decoder2 = nn.Conv2d(64, 32, 3, 1, 1)
        self.decoder3 = nn.Conv2d(32, 16, 3, 1, 1)
        self.decoder4 = nn.Conv2d(16, 8, 3, 1, 1)
        self.decoder5 = nn.Conv2d(8, 8, 3, 1, 1)
        self.dbn1, self.dbn2 = nn.BatchNorm2d(64), nn.BatchNorm2d(32)
        self.dbn3, self.dbn4 = nn.BatchNorm2d(16), nn.BatchNorm2d(8)
        self.final = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        b = x.shape[0]
        grid = lambda t, h, w: t.transpose(1, 2).reshape(b, -1, h, w)
        up = lambda y: F.relu(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))
        t1 = F.relu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2, 2))
        t2 = F.relu(F.max_pool2d(self.ebn2(self.encoder2(t1)), 2, 2))
        t3 = F.relu(F.max_pool2d(self.ebn3(self.encoder3(t2)), 2, 2))
        t, h, w = self.patch_embed3(t3)
        t = self.norm3(self.block1[0](t, h, w))
        t4 = grid(t, h, w)
        t, h, w = self.patch_embed4(t4)
        out = grid(self.norm4(self.block2[0](t, h, w)), h, w)
        out = up(self.dbn1(self.decoder1(out))) + t4
        _, _, h, w = out.shape
        out = grid(self.dnorm3(self.dblock1[0](out.flatten(2).transpose(1, 2), h, w)), h, w)
        out = up(self.dbn2(self.decoder2(out))) + t3
        _, _, h, w = out.shape
        out = grid(self.dnorm4(self.dblock2[0](out.flatten(2).transpose(1, 2), h, w)), h, w)
        out = up(self.dbn3(self.decoder3(out))) + t2
        out = up(self.dbn4(self.decoder4(out))) + t1
        out = up(self.decoder5(out))
        return self.final(out)


def seg_loss(logits, y):
    bce = F.binary_cross_entropy_with_logits(logits, y)
    p = torch.sigmoid(logits)
    dice = (2 * (p * y).sum() + 1e-5) / (p.sum() + y.sum() + 1e-5)
    return 0.5 * bce + 0.5 * (1 - dice), bce, dice


def main():
    model = UNeXtS(C).double()
    sd = model.state_dict()
    assert len(sd) == 101, len(sd)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(synthetic(name, tuple(p.shape))).double())
    params = dict(model.named_parameters())
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]

    # Input: smooth structure plus hash noise; target: thin "vessel" bands.
    ii, jj = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    x = np.zeros((B, C, S, S), np.float32)
    y = np.zeros((B, 1, S, S), np.float32)
    noise = (2 * uniform01(fnv1a("input"), B * C * S * S) - 1).reshape(B, C, S, S)
    for b in range(B):
        band = np.abs(np.sin(0.15 * ii + 0.1 * jj * (b + 1)) + 0.3 * np.cos(0.21 * jj)) < 0.35
        y[b, 0] = band
        for c in range(C):
            x[b, c] = 1.2 * band - 0.4 + 0.5 * noise[b, c] + 0.1 * c
    out = {"x": x, "y": y}
    xt = torch.from_numpy(x).double().requires_grad_(True)
    yt = torch.from_numpy(y).double()

    # 1) train-mode forward/backward.
    model.train()
    logits = model(xt)
    loss, bce, dice = seg_loss(logits, yt)
    loss.backward()
    out["logits_train"] = logits.detach().float().numpy()
    out["loss"] = np.float32(loss.item())
    out["bce"] = np.float32(bce.item())
    out["dice"] = np.float32(dice.item())
    out["x_grad_train"] = xt.grad.float().numpy()
    for n, p in params.items():
        out[f"grad.{n}"] = p.grad.float().numpy()
    for n in bns:
        m = dict(model.named_modules())[n]
        out[f"{n}.running_mean"] = m.running_mean.float().numpy()
        out[f"{n}.running_var"] = m.running_var.float().numpy()
        assert m.num_batches_tracked.item() == 1

    state = {"seg_model." + k: (v.half() if v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 1, 8, dtype=torch.float16)
    torch.save(state, os.path.join(OUT, "unext_s64_state.pth"))

    # 2) eval mode: initial weights, the running stats just updated; gradient to the input.
    grads1 = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad()
    model.eval()
    xe = torch.from_numpy(x).double().requires_grad_(True)
    le = model(xe)
    seg_loss(le, yt)[0].backward()
    out["logits_eval"] = le.detach().float().numpy()
    out["x_grad_eval"] = xe.grad.float().numpy()

    # 3) two Adam steps (the second after another train-mode forward).
    model.train()
    opt = torch.optim.Adam(model.parameters(), **ADAM)
    for n, p in params.items():
        p.grad = grads1[n]
    opt.step()
    opt.zero_grad()
    l2 = seg_loss(model(torch.from_numpy(x).double()), yt)[0]
    l2.backward()
    opt.step()
    out["loss_step2"] = np.float32(l2.item())
    for n, p in params.items():
        out[f"adam2.{n}"] = p.detach().float().numpy().reshape(-1)[:KEEP]

    np.savez(os.path.join(OUT, "unext_s64.npz"), **out)
    print(f"loss {loss.item():.6f} bce {bce.item():.6f} dice {dice.item():.6f} "
          f"loss_step2 {l2.item():.6f}; {len(params)} parameters, {len(bns)} BatchNorms")


if __name__ == "__main__":
    main()
