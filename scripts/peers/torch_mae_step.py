#!/usr/bin/env python3
# Provenance: copied unchanged (apart from this header) from the project's shared reference
# material, bench/torch_mae_step.py (written for this project from the MAE paper's description;
# not the official MAE code). The PyTorch peer of scripts/bench/step.py.
"""Reference timing of one VasoMIM/MAE pre-training step in PyTorch (CPU or CUDA).

A peer baseline for the project's own step benchmark: same model shape, same batch,
same mask ratio, measured on the same machine in the same run.  It is written from the
MAE paper's description (ViT encoder on the kept patches, light decoder on all patches,
per-patch normalised MSE on the masked ones); it is not the official code.

usage: torch_mae_step.py [--preset tiny|small|base] [--batch N] [--img 224] [--patch 16]
                         [--mask 0.5] [--steps 10] [--warmup 2] [--device cpu|cuda] [--threads N]
prints one JSON line: {"preset":..,"batch":..,"ms_per_step":..,"img_per_s":..}
"""
import argparse, json, math, time
import torch, torch.nn as nn, torch.nn.functional as F

PRESETS = {  # encoder dim, depth, heads ; decoder dim, depth, heads
    "micro": (64, 2, 2, 64, 1, 2),
    "tiny": (192, 12, 3, 128, 4, 4),
    "small": (384, 12, 6, 256, 4, 8),
    "base": (768, 12, 12, 512, 8, 16),
}

class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.n1, s.n2, s.h = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6), h
        s.qkv, s.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        s.fc1, s.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
    def forward(s, x):
        B, N, D = x.shape
        q, k, v = s.qkv(s.n1(x)).reshape(B, N, 3, s.h, D // s.h).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * (D // s.h) ** -0.5
        x = x + s.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D))
        return x + s.fc2(F.gelu(s.fc1(s.n2(x))))

class MAE(nn.Module):
    def __init__(s, img, p, c, ed, edep, eh, dd, ddep, dh):
        super().__init__()
        s.p, s.c, s.L = p, c, (img // p) ** 2
        s.embed = nn.Linear(p * p * c, ed)
        s.cls = nn.Parameter(torch.zeros(1, 1, ed))
        s.pos = nn.Parameter(torch.randn(1, s.L + 1, ed) * .02, requires_grad=False)
        s.enc = nn.ModuleList([Block(ed, eh) for _ in range(edep)]); s.en = nn.LayerNorm(ed, eps=1e-6)
        s.dembed = nn.Linear(ed, dd); s.mtok = nn.Parameter(torch.zeros(1, 1, dd))
        s.dpos = nn.Parameter(torch.randn(1, s.L + 1, dd) * .02, requires_grad=False)
        s.dec = nn.ModuleList([Block(dd, dh) for _ in range(ddep)]); s.dn = nn.LayerNorm(dd, eps=1e-6)
        s.head = nn.Linear(dd, p * p * c)
    def patchify(s, x):
        B, C, H, W = x.shape; h, w = H // s.p, W // s.p
        return x.reshape(B, C, h, s.p, w, s.p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, s.p * s.p * C)
    def forward(s, imgs, ids_keep, ids_restore, mask):
        t = s.patchify(imgs); B = t.shape[0]
        x = s.embed(t) + s.pos[:, 1:]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([(s.cls + s.pos[:, :1]).expand(B, -1, -1), x], 1)
        for b in s.enc: x = b(x)
        x = s.dembed(s.en(x))
        m = s.mtok.expand(B, s.L + 1 - x.shape[1], -1)
        y = torch.cat([x[:, 1:], m], 1)
        y = torch.gather(y, 1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))
        y = torch.cat([x[:, :1], y], 1) + s.dpos
        for b in s.dec: y = b(y)
        pred = s.head(s.dn(y))[:, 1:]
        mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
        loss = ((pred - (t - mean) / (var + 1e-6) ** .5) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()

def main():
    a = argparse.ArgumentParser()
    a.add_argument("--preset", default="tiny", choices=PRESETS); a.add_argument("--batch", type=int, default=8)
    a.add_argument("--img", type=int, default=224); a.add_argument("--patch", type=int, default=16)
    a.add_argument("--chans", type=int, default=3); a.add_argument("--mask", type=float, default=0.5)
    a.add_argument("--steps", type=int, default=10); a.add_argument("--warmup", type=int, default=2)
    a.add_argument("--device", default="cpu"); a.add_argument("--threads", type=int, default=0)
    o = a.parse_args()
    if o.threads: torch.set_num_threads(o.threads)
    torch.manual_seed(0)
    m = MAE(o.img, o.patch, o.chans, *PRESETS[o.preset]).to(o.device)
    opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4, betas=(.9, .95), weight_decay=.05)
    L, B = m.L, o.batch; keep = int(L * (1 - o.mask))
    x = torch.randn(B, o.chans, o.img, o.img, device=o.device)
    def step():
        ids = torch.rand(B, L, device=o.device).argsort(1); restore = ids.argsort(1)
        mask = torch.ones(B, L, device=o.device); mask[:, :keep] = 0; mask = torch.gather(mask, 1, restore)
        loss = m(x, ids[:, :keep], restore, mask); opt.zero_grad(); loss.backward(); opt.step()
        return loss
    for _ in range(o.warmup): step()
    if o.device == "cuda": torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(o.steps): step()
    if o.device == "cuda": torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / o.steps
    print(json.dumps({"preset": o.preset, "batch": B, "img": o.img, "patch": o.patch, "mask": o.mask,
                      "threads": torch.get_num_threads(), "ms_per_step": round(dt * 1e3, 2),
                      "img_per_s": round(B / dt, 2), "torch": torch.__version__}))

if __name__ == "__main__":
    main()
