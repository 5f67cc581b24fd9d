#!/usr/bin/env python3
"""One MAE pre-training step on the CPU: vasomim (candle) against the PyTorch peer, same run.

Both sides: same model shape (preset), batch, image size, mask ratio and thread count; each runs
in its own process, timed over --steps steps after --warmup, peak memory from the process's
maximum resident set (wait4 rusage). The two sides alternate --repeats times and the fastest run
of each is reported: on a shared machine the minimum is the least disturbed measurement. Never
used in tests: timings are for people.

usage: scripts/bench/step.py [--presets micro,tiny] [--batch 8] [--img 224] [--mask 0.5]
                             [--threads 2] [--steps 10] [--warmup 2] [--repeats 3]
                             [--python /usr/bin/python3] [--omp-wait-policy PASSIVE]
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
    a.add_argument("--repeats", type=int, default=3)
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
        ours_runs, peer_runs = [], []
        for _ in range(o.repeats):
            ours_runs.append(run([exe, "--preset", preset, *common], env))
            peer_runs.append(run([py, os.path.join(ROOT, "scripts", "peers", "torch_mae_step.py"), "--preset", preset,
                                  "--threads", str(o.threads), *common], env))
        (ours, ours_mem), (peer, peer_mem) = (min(r, key=lambda x: x[0]["ms_per_step"]) for r in (ours_runs, peer_runs))
        result = {"preset": preset, "batch": o.batch, "img": o.img, "mask": o.mask, "threads": o.threads,
                  "ours_ms": ours["ms_per_step"], "peer_ms": peer["ms_per_step"],
                  "ratio": round(ours["ms_per_step"] / peer["ms_per_step"], 3),
                  "peak_mem_mb": round(max(m for _, m in ours_runs), 1), "peer_peak_mem_mb": round(max(m for _, m in peer_runs), 1),
                  "repeats": o.repeats, "ours_all_ms": [r[0]["ms_per_step"] for r in ours_runs],
                  "peer_all_ms": [r[0]["ms_per_step"] for r in peer_runs], "torch": peer.get("torch"),
                  "omp_wait_policy": o.omp_wait_policy}
        print(f"{preset:>6}: ours {ours['ms_per_step']:.1f} ms/step (min of {result['ours_all_ms']}, {result['peak_mem_mb']:.0f} MiB), "
              f"torch {peer['ms_per_step']:.1f} ms/step (min of {result['peer_all_ms']}, {result['peer_peak_mem_mb']:.0f} MiB), "
              f"ratio {result['ratio']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
