#!/usr/bin/env bash
# Builds the CUDA variant on a machine without a GPU (docs/CUDA.md §Build):
#   1. the toolkit from PyPI wheels + link stubs (scripts/cuda/toolkit.sh, cached in target/cuda-toolkit),
#   2. the GPU check binary `cuda_check` (crates/core/examples/cuda_check.rs) with CUDA and NCCL,
#      stripped and xz-compressed, with its scripts, into dist/cuda/ (ignored; about 7 MB: copy that
#      folder and data/ to a GPU machine),
#   3. the CUDA variant of the Node addon (built with --features nccl: CUDA and NCCL data parallel)
#      into dist/cuda-addon/ — unless --no-addon.
# Idempotent: the toolkit and target/cuda are reused; a second run rebuilds only what changed.
# usage: scripts/cuda/build.sh [--no-addon]
set -euo pipefail
cd "$(dirname "$0")/../.."
ADDON=1
[[ "${1:-}" == "--no-addon" ]] && ADDON=0
t0=$(date +%s)
source scripts/cuda/env.sh
echo "== toolkit: $(nvcc --version | tail -1)"
echo "== cuda_check$([[ $ADDON == 1 ]] && echo ' and the addon') (cuda + nccl; first build: see docs/CUDA.md)"
# One cargo invocation for both, so that candle's CUDA kernels are compiled once: separate builds of
# the example (which brings dev-dependencies) and the addon resolve features differently, and each
# would compile candle-kernels for itself.
# Target flags apply to every -p: `--lib` is what builds the addon (the bindings crate has no
# example, so `--example cuda_check` alone would build nothing of it).
PKGS=(-p vasomim-core --example cuda_check)
[[ $ADDON == 1 ]] && PKGS+=(-p vasomim-bindings --lib)
cargo build --profile cuda-check "${PKGS[@]}" --features vasomim-core/nccl$([[ $ADDON == 1 ]] && echo ,vasomim-bindings/nccl)
# dist/cuda: what the GPU check needs, small enough to copy (the binary only as xz);
# dist/cuda-addon: the Node addon. Both are rewritten whole, so no stale file stays.
OUT=dist/cuda
rm -rf "$OUT" dist/cuda-addon
mkdir -p "$OUT"
BIN="$CARGO_TARGET_DIR/cuda-check/examples/cuda_check"
STRIPPED="$CARGO_TARGET_DIR/cuda-check/cuda_check.stripped"
cp "$BIN" "$STRIPPED"
strip "$STRIPPED" 2>/dev/null || true
xz -9 -T0 -c "$STRIPPED" > "$OUT/cuda_check.xz"
cp scripts/cuda/device-check.sh scripts/peers/torch_vasomim_step.py scripts/peers/torch_mae_step.py \
  scripts/golden/torch_unext.py "$OUT/"
if [[ $ADDON == 1 ]]; then
  echo "== the Node addon with --features nccl (CUDA + NCCL)"
  mkdir -p dist/cuda-addon
  cp "$CARGO_TARGET_DIR/cuda-check/libvasomim_bindings.so" dist/cuda-addon/vasomim.linux-x64-gnu.node
  ls -la dist/cuda-addon
fi
ls -la "$OUT"
echo "== $OUT: $(du -sh "$OUT" | cut -f1) (cuda_check $(du -h "$STRIPPED" | cut -f1) stripped)"
echo "== built in $(( $(date +%s) - t0 )) s; needs at run time: $(readelf -d "$STRIPPED" | grep NEEDED | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"
