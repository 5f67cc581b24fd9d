#!/usr/bin/env python3
"""Training steps on the CPU: vasomim (candle) against PyTorch, in the same run.

Tasks (`--tasks`, all by default), each per preset:
- `mae`: the MAE pre-training step, ours against the peers (scripts/peers/torch_mae_step.py).
- `vasomim`: ours only, the MAE step plus what VasoMIM adds each step (P = sigmoid(S(img)) from
  the frozen UNeXt-S and L_cons through it): its ratio to our `mae` step (the issue's target is
  at most 1.3).
- `finetune`: the segmentation step (ViT + U-Net head x0.25, Dice + BCE, AdamW), ours against
  the peers (scripts/peers/torch_segvit_step.py).

Peers: `pypi` (the headline) is the current PyTorch from PyPI in a venv that
scripts/peers/torch_venv.py creates on first use; `debian` (second column) is the system's
/usr/bin/python3 with Debian's python3-torch (1.13), when it has one. Both run
scripts/peers/torch_mae_step.py. Every side gets the same model shape (preset), batch, image size,
mask ratio and thread count, each in its own process, timed over --steps steps after --warmup.
OpenMP is left at its defaults (OMP_WAIT_POLICY unset) unless --omp-wait-policy is given: that is
what a user gets. The sides alternate --repeats times and the fastest run of each is reported
(on a shared machine the minimum is the least disturbed). Never used in tests.

Memory: the process's peak resident set (wait4 rusage), and the same net of that process's idle
footprint (ours: `bench_step --idle`; torch: an interpreter that has imported torch), so the
interpreter and library mappings, most of a Python peer's peak, are not counted as training memory.

usage: scripts/bench/step.py [--tasks mae,vasomim,finetune] [--presets micro,tiny] [--batch 8] [--img 224] [--mask 0.5]
                             [--threads 2] [--steps 10] [--warmup 2] [--repeats 3]
                             [--peers pypi,debian] [--omp-wait-policy PASSIVE|ACTIVE]
Builds the Rust side with `cargo build --release --example bench_step` when needed. Prints a line
per preset and peer on stderr, then one JSON line: per preset, ours and each peer (ms/step, peak
and net MiB, torch version) and the ratios ours/peer (lower is better), plus the CPU, the 1-minute
load average at the start and end (a figure taken under load is not a headline figure).
"""
import argparse, json, os, platform, subprocess, sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PEERS = {"mae": os.path.join(ROOT, "scripts", "peers", "torch_mae_step.py"),
         "finetune": os.path.join(ROOT, "scripts", "peers", "torch_segvit_step.py")}


