#!/usr/bin/env python3
"""One MAE pre-training step on the CPU: vasomim (candle) against the PyTorch peer, same run.

Both sides: same model shape (preset), batch, image size, mask ratio and thread count; each runs
in its own process, timed over --steps steps after --warmup, peak memory from the process's
maximum resident set (wait4 rusage). Never used in tests: timings are for people.

usage: scripts/bench/step.py [--presets micro,tiny] [--batch 8] [--img 224] [--mask 0.5]
                             [--threads 2] [--steps 10] [--warmup 2] [--python /usr/bin/python3]
Builds the Rust side with `cargo build --release --example bench_step` when needed. The peer
needs a Python with torch (default: $VASOMIM_TORCH_PYTHON, else /usr/bin/python3, else python3).
Prints a line per preset, then one JSON line for the last preset:
  {"ours_ms": .., "peer_ms": .., "ratio": ours/peer, "peak_mem_mb": ours, "peer_peak_mem_mb": .., ...}
"""
import argparse, json, os, shutil, subprocess, sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def run(cmd, env):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    out, err = p.stdout.read(), p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line), ru.ru_maxrss / 1024.0  # KiB -> MiB on Linux


def pick_python(given):
    for p in [given, os.environ.get("VASOMIM_TORCH_PYTHON"), "/usr/bin/python3", shutil.which("python3")]:
        if p and subprocess.run([p, "-c", "import torch"], capture_output=True).returncode == 0:
            return p
    sys.exit("no Python with torch found: set --python or VASOMIM_TORCH_PYTHON (see docs/MODEL.md)")


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--presets", default="micro,tiny")
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--img", type=int, default=224)
    a.add_argument("--mask", type=float, default=0.5)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--steps", type=int, default=10)
    a.add_argument("--warmup", type=int, default=2)
    a.add_argument("--python")
    # GNU OpenMP spin-waits at barriers by default; on a shared 2-core machine (another build
    # running) that made the peer up to 20x slower. PASSIVE is the fair setting there; pass
    # --omp-wait-policy ACTIVE on an idle machine.
    a.add_argument("--omp-wait-policy", default="PASSIVE")
    o = a.parse_args()
    py = pick_python(o.python)
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "vasomim-core", "--example", "bench_step"], cwd=ROOT, check=True)
    exe = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "examples", "bench_step")
    env = dict(os.environ, RAYON_NUM_THREADS=str(o.threads), OMP_NUM_THREADS=str(o.threads), MKL_NUM_THREADS=str(o.threads),
               OPENBLAS_NUM_THREADS=str(o.threads), OMP_WAIT_POLICY=o.omp_wait_policy)
    common = ["--batch", str(o.batch), "--img", str(o.img), "--mask", str(o.mask), "--steps", str(o.steps), "--warmup", str(o.warmup)]
    result = None
    for preset in o.presets.split(","):
        ours, ours_mem = run([exe, "--preset", preset, *common], env)
        peer, peer_mem = run([py, os.path.join(ROOT, "scripts", "peers", "torch_mae_step.py"), "--preset", preset, "--threads", str(o.threads), *common], env)
        result = {"preset": preset, "batch": o.batch, "img": o.img, "mask": o.mask, "threads": o.threads,
                  "ours_ms": ours["ms_per_step"], "peer_ms": peer["ms_per_step"],
                  "ratio": round(ours["ms_per_step"] / peer["ms_per_step"], 3),
                  "peak_mem_mb": round(ours_mem, 1), "peer_peak_mem_mb": round(peer_mem, 1), "torch": peer.get("torch"),
                  "omp_wait_policy": o.omp_wait_policy}
        print(f"{preset:>6}: ours {ours['ms_per_step']:.1f} ms/step ({ours_mem:.0f} MiB), "
              f"torch {peer['ms_per_step']:.1f} ms/step ({peer_mem:.0f} MiB), ratio {result['ratio']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
