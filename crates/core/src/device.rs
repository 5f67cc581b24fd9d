//! The compute device, chosen once per model: [`resolve`] turns the user's `cpu` | `cuda` |
//! `cuda:N` into a candle [`Device`], and [`host`] names the CPU where checkpoints are staged.
//! [`Precision`] is how that device computes: f32, TF32 matrix products, or bf16 autocast.
//! [`exclusive`] runs one model job on the CPU's thread pool.
//!
//! This is the only place outside tests that constructs a `Device`: every trainer, loader
//! tensor and checkpoint takes the device it was given, so a CUDA build never falls back to the
//! CPU silently. Asking for CUDA from a build without the `cuda` cargo feature is an error that
//! says how to get one.

use candle_core::{DType, Device, Result};

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

/// Run one model job (a training step, a forward pass, a save) on a thread of the CPU pool,
/// one such job at a time.
///
/// Called from outside the pool (a libuv thread of the Node addon, a program's main thread),
/// each parallel loop of a kernel is injected into the pool while the caller sleeps on a
/// condition variable: a hand-off between threads per loop (thousands per step) and, on two
/// cores, a third runnable thread beside the pool's two whenever the caller runs serial code.
/// On a pool thread the loops split by work stealing and the caller is one of the pool's
/// threads, as PyTorch's calling thread is one of its OpenMP team. Measured on the VasoMIM
/// ViT-Ti step (2 cores): −5 to −10 % time, involuntary context switches 30,000 → 100.
///
/// One job at a time: a pool thread that waits for the stolen half of its own loop may start
/// any job queued from outside meanwhile, and if that job locked a model the first one holds,
/// the pool would deadlock. The gate keeps a second job out until the first returns. On a pool
/// thread already, `f` runs where it is.
pub fn exclusive<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let _turn = GATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Always on the pool's first thread: glibc gives each thread its own allocator arena, and a
    // job that ran on whichever thread was free would grow every thread's arena to the job's
    // working set (measured: peak memory up to 1.9× on 2 threads).
    let job = std::sync::Mutex::new(Some(f));
    let mut out = rayon::broadcast(|ctx| {
        let f = (ctx.index() == 0).then(|| job.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        f.flatten().map(|f| f())
    });
    out.swap_remove(0).expect("the pool's first thread runs the job")
}

/// `cuda:N` on a stream of its own (not the per-thread default stream: calls from different Node
/// worker threads and NCCL must all land on the one stream of the model), without cross-stream
/// event tracking (one stream needs none, and it costs an event per allocation).
#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    let dev = Device::new_cuda_with_stream(n).map_err(|e| candle_core::Error::msg(format!("device cuda:{n}: {e}")))?;
    // SAFETY: called before any tensor exists on this device; everything runs on its one stream.
    unsafe { dev.as_cuda_device()?.cuda_stream().context().disable_event_tracking() };
    Ok(dev)
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    candle_core::bail!(
        "device cuda:{n}: this build of vasomim has no CUDA support; build it with \
         `--features cuda` (see {CUDA_DOC}) or use device cpu"
    )
}

/// What this build can run on, for `vasomim doctor`.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceReport {
    /// Cargo features of this build that matter for devices (`cuda`, `nccl`).
    pub features: Vec<&'static str>,
    /// The CUDA driver's version (e.g. 13000 = CUDA 13.0), when one answered.
    pub cuda_driver: Option<i32>,
    /// One line per CUDA device: `cuda:N <name>, compute X.Y, <memory> GiB`.
    pub cuda_devices: Vec<String>,
    /// Why CUDA cannot be used, when it cannot.
    pub cuda_unavailable: Option<String>,
}

/// The build's features and the CUDA driver and devices it finds (nothing is allocated).
pub fn report() -> DeviceReport {
    let mut features = Vec::new();
    if cfg!(feature = "cuda") {
        features.push("cuda");
    }
    if cfg!(feature = "nccl") {
        features.push("nccl");
    }
    let (cuda_driver, cuda_devices, cuda_unavailable) = cuda_report();
    DeviceReport { features, cuda_driver, cuda_devices, cuda_unavailable }
}

