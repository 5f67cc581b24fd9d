#!/usr/bin/env python3
"""Golden fixtures for the candle MAE: loss, gradients and AdamW steps computed by PyTorch.

The reference model below is written from the project's spec (METHOD.md §6–§8 as summarised in
docs/MODEL.md), not copied from facebookresearch/mae or timm. Weights and images are a closed-form
function of the parameter name and index (`synthetic`), which crates/core/tests/golden_torch.rs
reproduces bit for bit, so the fixtures need not store the weights.

Writes crates/core/tests/golden/{mae_micro.npz, mae_micro_state.pth, mae_tiny.npz, manifest.json}:
  micro (img 32, patch 8, 3 channels, embed 32/2 blocks/2 heads, decoder 32/1/2, batch 2, mask 0.75):
      loss, every parameter gradient, every parameter after 5 AdamW training steps, and after 5
      AdamW steps on closed-form gradients (`synthetic_grad`);
  tiny (224², patch 16, 3 channels, batch 2, mask 0.75): loss, per-tensor gradient L2 norm and sum,
      and 32 sampled gradient entries per tensor (the full gradients are ~22 MB).

usage: /usr/bin/python3 scripts/golden/torch_mae.py   (Debian's python3-torch, CPU, 1.13)
"""
import json, math, os, sys
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "core", "tests", "golden")

CONFIGS = {
    # img, patch, chans, embed, depth, heads, dec embed, dec depth, dec heads
    "micro": dict(img=32, patch=8, chans=3, embed=32, depth=2, heads=2, dembed=32, ddepth=1, dheads=2),
    "tiny": dict(img=224, patch=16, chans=3, embed=192, depth=12, heads=3, dembed=128, ddepth=4, dheads=4),
}
BATCH, MASK_RATIO = 2, 0.75
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
STEPS = 5
SAMPLES = 32


def name_phase(name):
    h = 0
    for b in name.encode():
        h = (h * 31 + b) % 1_000_003
    return h * 1e-3


def synthetic(name, shape):
    """Closed-form weights with MAE-like scales (see module docstring)."""
    n = int(np.prod(shape))
    s = np.sin(0.7 * np.arange(n, dtype=np.float64) + name_phase(name))
    if name in ("cls_token", "mask_token"):
        v = 0.02 * s
    elif len(shape) >= 2:
        fan_out, fan_in = shape[0], n // shape[0]
        v = math.sqrt(6.0 / (fan_in + fan_out)) * s
    elif name.endswith(".weight"):
        v = 1.0 + 0.1 * s
    else:
        v = 0.02 * s
    return v.astype(np.float32).reshape(shape)


def synthetic_grad(name, shape, step):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    return (1e-2 * np.sin(1.3 * i + name_phase(name) + 0.9 * step)).astype(np.float32).reshape(shape)


def synthetic_images(b, c, h, w):
    i = np.arange(b * c * h * w, dtype=np.float64)
    return (np.sin(0.37 * i + 0.5) + 0.3 * np.cos(0.011 * i)).astype(np.float32).reshape(b, c, h, w)


