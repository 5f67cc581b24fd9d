//! Our CUDA kernels (`crates/core/cuda/vasomim.cu`, compiled to PTX by `build.rs` with the CUDA
//! feature) as candle ops, each with its backward as ops of its own:
//!
//! - [`layer_norm`]: forward saves μ and 1/σ per row; backward dx by rows, dw and db by column
//!   chunks (deterministic, no atomics).
//! - [`softmax`]: softmax(scale·x) over the last dim and its backward `scale·y·(g − Σg·y)`.
//! - [`gelu`]: exact GELU and its derivative.
//! - [`bias_add`]: `x + b` over the last dim; the bias gradient is a column sum in f32.
//! - [`bias_gelu`]: GELU(z + b), the MLP's fc1 epilogue as one op; its backward recomputes
//!   z + b from z, so the pre-activation is never stored (one (rows, 4·D) buffer per block less
//!   than bias add → GELU).
//! - [`adamw`]: one AdamW update of an f32 parameter in one pass.
//! - [`segmentor`]: the depthwise 3×3 conv and BatchNorm of UNeXt-S.
//!
//! Tensors are f32 or bf16 (one PTX entry point per dtype); parameters (LayerNorm's w and b, the
//! bias) stay f32; arithmetic is f32. [`applies`] says whether an op runs here: CUDA tensors,
//! those dtypes, and the kernels not switched off with `VASOMIM_CUDA_KERNELS=0` (then the ops run
//! their composites of candle primitives: how the GPU check compares the two).

use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp1, Layout, Result, Shape,
    Storage, Tensor,
};
use half::bf16;

pub mod segmentor;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/vasomim.ptx"));
const MODULE: &str = "vasomim";
/// Rows per chunk of the column reductions.
const CHUNK_ROWS: usize = 256;

/// Whether our kernels are on (`VASOMIM_CUDA_KERNELS` unset or not `0`), read once.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("VASOMIM_CUDA_KERNELS").map_or(true, |v| v != "0"))
}

/// Whether the kernels of this module run `ts`: CUDA tensors of f32 or bf16, kernels enabled.
pub fn applies(ts: &[&Tensor]) -> bool {
    enabled() && ts.iter().all(|t| t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16))
}

fn no_cpu(what: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{what}: a CUDA kernel (CPU tensors take the fused CPU kernels)")
}

/// The contiguous view `l` addresses in `s`.
fn view<'a, T: candle_core::cuda_backend::CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("vasomim cuda: input must be contiguous") };
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// A tensor's CUDA storage, read-locked, for kernels that take several inputs.
fn cuda_of(t: &Tensor) -> Result<(std::sync::RwLockReadGuard<'_, Storage>, Layout)> {
    let (g, l) = t.storage_and_layout();
    if !matches!(&*g, Storage::Cuda(_)) {
        candle_core::bail!("vasomim cuda: expected a CUDA tensor");
    }
    Ok((g, l.clone()))
}

fn storage(g: &Storage) -> &CudaStorage {
    match g {
        Storage::Cuda(s) => s,
        _ => unreachable!("checked by cuda_of"),
    }
}

/// A tensor over a freshly computed device buffer (no gradient history).
fn tensor<T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}

fn suffix(dt: DType) -> Result<&'static str> {
    match dt {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        d => candle_core::bail!("vasomim cuda: f32 or bf16 tensors only, got {d:?}"),
    }
}

/// Threads per block for a row of `cols` values: a multiple of 32 up to 1024.
fn row_block(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 1024) as u32
}

fn rows_cfg(rows: usize, cols: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (row_block(cols), 1, 1), shared_mem_bytes: 0 }
}

