#!/usr/bin/env bash
# The GPU evidence of the CUDA issue in one script (docs/CUDA.md §Device check): run it on a GPU
# machine with the folder scripts/cuda/build.sh makes (dist/cuda: cuda_check.xz, this script, the
# PyTorch peers), the repository's data/ folder, and a Python with PyTorch for the peer.
#
#   1. correctness: every op (f32, bf16) and AdamW vs the CPU, micro and tiny VasoMIM steps (loss and
#      every gradient) and a train-segmentor step — with our CUDA kernels, then with them off
#      (candle's composites)
#   2. speed: ViT-B/16 MAE step (mask 0.75) and VasoMIM step (mask 0.5, UNeXt-S + L_cons), per-GPU
#      batch 256, bf16 — ours and PyTorch AMP bf16 in the same call; memory peaks of both
#   3. nccl-smoke: world-size-1 all-reduce of ViT-B's gradient bytes through the product collective
#   4. pretrain: 2 minutes of the demo model on the bundled angiograms; the loss must fall
# Logs and summary.json go to <out-dir>. Total ≤ 7 minutes on an H200.
#
# usage: scripts/cuda/device-check.sh <out-dir> [--device cuda|cpu] [--quick]
#   --device cpu   the dry run on a machine without a GPU (small shapes, composites, no peer AMP);
#                  it runs the CPU build: cargo build --release -p vasomim-core --example cuda_check
#   --quick        small shapes on the GPU too (a smoke test of the script)
# env: CUDA_CHECK (the binary; default: next to this script, else target/cuda/...), PYTHON (with
#      torch), DATA (the repository's data/ folder; default: ./data or ../../data), BATCH (256).
set -uo pipefail
OUT="${1:?usage: device-check.sh <out-dir> [--device cuda|cpu] [--quick]}"
shift
DEVICE=cuda
QUICK=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "device-check: unknown option $1" >&2; exit 2 ;;
  esac
done
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/device-check.log" >&2; }

# The binary: next to this script (xz-compressed as build.sh ships it) or from a local build.
BIN="${CUDA_CHECK:-}"
if [[ -z "$BIN" ]]; then
  # Unpacked outside <out-dir> (55 MB) and outside this folder (which may be read-only).
  if [[ -f "$HERE/cuda_check.xz" && "$DEVICE" != cpu ]]; then
    UNPACKED="$(mktemp -d)"
    trap 'rm -rf "$UNPACKED"' EXIT
    xz -dc "$HERE/cuda_check.xz" > "$UNPACKED/cuda_check" && chmod +x "$UNPACKED/cuda_check"
  fi
  CANDIDATES=("${UNPACKED:-/nonexistent}/cuda_check" "$HERE/../../target/cuda/cuda-check/examples/cuda_check"
    "$HERE/../../target/release/examples/cuda_check")
  # The dry run: a CPU build first (a CUDA build needs the driver's libcuda.so.1 even to start).
  [[ "$DEVICE" == cpu ]] && CANDIDATES=("$HERE/../../target/release/examples/cuda_check" "${CANDIDATES[@]}")
  for c in "${CANDIDATES[@]}"; do
    [[ -x "$c" ]] && BIN="$c" && break
  done
fi
[[ -x "$BIN" ]] || { echo "device-check: no cuda_check binary (run scripts/cuda/build.sh, or set CUDA_CHECK)" >&2; exit 2; }
DATA="${DATA:-}"
for d in "$DATA" "$PWD/data" "$HERE/../../data" "$HERE/data"; do
  [[ -n "$d" && -d "$d/samples" ]] && DATA="$d" && break
done
[[ -d "$DATA/samples" ]] || { echo "device-check: no data/samples folder (set DATA)" >&2; exit 2; }
PEER="$HERE/torch_vasomim_step.py"
[[ -f "$PEER" ]] || PEER="$HERE/../peers/torch_vasomim_step.py"

# The CUDA libraries of the Python environment's wheels (cuBLAS, cuRAND, NCCL, ...), for the binary.
if [[ "$DEVICE" != cpu ]]; then
  LIBS="$("$PY" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)})))
EOF
)"
  export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi
log "binary $BIN, data $DATA, device $DEVICE, python $("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo 'without torch')"
ldd "$BIN" > "$OUT/ldd.txt" 2>&1 || true

