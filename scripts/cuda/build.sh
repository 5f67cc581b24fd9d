#!/usr/bin/env bash
# Builds the CUDA variant on a machine without a GPU (docs/CUDA.md §Build):
#   1. the toolkit from PyPI wheels + link stubs (scripts/cuda/toolkit.sh, cached in target/cuda-toolkit),
#   2. the GPU check binary `cuda_check` (crates/core/examples/cuda_check.rs) with CUDA and NCCL,
#      stripped, xz-compressed with its scripts into dist/cuda/ (ignored; copy that folder to a GPU machine),
#   3. the CUDA variant of the Node addon (built with --features nccl: CUDA and NCCL data parallel)
#      into dist/cuda/addon/ — unless --no-addon.
# Idempotent: the toolkit and target/cuda are reused; a second run rebuilds only what changed.
# usage: scripts/cuda/build.sh [--no-addon]
set -euo pipefail
cd "$(dirname "$0")/../.."
ADDON=1
[[ "${1:-}" == "--no-addon" ]] && ADDON=0
t0=$(date +%s)
source scripts/cuda/env.sh
echo "== toolkit: $(nvcc --version | tail -1)"
echo "== cuda_check (release, cuda + nccl; first build: ~15-25 min on 2 cores, see docs/CUDA.md)"
cargo build --profile cuda-check -p vasomim-core --features nccl --example cuda_check
OUT=dist/cuda
mkdir -p "$OUT"
BIN="$CARGO_TARGET_DIR/cuda-check/examples/cuda_check"
cp "$BIN" "$OUT/cuda_check"
strip "$OUT/cuda_check" 2>/dev/null || true
xz -9 -T0 -f -k "$OUT/cuda_check"
cp scripts/cuda/device-check.sh scripts/peers/torch_vasomim_step.py scripts/peers/torch_mae_step.py \
  scripts/golden/torch_unext.py "$OUT/"
if [[ $ADDON == 1 ]]; then
  echo "== the Node addon with --features nccl (CUDA + NCCL)"
  # cargo directly (napi's build passes an explicit --target, which would compile every dependency,
  # candle's CUDA kernels included, a second time): the cuda-check profile shares them with the binary.
  cargo build --profile cuda-check -p vasomim-bindings --features nccl
  mkdir -p "$OUT/addon"
  cp "$CARGO_TARGET_DIR/cuda-check/libvasomim_bindings.so" "$OUT/addon/vasomim.linux-x64-gnu.node"
fi
ls -la "$OUT"
echo "== built in $(( $(date +%s) - t0 )) s; needs at run time: $(readelf -d "$OUT/cuda_check" | grep NEEDED | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"