fn flat_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Grid (column blocks, row chunks) of the two-pass column reductions.
fn cols_cfg(rows: usize, cols: usize) -> (LaunchConfig, usize) {
    let chunks = rows.div_ceil(CHUNK_ROWS).max(1);
    let cfg = LaunchConfig {
        grid_dim: (cols.div_ceil(128) as u32, chunks as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    (cfg, chunks)
}

/// Sums the partial rows `part` (chunks × groups × cols) over the chunks → (groups × cols).
fn col_sum_final(
    dev: &CudaDevice,
    part: &CudaSlice<f32>,
    chunks: usize,
    groups: usize,
    cols: usize,
) -> Result<CudaSlice<f32>> {
    let out = dev.alloc_zeros::<f32>(groups * cols)?;
    let f = dev.get_or_load_custom_func("col_sum_final", MODULE, PTX)?;
    let mut b = f.builder();
    b.arg(part);
    b.arg(&out);
    candle_core::builder_arg!(b, chunks as i32, groups as i32, cols as i32);
    // SAFETY: sizes as allocated above; the kernel reads chunks·groups·cols and writes groups·cols.
    unsafe { b.launch(flat_cfg(groups * cols)) }.w()?;
    Ok(out)
}

// ------------------------------------------------------------------------------ LayerNorm

/// LayerNorm over the last dimension of x (f32 or bf16) with f32 w and b.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let (w, b) = (w.to_dtype(DType::F32)?.contiguous()?, b.to_dtype(DType::F32)?.contiguous()?);
    x.contiguous()?.apply_op3(&w, &b, LnFwd { eps: eps as f32, stats: Mutex::new(None) })
}

struct LnFwd {
    eps: f32,
    /// μ and 1/σ per row from the forward, for the backward.
    stats: Mutex<Option<(Tensor, Tensor)>>,
}

impl CustomOp3 for LnFwd {
    fn name(&self) -> &'static str {
        "vasomim-cuda-layer-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu("layer_norm")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let cols = *xl.dims().last().unwrap_or(&1);
        let rows = xl.shape().elem_count() / cols.max(1);
        let (w, b) = (view::<f32>(ws, wl)?, view::<f32>(bs, bl)?);
        let mean = dev.alloc_zeros::<f32>(rows)?;
        let rstd = dev.alloc_zeros::<f32>(rows)?;
        let f = dev.get_or_load_custom_func(&format!("layer_norm_fwd_{}", suffix(xs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(xs, xl)?;
                // SAFETY: every element is written by the kernel.
                let y = unsafe { dev.alloc::<$t>(rows * cols)? };
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&w);
                bld.arg(&b);
                bld.arg(&y);
                bld.arg(&mean);
                bld.arg(&rstd);
                candle_core::builder_arg!(bld, cols as i32, self.eps);
                // SAFETY: one block per row of `cols` values; buffers sized above.
                unsafe { bld.launch(rows_cfg(rows, cols)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let y = if xs.dtype() == DType::F32 { run!(f32) } else { run!(bf16) };
        *self.stats.lock().map_err(|_| candle_core::Error::msg("layer_norm: poisoned"))? =
            Some((tensor(mean, &dev, rows), tensor(rstd, &dev, rows)));
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some((mean, rstd)) = self.stats.lock().map_err(|_| candle_core::Error::msg("layer_norm: poisoned"))?.take()
        else {
            candle_core::bail!("layer_norm backward: the forward's statistics are gone (backward ran twice?)")
        };
        let g = g.to_dtype(x.dtype())?.contiguous()?;
        let dx = g.apply_op1(LnBwdDx { x: x.clone(), w: w.clone(), mean: mean.clone(), rstd: rstd.clone() })?;
        let dwdb = g.apply_op1(LnBwdDwDb { x: x.clone(), mean, rstd })?;
        Ok((Some(dx), Some(dwdb.get(0)?), Some(dwdb.get(1)?)))
    }
}

/// dx of LayerNorm, applied to dy.
struct LnBwdDx {
    x: Tensor,
    w: Tensor,
    mean: Tensor,
    rstd: Tensor,
}

impl CustomOp1 for LnBwdDx {
    fn name(&self) -> &'static str {
        "vasomim-cuda-layer-norm-bwd-dx"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("layer_norm backward")
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = gs.device().clone();
        let cols = *gl.dims().last().unwrap_or(&1);
        let rows = gl.shape().elem_count() / cols.max(1);
        let (xg, xl) = cuda_of(&self.x)?;
        let (wg, wl) = cuda_of(&self.w)?;
        let (mg, ml) = cuda_of(&self.mean)?;
        let (rg, rl) = cuda_of(&self.rstd)?;
        let (w, mean, rstd) =
            (view::<f32>(storage(&wg), &wl)?, view::<f32>(storage(&mg), &ml)?, view::<f32>(storage(&rg), &rl)?);
        let f = dev.get_or_load_custom_func(&format!("layer_norm_bwd_dx_{}", suffix(gs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let (x, dy) = (view::<$t>(storage(&xg), &xl)?, view::<$t>(gs, gl)?);
                // SAFETY: every element is written by the kernel.
                let dx = unsafe { dev.alloc::<$t>(rows * cols)? };
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&w);
                bld.arg(&dy);
                bld.arg(&mean);
                bld.arg(&rstd);
                bld.arg(&dx);
                candle_core::builder_arg!(bld, cols as i32);
                // SAFETY: one block per row; buffers sized above.
                unsafe { bld.launch(rows_cfg(rows, cols)) }.w()?;
                CudaStorage::wrap_cuda_slice(dx, dev.clone())
            }};
        }
        let dx = if gs.dtype() == DType::F32 { run!(f32) } else { run!(bf16) };
        Ok((dx, gl.shape().clone()))
    }
}

/// (dw; db) of LayerNorm as a (2, cols) f32 tensor, applied to dy.
struct LnBwdDwDb {
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
}

impl CustomOp1 for LnBwdDwDb {
    fn name(&self) -> &'static str {
        "vasomim-cuda-layer-norm-bwd-dwdb"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("layer_norm backward")
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = gs.device().clone();
        let cols = *gl.dims().last().unwrap_or(&1);
        let rows = gl.shape().elem_count() / cols.max(1);
        let (xg, xl) = cuda_of(&self.x)?;
        let (mg, ml) = cuda_of(&self.mean)?;
        let (rg, rl) = cuda_of(&self.rstd)?;
        let (mean, rstd) = (view::<f32>(storage(&mg), &ml)?, view::<f32>(storage(&rg), &rl)?);
        let (cfg, chunks) = cols_cfg(rows, cols);
        let part = dev.alloc_zeros::<f32>(chunks * 2 * cols)?;
        let f = dev.get_or_load_custom_func(&format!("layer_norm_bwd_dwdb_{}", suffix(gs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let (x, dy) = (view::<$t>(storage(&xg), &xl)?, view::<$t>(gs, gl)?);
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&dy);
                bld.arg(&mean);
                bld.arg(&rstd);
                bld.arg(&part);
                candle_core::builder_arg!(bld, rows as i32, cols as i32, CHUNK_ROWS as i32);
                // SAFETY: grid (column blocks, chunks); `part` holds chunks·2·cols values.
                unsafe { bld.launch(cfg) }.w()?;
            }};
        }
        if gs.dtype() == DType::F32 {
            run!(f32)
        } else {
            run!(bf16)
        }
        let out = col_sum_final(&dev, &part, chunks, 2, cols)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((2, cols))))
    }
}

