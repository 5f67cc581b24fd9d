#!/usr/bin/env python3
"""PyTorch peer of `cuda_check bench` (scripts/cuda/device-check.sh): one MAE or VasoMIM
pre-training step on the GPU with AMP, timed the way the binary times ours.

The VasoMIM step is the MAE of scripts/peers/torch_mae_step.py plus the frozen UNeXt-S of
scripts/golden/torch_unext.py (eval mode, no parameter gradients): P = sigmoid(S(img)) without
gradient, the reconstruction de-normalised with each patch's mean and std and unpatchified, and
L = L_rec + w * BCE-with-logits(S(recon), P), gradients flowing through the frozen segmentor into
the MAE (METHOD.md §5, §7). AdamW (betas 0.9/0.95, weight decay 0.05) as the MAE recipe.

usage: torch_vasomim_step.py [--preset base] [--batch 256] [--mask 0.75] [--cons 0]
                             [--amp bf16|off] [--tf32] [--steps 10] [--warmup 3] [--device cuda]
prints one JSON line: {"peer", "bench", "preset", "batch", "mask", "amp", "ms_per_step",
                       "img_per_s", "peak_allocated_mib", "peak_reserved_mib"}
"""
import argparse, json, os, statistics, sys, time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "golden")]
from torch_mae_step import MAE, PRESETS  # noqa: E402
from torch_unext import UNeXtS  # noqa: E402


def mae_forward(m, imgs, ids_keep, ids_restore, mask):
    """MAE.forward that also returns the reconstruction image (norm-pix de-normalised)."""
    t = m.patchify(imgs)
    B = t.shape[0]
    x = m.embed(t) + m.pos[:, 1:]
    x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
    x = torch.cat([(m.cls + m.pos[:, :1]).expand(B, -1, -1), x], 1)
    for b in m.enc:
        x = b(x)
    x = m.dembed(m.en(x))
    mt = m.mtok.expand(B, m.L + 1 - x.shape[1], -1)
    y = torch.cat([x[:, 1:], mt], 1)
    y = torch.gather(y, 1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))
    y = torch.cat([x[:, :1], y], 1) + m.dpos
    for b in m.dec:
        y = b(y)
    pred = m.head(m.dn(y))[:, 1:].float()
    mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
    loss = ((pred - (t - mean) / (var + 1e-6) ** 0.5) ** 2).mean(-1)
    loss = (loss * mask).sum() / mask.sum()
    rec = pred * (var + 1e-6) ** 0.5 + mean
    C, H = imgs.shape[1], imgs.shape[2]
    h = H // m.p
    recon = rec.reshape(B, h, h, m.p, m.p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, H)
    return loss, recon


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--preset", default="base", choices=PRESETS)
    a.add_argument("--batch", type=int, default=256)
    a.add_argument("--img", type=int, default=224)
    a.add_argument("--mask", type=float, default=0.75)
    a.add_argument("--cons", type=float, default=0.0)
    a.add_argument("--amp", default="bf16", choices=["bf16", "off"])
    a.add_argument("--tf32", action="store_true")
    a.add_argument("--steps", type=int, default=10)
    a.add_argument("--warmup", type=int, default=3)
    a.add_argument("--device", default="cuda")
    o = a.parse_args()
    dev = o.device
    torch.backends.cuda.matmul.allow_tf32 = o.tf32
    torch.backends.cudnn.allow_tf32 = o.tf32
    torch.manual_seed(0)
    m = MAE(o.img, 16, 3, *PRESETS[o.preset]).to(dev)
    seg = UNeXtS(3).to(dev).eval()
    for p in seg.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                            weight_decay=0.05)
    L, B = m.L, o.batch
    keep = int(L * (1 - o.mask))
    x = torch.randn(B, 3, o.img, o.img, device=dev)
    amp = dict(device_type=dev.split(":")[0], dtype=torch.bfloat16, enabled=o.amp == "bf16")

    def step():
        ids = torch.rand(B, L, device=dev).argsort(1)
        restore = ids.argsort(1)
        mask = torch.ones(B, L, device=dev)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        with torch.autocast(**amp):
            if o.cons > 0:
                with torch.no_grad():
                    prob = torch.sigmoid(seg(x).float())
            loss, recon = mae_forward(m, x, ids[:, :keep], restore, mask)
            if o.cons > 0:
                loss = loss + o.cons * F.binary_cross_entropy_with_logits(seg(recon).float(), prob)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    for _ in range(o.warmup):
        step()
    sync()
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(o.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    cuda = dev.startswith("cuda")
    print(json.dumps({
        "peer": f"torch {torch.__version__}", "bench": "vasomim" if o.cons > 0 else "mae", "preset": o.preset,
        "batch": B, "img": o.img, "mask": o.mask, "amp": o.amp, "tf32": o.tf32,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "ms_per_step": round(dt * 1e3, 3), "img_per_s": round(B / dt, 2),
        "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20) if cuda else None,
    }))


if __name__ == "__main__":
    main()
