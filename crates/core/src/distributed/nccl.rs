//! The product collective: NCCL through cudarc (the `nccl` feature of the CUDA build;
//! docs/DISTRIBUTED.md).
//!
//! Rendezvous without a store: every rank sets `NCCL_COMM_ID=<host>:<port>` (the launcher does,
//! on a port of its own: torchrun's `MASTER_PORT` belongs to its store), which makes
//! `ncclGetUniqueId` return the same id everywhere and rank 0 host the bootstrap root there.
//! Each call runs on the model device's stream (the device must be made with
//! `Device::new_cuda_with_stream`, see [`crate::device`]), so it is ordered with the step's
//! kernels without extra synchronisation.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp as NcclOp};
use candle_core::{CpuStorage, CudaStorage, Device, InplaceOp1, Layout, Result, Tensor};

use super::{Collective, ReduceOp};

/// A communicator, used by one call at a time (the mutex). SAFETY of `Send`: an NCCL
/// communicator may be used from any thread as long as calls on it do not overlap.
struct SendComm(Comm);
unsafe impl Send for SendComm {}

/// An NCCL process group of `world_size` ranks on one CUDA device each.
pub struct Nccl {
    comm: Mutex<SendComm>,
    device: Device,
    rank: usize,
    world_size: usize,
}

impl Nccl {
    /// Joins the group as `rank` of `world_size` on `device`. Needs `NCCL_COMM_ID` in the
    /// environment when `world_size` > 1 (see the module doc).
    pub fn join(device: &Device, rank: usize, world_size: usize) -> Result<Nccl> {
        if world_size > 1 && std::env::var_os("NCCL_COMM_ID").is_none() {
            candle_core::bail!("nccl: NCCL_COMM_ID=<rank 0 host>:<port> must be set on every rank");
        }
        let stream = device.as_cuda_device()?.cuda_stream();
        let err = |what: &str, e: &dyn std::fmt::Debug| candle_core::Error::msg(format!("nccl: {what}: {e:?}"));
        let id = Id::new().map_err(|e| err("unique id", &e))?;
        let comm = Comm::from_rank(stream, rank, world_size, id)
            .map_err(|e| err(&format!("joining as rank {rank} of {world_size}"), &e))?;
        Ok(Nccl { comm: Mutex::new(SendComm(comm)), device: device.clone(), rank, world_size })
    }

    fn run(&self, t: &Tensor, call: Call) -> Result<Tensor> {
        if t.rank() != 1 || !t.device().is_cuda() {
            candle_core::bail!("nccl: 1-D CUDA tensors only, got {:?} on {:?}", t.dims(), t.device());
        }
        let out = t.copy()?;
        out.inplace_op1(&NcclCall { comm: &self.comm, call })?;
        Ok(out)
    }
}

#[derive(Clone, Copy)]
enum Call {
    AllReduce(ReduceOp),
    Broadcast(usize),
}

struct NcclCall<'a> {
    comm: &'a Mutex<SendComm>,
    call: Call,
}

impl InplaceOp1 for NcclCall<'_> {
    fn name(&self) -> &'static str {
        "vasomim-nccl"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("nccl: CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("nccl: tensor must be contiguous") };
        let comm = self.comm.lock().map_err(|_| candle_core::Error::msg("nccl: communicator poisoned"))?;
        let dtype = s.dtype();
        macro_rules! call {
            ($t:ty) => {{
                let slice = s.as_cuda_slice_mut::<$t>()?;
                let mut view = slice.slice_mut(a..b);
                match self.call {
                    Call::AllReduce(op) => {
                        let op = match op {
                            ReduceOp::Sum => NcclOp::Sum,
                            ReduceOp::Avg => NcclOp::Avg,
                        };
                        comm.0.all_reduce_in_place(&mut view, &op).map(|_| ())
                    }
                    Call::Broadcast(root) => comm.0.broadcast_in_place(&mut view, root as i32).map(|_| ()),
                }
            }};
        }
        let r = match dtype {
            candle_core::DType::F32 => call!(f32),
            candle_core::DType::F64 => call!(f64),
            d => candle_core::bail!("nccl: f32 or f64 tensors only, got {d:?}"),
        };
        r.map_err(|e| candle_core::Error::msg(format!("nccl: {e:?}")))
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.run(t, Call::AllReduce(op))
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.run(t, Call::Broadcast(root))
    }

    fn barrier(&self) -> Result<()> {
        // A one-value all-reduce, read back: every rank has reached this point.
        let one = Tensor::ones(1, candle_core::DType::F32, &self.device)?;
        self.all_reduce(&one, ReduceOp::Sum)?.to_vec1::<f32>().map(|_| ())
    }
}