// ------------------------------------------------------------------------------ softmax

/// softmax(scale·x) over the last dimension (f32 or bf16 in and out, f32 arithmetic).
pub fn softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { scale: scale as f32 })
}

struct Softmax {
    scale: f32,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "vasomim-cuda-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("softmax")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let cols = *l.dims().last().unwrap_or(&1);
        let rows = l.shape().elem_count() / cols.max(1);
        let f = dev.get_or_load_custom_func(&format!("softmax_fwd_{}", suffix(s.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(s, l)?;
                // SAFETY: every element is written by the kernel.
                let y = unsafe { dev.alloc::<$t>(rows * cols)? };
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&y);
                candle_core::builder_arg!(bld, cols as i32, self.scale);
                // SAFETY: one block per row.
                unsafe { bld.launch(rows_cfg(rows, cols)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let y = if s.dtype() == DType::F32 { run!(f32) } else { run!(bf16) };
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.to_dtype(y.dtype())?.contiguous()?;
        Ok(Some(g.apply_op1(SoftmaxBwd { y: y.clone(), scale: self.scale })?))
    }
}

struct SoftmaxBwd {
    y: Tensor,
    scale: f32,
}

impl CustomOp1 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "vasomim-cuda-softmax-bwd"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("softmax backward")
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = gs.device().clone();
        let cols = *gl.dims().last().unwrap_or(&1);
        let rows = gl.shape().elem_count() / cols.max(1);
        let (yg, yl) = cuda_of(&self.y)?;
        let f = dev.get_or_load_custom_func(&format!("softmax_bwd_{}", suffix(gs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let (y, g) = (view::<$t>(storage(&yg), &yl)?, view::<$t>(gs, gl)?);
                // SAFETY: every element is written by the kernel.
                let dx = unsafe { dev.alloc::<$t>(rows * cols)? };
                let mut bld = f.builder();
                bld.arg(&y);
                bld.arg(&g);
                bld.arg(&dx);
                candle_core::builder_arg!(bld, cols as i32, self.scale);
                // SAFETY: one block per row.
                unsafe { bld.launch(rows_cfg(rows, cols)) }.w()?;
                CudaStorage::wrap_cuda_slice(dx, dev.clone())
            }};
        }
        let dx = if gs.dtype() == DType::F32 { run!(f32) } else { run!(bf16) };
        Ok((dx, gl.shape().clone()))
    }
}

// ------------------------------------------------------------------------------ GELU

/// Exact GELU, x·Φ(x).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

/// An elementwise kernel `name_<dtype>(inputs…, out, n)` over tensors of one shape and dtype.
fn elementwise(name: &str, dev: &CudaDevice, inputs: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
    let (s0, l0) = inputs[0];
    let n = l0.shape().elem_count();
    let f = dev.get_or_load_custom_func(&format!("{name}_{}", suffix(s0.dtype())?), MODULE, PTX)?;
    macro_rules! run {
        ($t:ty) => {{
            let views = inputs.iter().map(|(s, l)| view::<$t>(s, l)).collect::<Result<Vec<_>>>()?;
            // SAFETY: every element is written by the kernel.
            let out = unsafe { dev.alloc::<$t>(n)? };
            let mut bld = f.builder();
            for v in &views {
                bld.arg(v);
            }
            bld.arg(&out);
            candle_core::builder_arg!(bld, n);
            // SAFETY: grid-stride loop over n elements.
            unsafe { bld.launch(flat_cfg(n)) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    Ok(if s0.dtype() == DType::F32 { run!(f32) } else { run!(bf16) })
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "vasomim-cuda-gelu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("gelu")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((elementwise("gelu_fwd", s.device(), &[(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.to_dtype(x.dtype())?.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&g, &GeluBwd)?))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "vasomim-cuda-gelu-bwd"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("gelu backward")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((elementwise("gelu_bwd", xs.device(), &[(xs, xl), (gs, gl)])?, xl.shape().clone()))
    }
}

// ------------------------------------------------------------------------------ bias add

/// `x + b` with b (f32, the last dimension's size) broadcast over the rows; the result has x's
/// dtype, the bias gradient is an f32 column sum.
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.to_dtype(DType::F32)?.contiguous()?, BiasAdd)
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "vasomim-cuda-bias-add"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("bias_add")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, bs: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let cols = *xl.dims().last().unwrap_or(&1);
        if bl.shape().elem_count() != cols {
            candle_core::bail!("bias_add: bias of {} values for rows of {cols}", bl.shape().elem_count());
        }
        let n = xl.shape().elem_count();
        let b = view::<f32>(bs, bl)?;
        let f = dev.get_or_load_custom_func(&format!("bias_add_{}", suffix(xs.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(xs, xl)?;
                // SAFETY: every element is written by the kernel.
                let y = unsafe { dev.alloc::<$t>(n)? };
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&b);
                bld.arg(&y);
                candle_core::builder_arg!(bld, n, cols as i32);
                // SAFETY: grid-stride loop over n elements.
                unsafe { bld.launch(flat_cfg(n)) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let y = if xs.dtype() == DType::F32 { run!(f32) } else { run!(bf16) };
        Ok((y, xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(x.dtype())?.contiguous()?;
        let db = g.apply_op1_no_bwd(&ColSum)?;
        Ok((Some(g), Some(db)))
    }
}

// ------------------------------------------------------------------------------ bias + GELU

/// GELU(z + b) with b (f32, the last dimension's size) broadcast over the rows, in z's dtype,
/// computed in f32; the bias gradient is an f32 column sum.
pub fn bias_gelu(z: &Tensor, b: &Tensor) -> Result<Tensor> {
    z.contiguous()?.apply_op2(&b.to_dtype(DType::F32)?.contiguous()?, BiasGelu)
}

struct BiasGelu;

/// Launches `<name>_<dtype>(z, b, [g,] out, n, cols)` over tensors of z's shape and dtype with an
/// f32 bias of the last dimension's size.
fn bias_rows(
    name: &str,
    zs: &CudaStorage,
    zl: &Layout,
    bs: &CudaStorage,
    bl: &Layout,
    g: Option<(&CudaStorage, &Layout)>,
) -> Result<CudaStorage> {
    let dev = zs.device().clone();
    let cols = *zl.dims().last().unwrap_or(&1);
    if bl.shape().elem_count() != cols {
        candle_core::bail!("{name}: bias of {} values for rows of {cols}", bl.shape().elem_count());
    }
    let n = zl.shape().elem_count();
    let b = view::<f32>(bs, bl)?;
    let f = dev.get_or_load_custom_func(&format!("{name}_{}", suffix(zs.dtype())?), MODULE, PTX)?;
    macro_rules! run {
        ($t:ty) => {{
            let z = view::<$t>(zs, zl)?;
            let g = g.map(|(gs, gl)| view::<$t>(gs, gl)).transpose()?;
            // SAFETY: every element is written by the kernel.
            let y = unsafe { dev.alloc::<$t>(n)? };
            let mut bld = f.builder();
            bld.arg(&z);
            bld.arg(&b);
            if let Some(g) = &g {
                bld.arg(g);
            }
            bld.arg(&y);
            candle_core::builder_arg!(bld, n, cols as i32);
            // SAFETY: grid-stride loop over n elements.
            unsafe { bld.launch(flat_cfg(n)) }.w()?;
            CudaStorage::wrap_cuda_slice(y, dev.clone())
        }};
    }
    Ok(if zs.dtype() == DType::F32 { run!(f32) } else { run!(bf16) })
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "vasomim-cuda-bias-gelu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("bias_gelu")
    }

    fn cuda_fwd(&self, zs: &CudaStorage, zl: &Layout, bs: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((bias_rows("bias_gelu_fwd", zs, zl, bs, bl, None)?, zl.shape().clone()))
    }

    fn bwd(&self, z: &Tensor, b: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(z.dtype())?.contiguous()?;
        let dz = z.apply_op2_no_bwd(&g, &BiasGeluBwd { b: b.clone() })?;
        let db = b.track_op().then(|| dz.apply_op1_no_bwd(&ColSum)).transpose()?;
        Ok((Some(dz), db))
    }
}

/// dz = g·GELU'(z + b), applied to (z, g).
struct BiasGeluBwd {
    b: Tensor,
}

impl CustomOp2 for BiasGeluBwd {
    fn name(&self) -> &'static str {
        "vasomim-cuda-bias-gelu-bwd"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("bias_gelu backward")
    }

    fn cuda_fwd(&self, zs: &CudaStorage, zl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (bg, bl) = cuda_of(&self.b)?;
        Ok((bias_rows("bias_gelu_bwd", zs, zl, storage(&bg), &bl, Some((gs, gl)))?, zl.shape().clone()))
    }
}

/// Column sums of a (rows, cols) tensor in f32 → (cols).
struct ColSum;

impl CustomOp1 for ColSum {
    fn name(&self) -> &'static str {
        "vasomim-cuda-col-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu("col_sum")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let cols = *l.dims().last().unwrap_or(&1);
        let rows = l.shape().elem_count() / cols.max(1);
        let (cfg, chunks) = cols_cfg(rows, cols);
        let part = dev.alloc_zeros::<f32>(chunks * cols)?;
        let f = dev.get_or_load_custom_func(&format!("col_sum_part_{}", suffix(s.dtype())?), MODULE, PTX)?;
        macro_rules! run {
            ($t:ty) => {{
                let x = view::<$t>(s, l)?;
                let mut bld = f.builder();
                bld.arg(&x);
                bld.arg(&part);
                candle_core::builder_arg!(bld, rows as i32, cols as i32, CHUNK_ROWS as i32);
                // SAFETY: grid (column blocks, chunks); `part` holds chunks·cols values.
                unsafe { bld.launch(cfg) }.w()?;
            }};
        }
        if s.dtype() == DType::F32 {
            run!(f32)
        } else {
            run!(bf16)
        }
        let out = col_sum_final(&dev, &part, chunks, 1, cols)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(cols)))
    }
}

// ------------------------------------------------------------------------------ AdamW

/// The constants of one AdamW update (see `optim.rs`).
#[derive(Clone, Copy, Debug)]
pub struct AdamWConsts {
    pub decay: Option<f32>,
    pub b1: f32,
    pub one_m_b1: f32,
    pub b2: f32,
    pub one_m_b2: f32,
    pub inv_bc2_sqrt: f32,
    pub eps: f32,
    pub step_size: f32,
}

/// One fused AdamW update of the f32 CUDA parameter `w` in place with gradient `g` and moments
/// `m`, `v`; returns the new moments.
pub fn adamw(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: AdamWConsts) -> Result<(Tensor, Tensor)> {
    let op = AdamWOp { g: g.contiguous()?, m: m.contiguous()?, v: v.contiguous()?, c, out: Mutex::new(None) };
    w.inplace_op1(&op)?;
    let (m2, v2, dev) = op
        .out
        .into_inner()
        .map_err(|_| candle_core::Error::msg("adamw: poisoned"))?
        .ok_or_else(|| candle_core::Error::msg("adamw: the CUDA kernel did not run"))?;
    Ok((tensor(m2, &dev, w.shape().clone()), tensor(v2, &dev, w.shape().clone())))
}

/// The new moments an [`AdamWOp`] computed, and their device.
type Moments = (CudaSlice<f32>, CudaSlice<f32>, CudaDevice);

struct AdamWOp {
    g: Tensor,
    m: Tensor,
    v: Tensor,
    c: AdamWConsts,
    out: Mutex<Option<Moments>>,
}

impl InplaceOp1 for AdamWOp {
    fn name(&self) -> &'static str {
        "vasomim-cuda-adamw"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("adamw: a CUDA kernel (CPU parameters take the fused CPU update)")
    }

