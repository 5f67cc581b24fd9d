#!/usr/bin/env bash
# CI's check of our CUDA kernels on a machine without a GPU: compiles every crates/core/cuda/*.cu to
# PTX with the CUDA 13.0 wheel's nvcc (scripts/cuda/toolkit.sh; seconds once the wheels are there),
# warnings as errors, and checks that every kernel name the Rust launchers load exists in the PTX
# (for each dtype the launcher formats). The full CUDA build stays out of CI (docs/CUDA.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
C="$(scripts/cuda/toolkit.sh --no-stubs | tail -1)"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
for cu in crates/core/cuda/*.cu; do
  "$C/bin/nvcc" --ptx -O3 --std=c++17 -arch=compute_90 -Werror all-warnings "$cu" -o "$OUT/$(basename "$cu" .cu).ptx"
done
entries="$(grep -ho '\.entry [A-Za-z0-9_]*' "$OUT"/*.ptx | awk '{print $2}' | sort -u)"
missing=0
SRC=(crates/core/src/nn/kernels/cuda.rs crates/core/src/nn/kernels/cuda/*.rs)
# Names the launchers load: literal ("adamw_f32") or per dtype (format!("softmax_fwd_{}", ...)).
for name in $(grep -ho 'get_or_load_custom_func("[A-Za-z0-9_]*"' "${SRC[@]}" | cut -d'"' -f2); do
  grep -qx "$name" <<<"$entries" || { echo "missing kernel $name"; missing=1; }
done
for stem in $(grep -ho 'format!("[A-Za-z0-9_]*_{}"' "${SRC[@]}" | cut -d'"' -f2 | sed 's/_{}$//'); do
  for dt in f32 bf16; do
    grep -qx "${stem}_$dt" <<<"$entries" || { echo "missing kernel ${stem}_$dt"; missing=1; }
  done
done
# elementwise("<stem>", ...) and bias_rows("<stem>", ...) format "<stem>_<dtype>" too.
for stem in $(grep -hoE '(elementwise|bias_rows)\("[A-Za-z0-9_]*"' "${SRC[@]}" | cut -d'"' -f2); do
  for dt in f32 bf16; do
    grep -qx "${stem}_$dt" <<<"$entries" || { echo "missing kernel ${stem}_$dt"; missing=1; }
  done
done
[[ $missing == 0 ]] || { echo "check-kernels: the launchers name kernels the PTX lacks" >&2; exit 1; }
echo "check-kernels: $(wc -l <<<"$entries") kernels compiled, every launcher's name present"