#[cfg(feature = "cuda")]
fn cuda_report() -> (Option<i32>, Vec<String>, Option<String>) {
    use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaContext};
    if let Err(e) = result::init() {
        return (None, vec![], Some(format!("the CUDA driver did not initialise: {e:?} (no NVIDIA driver or GPU?)")));
    }
    let mut v = 0;
    // SAFETY: writes one int.
    let driver = (unsafe { sys::cuDriverGetVersion(&mut v) } == sys::CUresult::CUDA_SUCCESS).then_some(v);
    let n = match result::device::get_count() {
        Ok(n) => n,
        Err(e) => return (driver, vec![], Some(format!("cannot count CUDA devices: {e:?}"))),
    };
    if n == 0 {
        return (driver, vec![], Some("the CUDA driver sees no device".into()));
    }
    let devices = (0..n as usize)
        .map(|i| match CudaContext::new(i) {
            Ok(c) => {
                let name = c.name().unwrap_or_else(|_| "?".into());
                let (ma, mi) = c.compute_capability().unwrap_or((0, 0));
                let gib = c.total_mem().map(|b| b as f64 / (1u64 << 30) as f64).unwrap_or(f64::NAN);
                format!("cuda:{i} {name}, compute {ma}.{mi}, {gib:.0} GiB")
            }
            Err(e) => format!("cuda:{i} unusable: {e:?}"),
        })
        .collect();
    (driver, devices, None)
}

#[cfg(not(feature = "cuda"))]
fn cuda_report() -> (Option<i32>, Vec<String>, Option<String>) {
    let why = format!("this build of vasomim has no CUDA support; build it with `--features cuda` (see {CUDA_DOC})");
    (None, vec![], Some(why))
}

/// How a model computes (docs/CUDA.md §Precision). Parameters, gradients and optimizer state are
/// f32 in every mode; only the arithmetic of the forward and backward changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32: bit-identical runs and resume on the CPU.
    #[default]
    F32,
    /// f32 tensors, matrix products on TF32 tensor cores (CUDA only).
    Tf32,
    /// Autocast as `torch.autocast(dtype=torch.bfloat16)`: matrix products and convolutions in
    /// bf16 with f32 accumulation; normalisation statistics, softmax and losses in f32.
    Bf16,
}

impl Precision {
    /// `auto` (bf16 on CUDA, f32 on the CPU), `f32`, `tf32` (CUDA only) or `bf16` for `device`.
    pub fn resolve(name: &str, device: &Device) -> Result<Precision> {
        match (name, device.is_cuda()) {
            ("auto", true) | ("bf16", _) => Ok(Precision::Bf16),
            ("auto", false) | ("f32", _) => Ok(Precision::F32),
            ("tf32", true) => Ok(Precision::Tf32),
            ("tf32", false) => candle_core::bail!("precision tf32 needs a CUDA device (TF32 is a tensor-core format)"),
            _ => candle_core::bail!("precision {name:?}: expected auto, f32, tf32 or bf16"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The dtype matrix products run in under [`crate::nn::kernels::host::Autocast`].
    pub fn autocast(&self) -> Option<DType> {
        (*self == Precision::Bf16).then_some(DType::BF16)
    }

    /// Makes this precision current for the process where it is a global setting (TF32 in
    /// candle's cuBLAS calls).
    pub fn activate(&self) {
        candle_core::cuda::set_gemm_reduced_precision_f32(*self == Precision::Tf32);
    }
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

    #[test]
    fn precision_names() {
        let cpu = Device::Cpu;
        assert_eq!(Precision::resolve("auto", &cpu).unwrap(), Precision::F32);
        assert_eq!(Precision::resolve("bf16", &cpu).unwrap(), Precision::Bf16);
        assert_eq!(Precision::resolve("f32", &cpu).unwrap().autocast(), None);
        assert_eq!(Precision::Bf16.autocast(), Some(DType::BF16));
        assert!(Precision::resolve("tf32", &cpu).unwrap_err().to_string().contains("needs a CUDA device"));
        assert!(Precision::resolve("fp16", &cpu).unwrap_err().to_string().contains("expected auto, f32, tf32 or bf16"));
    }

    /// A job runs on the pool's first thread (its loops split there), a nested call runs in place, two
    /// jobs from different threads never overlap, and a panic reaches the caller and leaves the
    /// gate usable.
    #[test]
    fn exclusive_runs_one_job_at_a_time_on_the_pool() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        assert!(rayon::current_thread_index().is_none());
        for _ in 0..20 {
            let on = exclusive(rayon::current_thread_index);
            assert_eq!(on, Some(0), "the job ran off the pool's first thread");
        }
        let nested = exclusive(|| {
            let outer = std::thread::current().id();
            exclusive(|| std::thread::current().id()) == outer
        });
        assert!(nested, "a nested job left its thread (or waited on the gate)");
        let (inside, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5 {
                        exclusive(|| {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            inside.fetch_sub(1, Ordering::SeqCst);
                        })
                    }
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 1, "two jobs were on the pool at once");
        let hit = std::panic::catch_unwind(|| exclusive(|| panic!("boom"))).unwrap_err();
        assert_eq!(hit.downcast_ref::<&str>(), Some(&"boom"));
        assert_eq!(exclusive(|| 7), 7);
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