    fn cuda_fwd(&self, ws: &mut CudaStorage, wl: &Layout) -> Result<()> {
        let dev = ws.device().clone();
        let Some((a, b)) = wl.contiguous_offsets() else { candle_core::bail!("adamw: parameter must be contiguous") };
        let n = b - a;
        let (gg, gl) = cuda_of(&self.g)?;
        let (mg, ml) = cuda_of(&self.m)?;
        let (vg, vl) = cuda_of(&self.v)?;
        let (g, m, v) =
            (view::<f32>(storage(&gg), &gl)?, view::<f32>(storage(&mg), &ml)?, view::<f32>(storage(&vg), &vl)?);
        if g.len() != n || m.len() != n || v.len() != n {
            candle_core::bail!("adamw: parameter, gradient and moments differ in size");
        }
        let CudaStorageSlice::F32(wslice) = &mut ws.slice else { candle_core::bail!("adamw: f32 parameters only") };
        let mut w = wslice.slice_mut(a..b);
        // SAFETY: every element is written by the kernel.
        let (m2, v2) = unsafe { (dev.alloc::<f32>(n)?, dev.alloc::<f32>(n)?) };
        let f = dev.get_or_load_custom_func("adamw_f32", MODULE, PTX)?;
        let c = self.c;
        let mut bld = f.builder();
        bld.arg(&mut w);
        bld.arg(&g);
        bld.arg(&m);
        bld.arg(&v);
        bld.arg(&m2);
        bld.arg(&v2);
        candle_core::builder_arg!(
            bld,
            n,
            c.decay.is_some() as i32,
            c.decay.unwrap_or(1.0),
            c.b1,
            c.one_m_b1,
            c.b2,
            c.one_m_b2,
            c.inv_bc2_sqrt,
            c.eps,
            c.step_size
        );
        // SAFETY: grid-stride loop over n elements of buffers of n values.
        unsafe { bld.launch(flat_cfg(n)) }.w()?;
        *self.out.lock().map_err(|_| candle_core::Error::msg("adamw: poisoned"))? = Some((m2, v2, dev));
        Ok(())
    }
}