FAIL=0
run() { # name, command...: stdout (JSON lines) to <name>.jsonl, stderr to <name>.log
  local name="$1"; shift
  log "$name: $*"
  "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.log"
  local rc=$?
  [[ $rc -ne 0 ]] && { FAIL=1; log "$name FAILED (exit $rc): $(tail -3 "$OUT/$name.log" | tr '\n' ' ')"; }
  return 0
}

if [[ "$DEVICE" == cpu || $QUICK == 1 ]]; then
  PRESET=micro; BATCH="${BATCH:-4}"; IMG=64; STEPS=2; WARM=1; SECONDS_RUN=20; PBATCH=8; AMP=off
else
  PRESET=base; BATCH="${BATCH:-256}"; IMG=224; STEPS=10; WARM=3; SECONDS_RUN=120; PBATCH=64; AMP=bf16
fi
[[ "$DEVICE" == cpu ]] && PREC=f32 || PREC=bf16

# 1. correctness (kernels on, then the composites)
run correctness "$BIN" correctness --device "$DEVICE"
VASOMIM_CUDA_KERNELS=0 run correctness-composite "$BIN" correctness --device "$DEVICE"

# 2. speed: ours (kernels on and off) and the PyTorch peer, MAE then VasoMIM
for kind in mae vasomim; do
  if [[ $kind == mae ]]; then MASK=0.75; CONS=0; else MASK=0.5; CONS=1; fi
  run "bench-$kind" "$BIN" bench --device "$DEVICE" --preset $PRESET --batch "$BATCH" --img $IMG --mask $MASK \
    --cons $CONS --precision $PREC --steps $STEPS --warmup $WARM
  VASOMIM_CUDA_KERNELS=0 run "bench-$kind-composite" "$BIN" bench --device "$DEVICE" --preset $PRESET \
    --batch "$BATCH" --img $IMG --mask $MASK --cons $CONS --precision $PREC --steps $STEPS --warmup $WARM
  if "$PY" -c 'import torch' 2>/dev/null; then
    run "peer-$kind" "$PY" "$PEER" --device "$DEVICE" --preset $PRESET --batch "$BATCH" \
      --img $IMG --mask $MASK --cons $CONS --amp $AMP --steps $STEPS --warmup $WARM
  else
    log "peer-$kind skipped: no torch in $PY"
  fi
done

# 3. NCCL: ViT-B's gradients (≈ 344 MB f32) bucketed and all-reduced as a data-parallel step does
if [[ "$DEVICE" != cpu ]]; then
  run nccl "$BIN" nccl-smoke --device "$DEVICE" --preset $PRESET --iters 20
fi

# 4. two minutes of the demo through the core trainer
run pretrain "$BIN" pretrain --device "$DEVICE" --seconds $SECONDS_RUN --batch $PBATCH \
  --data "$DATA/samples" --segmentor "$DATA/models/unext-s-demo.safetensors" --precision auto

# summary.json: every JSON line by file, and the ratios against the peer
"$PY" - "$OUT" "$FAIL" "$DEVICE" <<'EOF'
import glob, json, os, sys
out, fail, device = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
s = {"device": device, "all_ran": not fail}
try:
    s["gpu"] = open(os.path.join(out, "nvidia-smi.txt")).read().split("\n")[8:10]
except OSError:
    pass
for f in sorted(glob.glob(os.path.join(out, "*.jsonl"))):
    rows = []
    for line in open(f):
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    s[os.path.basename(f)[:-6]] = rows
for kind in ("mae", "vasomim"):
    ours, peer = s.get(f"bench-{kind}", []), s.get(f"peer-{kind}", [])
    if ours and peer:
        o, p = ours[-1], peer[-1]
        s[f"{kind}_throughput_vs_torch"] = round(o["img_per_s"] / p["img_per_s"], 3)
        if p.get("peak_reserved_mib"):
            s[f"{kind}_memory_vs_torch_reserved"] = round(o["peak_mib"] / p["peak_reserved_mib"], 3)
for name in ("correctness", "correctness-composite"):
    rows = s.get(name, [])
    s[f"{name}_failed"] = [r["name"] + "/" + r["precision"] for r in rows if not r.get("pass", True)]
json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps({k: v for k, v in s.items() if not isinstance(v, list) or k.endswith("_failed")}, indent=1))
EOF
log "done in $(( $(date +%s) - T0 )) s; $([[ $FAIL == 0 ]] && echo 'every step ran' || echo 'SOME STEPS FAILED')"
exit $FAIL
