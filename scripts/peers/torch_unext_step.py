#!/usr/bin/env python3
"""PyTorch peer for `cargo run --release -p vasomim-core --example bench_unext`: the same UNeXt-S
(the reference model of scripts/golden/torch_unext.py), float32, one training step (train-mode
forward, 0.5·BCE + 0.5·(1 − Dice), backward, Adam) and eval-mode forward + backward to the input.

usage: /usr/bin/python3 scripts/peers/torch_unext_step.py [batch] [img] [threads]
"""
import json, os, sys, time
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "golden"))
from torch_unext import UNeXtS, seg_loss  # noqa: E402


def main():
    b = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    s = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = UNeXtS(3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(b, 3, s, s)
    y = (torch.rand(b, 1, s, s) < 0.1).float()

    def train():
        model.train()
        opt.zero_grad()
        seg_loss(model(x), y)[0].backward()
        opt.step()

    def eval_bwd():
        model.eval()
        xi = x.clone().requires_grad_(True)
        seg_loss(model(xi), y)[0].backward()

    def timed(f, steps=5, warmup=1):
        for _ in range(warmup):
            f()
        t = time.perf_counter()
        for _ in range(steps):
            f()
        return (time.perf_counter() - t) * 1e3 / steps

    print(json.dumps({"peer": f"torch {torch.__version__}", "batch": b, "img": s, "threads": threads,
                      "train_step_ms": round(timed(train), 1),
                      "eval_fwd_bwd_ms": round(timed(eval_bwd), 1)}))


if __name__ == "__main__":
    main()
