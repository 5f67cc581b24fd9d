#!/usr/bin/env bash
# Unpacks a CUDA 13.0 toolkit from PyPI wheels into target/cuda-toolkit (no GPU, no root, no Debian
# non-free) and generates link stubs for the libraries cudarc links dynamically. Idempotent.
# Prints the toolkit prefix (C) on its last line. See docs/CUDA.md §Build.
# usage: scripts/cuda/toolkit.sh [--no-stubs]   (--no-stubs: nvcc only, for compiling kernels)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
P="$ROOT/target/cuda-toolkit"
C="$P/nvidia/cu13"
PY="${PYTHON:-python3}"

if [[ ! -x "$C/bin/nvcc" ]]; then
  echo "== toolkit: CUDA 13.0 wheels → target/cuda-toolkit (≈105 MB)" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$P" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
fi
[[ -x "$C/bin/nvcc" ]] || { echo "toolkit: no nvcc under $C/bin after the wheel install" >&2; exit 1; }

if [[ "${1:-}" == "--no-stubs" ]]; then
  echo "$C"
  exit 0
fi

# Link stubs: one `int f(void){return 34;}` per function cudarc declares, built with the real SONAME,
# named lib<name>.so (the link-time name only): at run time the loader looks for the SONAME and finds the
# real library (the driver's libcuda.so.1, the wheels' libcublas.so.13, ...), never a stub.
STUBS="$C/lib/stubs"
CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1 || true)"
if [[ -z "$CUDARC" ]]; then
  echo "== stubs: fetching crates (cudarc 0.19.x) first" >&2
  cargo fetch --quiet >&2
  CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)"
fi
mkdir -p "$STUBS"
stub() { # module soname linkname
  local mod="$1" soname="$2" name="$3" out="$STUBS/lib$3.so"
  [[ -f "$out" ]] && return 0
  local src="$STUBS/$name.c"
  grep -ohE 'pub (unsafe )?fn [A-Za-z0-9_]+' "$CUDARC/src/$mod/sys/"*.rs | awk '{print $NF}' | sort -u \
    | sed 's/.*/int &(void){return 34;}/' >"$src"
  gcc -shared -fPIC -o "$out" -Wl,-soname,"$soname" "$src"
  rm -f "$src"
}
stub driver libcuda.so.1 cuda
stub cublas libcublas.so.13 cublas
stub cublaslt libcublasLt.so.13 cublasLt
stub nvrtc libnvrtc.so.13 nvrtc
stub curand libcurand.so.10 curand
stub nccl libnccl.so.2 nccl
stub cudnn libcudnn.so.9 cudnn
ln -sf ../libcudart.so.13 "$STUBS/libcudart.so"
echo "$C"
