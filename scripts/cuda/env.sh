# Sourced by the CUDA scripts: the toolkit (scripts/cuda/toolkit.sh) and the environment of a CUDA
# build on a machine without a GPU (docs/CUDA.md §Build). Sets C (the toolkit prefix).
C="$(scripts/cuda/toolkit.sh | tail -1)"
export PATH="$C/bin:$PATH" CUDA_HOME="$C" CUDA_PATH="$C" NVCC="$C/bin/nvcc"
# sm_90 (H100/H200): candle's kernels are compiled for it; ours are PTX for compute_90.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$C/lib/stubs:$C/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="-L $C/lib/stubs -L $C/lib"
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-$PWD/target/cuda}"
