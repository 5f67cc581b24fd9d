//! Trainers: one type per job, each owning its model, optimizer and step counter.
//!
//! - [`pretrain`]: MAE / VasoMIM pre-training (guidance map, L_rec + L_cons through the frozen
//!   segmentor).
//! - [`segmentor`]: training the UNeXt-S vessel segmentor (the frozen guide of pre-training).
//! - [`segmentation`]: fine-tuning the segmentation ViT (the downstream task).
//! - [`detection`]: fine-tuning the ViTDet stenosis detector.

pub mod detection;
pub mod pretrain;
pub mod segmentation;
pub mod segmentor;

/// Keep freed tensor buffers in the heap instead of returning them to the kernel.
///
/// glibc serves large blocks with mmap and unmaps them on free, so every step pays page faults
/// and page zeroing for each activation tensor again (~10 % of a tiny-ViT step on the CPU).
/// Raising the mmap and trim thresholds lets the step reuse its own memory, as PyTorch's caching
/// allocator does. Process-wide and idempotent; a no-op outside glibc Linux.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| unsafe {
            // SAFETY: mallopt only changes allocator parameters; 32 MiB is glibc's mmap maximum.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        });
    }
}