def run(cmd, env):
    """The last JSON line the command prints and its peak RSS in MiB."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    out, err = p.stdout.read(), p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    lines = [l for l in out.splitlines() if l.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), ru.ru_maxrss / 1024.0  # KiB -> MiB on Linux


def torch_version(py):
    r = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def peer_pythons(names):
    out = {}
    for name in names:
        if name == "pypi":
            r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "peers", "torch_venv.py")],
                               stdout=subprocess.PIPE, text=True)
            if r.returncode != 0:
                sys.exit("could not create the PyPI torch venv (scripts/peers/torch_venv.py)")
            out[name] = r.stdout.strip()
        elif name == "debian":
            if torch_version("/usr/bin/python3"):
                out[name] = "/usr/bin/python3"
            else:
                print("step: no Debian torch (/usr/bin/python3 -c 'import torch' fails): column skipped", file=sys.stderr)
        else:
            sys.exit(f"unknown peer {name!r} (pypi, debian)")
    return out


def loadavg():
    return round(os.getloadavg()[0], 2)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--tasks", default="mae,vasomim,finetune")
    a.add_argument("--presets", default="micro,tiny")
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--img", type=int, default=224)
    a.add_argument("--mask", type=float, default=0.5)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--steps", type=int, default=10)
    a.add_argument("--warmup", type=int, default=2)
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--peers", default="pypi,debian")
    a.add_argument("--omp-wait-policy", help="set OMP_WAIT_POLICY for every side (default: unset, as users run)")
    o = a.parse_args()
    load_start = loadavg()
    peers = peer_pythons(o.peers.split(","))
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "vasomim-core", "--example", "bench_step"], cwd=ROOT, check=True)
    exe = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "examples", "bench_step")
    env = dict(os.environ, RAYON_NUM_THREADS=str(o.threads), OMP_NUM_THREADS=str(o.threads), MKL_NUM_THREADS=str(o.threads),
               OPENBLAS_NUM_THREADS=str(o.threads))
    env.pop("OMP_WAIT_POLICY", None)
    if o.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = o.omp_wait_policy
    # Idle footprints: the largest of --repeats starts (a process's baseline barely moves).
    idle = {"ours": max(run([exe, "--idle"], env)[1] for _ in range(o.repeats))}
    imports = "import torch, torch.nn, torch.nn.functional; torch.set_num_threads(%d)" % o.threads
    for name, py in peers.items():
        idle[name] = max(run([py, "-c", imports], env)[1] for _ in range(o.repeats))
    common = ["--batch", str(o.batch), "--img", str(o.img), "--steps", str(o.steps), "--warmup", str(o.warmup)]
    results = {}
    for preset in o.presets.split(","):
        results[preset] = {}
        for task in o.tasks.split(","):
            if task not in ("mae", "vasomim", "finetune"):
                sys.exit(f"unknown task {task!r} (mae, vasomim, finetune)")
            args = common + (["--mask", str(o.mask)] if task != "finetune" else [])
            task_peers = peers if task in PEERS else {}
            runs = {"ours": []} | {name: [] for name in task_peers}
            for _ in range(o.repeats):
                runs["ours"].append(run([exe, "--task", task, "--preset", preset, *args], env))
                for name, py in task_peers.items():
                    runs[name].append(run([py, PEERS[task], "--preset", preset, "--threads", str(o.threads), *args], env))
            sides = {}
            for name, rs in runs.items():
                best, _ = min(rs, key=lambda r: r[0]["ms_per_step"])
                peak = max(m for _, m in rs)
                sides[name] = {"ms": best["ms_per_step"], "all_ms": [r[0]["ms_per_step"] for r in rs],
                               "peak_mib": round(peak, 1), "idle_mib": round(idle[name], 1),
                               "net_mib": round(peak - idle[name], 1)}
                if name != "ours":
                    sides[name]["torch"] = torch_version(peers[name])
            ours = sides["ours"]
            r = {"sides": sides}
            for name in task_peers:
                r[f"ratio_{name}"] = round(ours["ms"] / sides[name]["ms"], 3)
                r[f"net_mem_ratio_{name}"] = round(ours["net_mib"] / max(sides[name]["net_mib"], 1e-9), 3)
            if task == "vasomim" and "mae" in results[preset]:
                r["ratio_to_mae"] = round(ours["ms"] / results[preset]["mae"]["sides"]["ours"]["ms"], 3)
            results[preset][task] = r
            for name, s in sides.items():
                ratio = "" if name == "ours" else f", ours/this {r['ratio_' + name]}"
                if name == "ours" and "ratio_to_mae" in r:
                    ratio = f", ours/our mae step {r['ratio_to_mae']}"
                print(f"{preset:>6} {task:>8} {name:>6}{' ' + s['torch'] if s.get('torch') else '':<12}: {s['ms']:.1f} ms/step "
                      f"(min of {s['all_ms']}), peak {s['peak_mib']:.0f} MiB, net of idle {s['net_mib']:.0f} MiB{ratio}",
                      file=sys.stderr)
    print(json.dumps({"bench": "train_steps", "batch": o.batch, "img": o.img, "mask": o.mask, "threads": o.threads,
                      "repeats": o.repeats, "omp_wait_policy": o.omp_wait_policy, "cpu": cpu_model(),
                      "load_1min_start": load_start, "load_1min_end": loadavg(), "presets": results}))


if __name__ == "__main__":
    main()