def sincos_2d(dim, grid):
    def emb_1d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    r, c = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    emb = np.concatenate([emb_1d(dim // 2, c.reshape(-1)), emb_1d(dim // 2, r.reshape(-1))], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)[None].astype(np.float32)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d)
        self.attn.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, 4 * d)
        self.mlp.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.heads
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-2, -1) * hd ** -0.5, dim=-1)
        x = x + self.attn.proj((a @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class MAE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        p, ch, d, dd = c["patch"], c["chans"], c["embed"], c["dembed"]
        g = c["img"] // p
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(ch, d, p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", torch.from_numpy(sincos_2d(d, g)))
        self.blocks = nn.ModuleList([Block(d, c["heads"]) for _ in range(c["depth"])])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", torch.from_numpy(sincos_2d(dd, g)))
        self.decoder_blocks = nn.ModuleList([Block(dd, c["dheads"]) for _ in range(c["ddepth"])])
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, p * p * ch)

    def patchify(self, imgs):
        p = self.c["patch"]
        b, ch, h, w = imgs.shape
        x = imgs.reshape(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * ch)

    def forward(self, imgs, ids_keep, ids_restore, mask):
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        b, n, dd = x.shape
        L = ids_restore.shape[1]
        y = torch.cat([x[:, 1:], self.mask_token.expand(b, L + 1 - n, dd)], 1)
        y = torch.gather(y, 1, ids_restore[..., None].expand(-1, -1, dd))
        y = torch.cat([x[:, :1], y], 1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            y = blk(y)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]
        t = self.patchify(imgs)
        mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True, unbiased=True)
        t = (t - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - t) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()


def masking(b, L, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    keep = int(L * (1 - ratio))
    ids_keep, ids_restore, mask = [], [], []
    for _ in range(b):
        kept = torch.randperm(L, generator=g)[:keep].sort().values
        is_kept = torch.zeros(L, dtype=torch.bool)
        is_kept[kept] = True
        shuffle = torch.cat([kept, torch.arange(L)[~is_kept]])
        ids_keep.append(kept)
        ids_restore.append(torch.argsort(shuffle))
        mask.append((~is_kept).float())
    return torch.stack(ids_keep), torch.stack(ids_restore), torch.stack(mask)


def build(name):
    c = CONFIGS[name]
    torch.manual_seed(0)
    m = MAE(c)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.from_numpy(synthetic(n, tuple(p.shape))))
    imgs = torch.from_numpy(synthetic_images(BATCH, c["chans"], c["img"], c["img"]))
    L = (c["img"] // c["patch"]) ** 2
    ids_keep, ids_restore, mask = masking(BATCH, L, MASK_RATIO, seed=1234)
    return m, imgs, ids_keep, ids_restore, mask


def param_groups(m):
    decay, no_decay = [], []
    for n, p in m.named_parameters():
        (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": ADAMW["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]


def sample_indices(k, n):
    return np.array(sorted({(j * 7919 + k * 104729) % n for j in range(SAMPLES)}), dtype=np.int64)


def run(name):
    m, imgs, ids_keep, ids_restore, mask = build(name)
    if name == "micro":
        # An MAE-style checkpoint ({"model": state_dict, "epoch": ...}) for the .pth loader.
        torch.save({"model": m.state_dict(), "epoch": 3}, os.path.join(OUT, "mae_micro_state.pth"))
    loss = m(imgs, ids_keep, ids_restore, mask)
    loss.backward()
    arrays = {"ids_keep": ids_keep.numpy().astype(np.int64), "ids_restore": ids_restore.numpy().astype(np.int64),
              "mask": mask.numpy(), "loss": np.array([loss.item()], dtype=np.float32)}
    names = [n for n, _ in m.named_parameters()]
    for k, (n, p) in enumerate(m.named_parameters()):
        g = p.grad.detach().numpy().astype(np.float64)
        arrays[f"gnorm.{n}"] = np.array([np.sqrt((g ** 2).sum()), g.sum()], dtype=np.float32)
        if name == "micro":
            arrays[f"grad.{n}"] = p.grad.numpy().copy()
        else:
            idx = sample_indices(k, g.size)
            arrays[f"gidx.{n}"] = idx
            arrays[f"gval.{n}"] = g.reshape(-1)[idx].astype(np.float32)
    if name == "micro":
        opt = torch.optim.AdamW(param_groups(m), lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            l = m(imgs, ids_keep, ids_restore, mask)
            l.backward()
            opt.step()
            losses.append(l.item())
        arrays["adamw_losses"] = np.array(losses, dtype=np.float32)
        for n, p in m.named_parameters():
            arrays[f"after.{n}"] = p.detach().numpy().copy()
        # The optimizer alone, on closed-form gradients: free of the float noise that Adam's
        # normalisation amplifies for near-zero gradient entries in the end-to-end run above.
        m2, *_ = build(name)
        opt = torch.optim.AdamW(param_groups(m2), lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
        for s in range(STEPS):
            for n, p in m2.named_parameters():
                p.grad = torch.from_numpy(synthetic_grad(n, tuple(p.shape), s))
            opt.step()
        for n, p in m2.named_parameters():
            arrays[f"adamw_only.{n}"] = p.detach().numpy().copy()
    np.savez(os.path.join(OUT, f"mae_{name}.npz"), **arrays)
    return {"config": CONFIGS[name], "batch": BATCH, "mask_ratio": MASK_RATIO, "loss": loss.item(),
            "params": names, "adamw": {**ADAMW, "steps": STEPS} if name == "micro" else None}


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {"generator": "scripts/golden/torch_mae.py", "torch": torch.__version__, "numpy": np.__version__,
                "python": sys.version.split()[0], "fixtures": {}}
    for name in CONFIGS:
        manifest["fixtures"][f"mae_{name}.npz"] = run(name)
        print(name, manifest["fixtures"][f"mae_{name}.npz"]["loss"])
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
