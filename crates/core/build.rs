//! Compiles our CUDA kernels (`cuda/vasomim.cu`) to PTX when the `cuda` feature is on; the
//! driver JIT-compiles the PTX for the GPU at first use. nvcc comes from `NVCC`, else `PATH`;
//! the virtual architecture from `CUDA_COMPUTE_CAP` (e.g. 90), default 80 (runs on Ampere and
//! later). scripts/cuda/build.sh sets all of this up (docs/CUDA.md).

fn main() {
    println!("cargo:rerun-if-changed=cuda/vasomim.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("vasomim.ptx");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-O3", "--std=c++17", &format!("-arch=compute_{cap}"), "cuda/vasomim.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} (set NVCC or PATH; see docs/CUDA.md): {e}"));
    assert!(status.success(), "{nvcc} failed on cuda/vasomim.cu");
}
