//! The compute device, chosen once per model: [`resolve`] turns the user's `cpu` | `cuda` |
//! `cuda:N` into a candle [`Device`], and [`host`] names the CPU where checkpoints are staged.
//!
//! This is the only place outside tests that constructs a `Device`: every trainer, loader
//! tensor and checkpoint takes the device it was given, so a CUDA build never falls back to the
//! CPU silently. Asking for CUDA from a build without the `cuda` cargo feature is an error that
//! says how to get one.

use candle_core::{Device, Result};

/// Where to read how a CUDA build is made (repository-relative).
pub const CUDA_DOC: &str = "docs/CUDA.md";

/// The device named by `name`: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn resolve(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(host()),
        "cuda" => cuda(0),
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => candle_core::bail!("device {name:?}: expected cpu, cuda or cuda:N (N = 0, 1, …)"),
        },
    }
}

/// The CPU: where tensors go before they are written to a file.
pub fn host() -> Device {
    Device::Cpu
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| candle_core::Error::msg(format!("device cuda:{n}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    candle_core::bail!(
        "device cuda:{n}: this build of vasomim has no CUDA support; build it with \
         `--features cuda` (see {CUDA_DOC}) or use device cpu"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_resolves_to_the_cpu() {
        assert!(matches!(resolve("cpu").unwrap(), Device::Cpu));
    }

    #[test]
    fn bad_names_are_errors_that_list_the_choices() {
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let e = resolve(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        for name in ["cuda", "cuda:1"] {
            let e = resolve(name).unwrap_err().to_string();
            assert!(e.contains("--features cuda") && e.contains(CUDA_DOC), "{e}");
        }
    }
}
