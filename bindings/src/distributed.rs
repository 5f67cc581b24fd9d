//! Data-parallel pre-training: the launcher's rendezvous and the process group of a `Model`.
//!
//! - [`rendezvous`]: rank, world size, local rank and rank 0's address from torchrun's or
//!   Slurm's variables (null in a plain process).
//! - `Model.joinGroup`: join the group (the TCP test collective; NCCL in the CUDA build) and
//!   take rank 0's parameters; every later `trainBatch` averages gradients and losses across it.
//! - `Model.allReduce`: sum or average a few numbers across the group (logging counters).

use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use vasomim_core::distributed::{self, tcp::TcpCollective, Collective, Launcher, ReduceOp, Rendezvous};

use crate::model::Model;
use crate::{failed, invalid};

/// Where this process stands in a launched group.
#[napi(object)]
pub struct RendezvousInfo {
    /// `torchrun` (also `vasomim pretrain --gpus`) or `slurm`.
    pub launcher: String,
    pub rank: u32,
    pub world_size: u32,
    /// Rank on this node: the device index.
    pub local_rank: u32,
    pub master_addr: String,
    pub master_port: u32,
    /// The port the collective's bootstrap uses (MASTER_PORT + 1 under torchrun).
    pub comm_port: u32,
}

/// The rendezvous from the environment (torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
/// `MASTER_ADDR`, `MASTER_PORT`, else Slurm's `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
/// `SLURM_JOB_NODELIST`); null when no launcher set them; a bad value is an error naming it.
#[napi]
pub fn rendezvous() -> Result<Option<RendezvousInfo>> {
    let r = Rendezvous::from_env().map_err(invalid)?;
    Ok(r.map(|r| RendezvousInfo {
        launcher: match r.launcher {
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "slurm",
        }
        .into(),
        rank: r.rank as u32,
        world_size: r.world_size as u32,
        local_rank: r.local_rank as u32,
        master_addr: r.master_addr.clone(),
        master_port: r.master_port as u32,
        comm_port: r.comm_port() as u32,
    }))
}

#[napi(object)]
pub struct JoinGroupOptions {
    /// `tcp`: the CPU test collective (processes talking TCP through rank 0; a test double, not
    /// a product path). `nccl`: the CUDA build's NCCL.
    pub backend: String,
    pub rank: u32,
    pub world_size: u32,
    /// Rank 0's host and the collective's port.
    pub addr: String,
    pub port: u32,
    /// Seconds to wait for the peers to join and, later, for any one message (default 600).
    pub timeout_s: Option<f64>,
}

fn reduce_op(op: Option<String>) -> Result<ReduceOp> {
    match op.as_deref().unwrap_or("sum") {
        "sum" => Ok(ReduceOp::Sum),
        "avg" => Ok(ReduceOp::Avg),
        o => Err(invalid(format!("reduce op {o:?} is not sum or avg"))),
    }
}

#[napi]
impl Model {
    /// Join a data-parallel group and take rank 0's parameters (every rank must be at the same
    /// optimizer step: resumed from the same checkpoint). Resolves once every rank has joined.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn join_group(&self, options: JoinGroupOptions) -> Result<crate::Pending<()>> {
        let o = options;
        if o.world_size == 0 || o.rank >= o.world_size {
            return Err(invalid(format!("rank {} is not below the world size {}", o.rank, o.world_size)));
        }
        let port = u16::try_from(o.port).ok().filter(|p| *p > 0).ok_or_else(|| invalid("port must be in 1..65535"))?;
        let timeout = o.timeout_s.unwrap_or(600.0);
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(invalid(format!("timeoutS ({timeout}) must be > 0")));
        }
        let (rank, world) = (o.rank as usize, o.world_size as usize);
        let timeout = Duration::from_secs_f64(timeout);
        if !matches!(o.backend.as_str(), "tcp" | "nccl") {
            return Err(invalid(format!("backend {:?} is not tcp or nccl", o.backend)));
        }
        if o.backend == "nccl" && !cfg!(feature = "nccl") {
            return Err(failed(
                "the NCCL backend is not in this build (build it with `--features nccl`: docs/CUDA.md)",
            ));
        }
        Ok(self.state.task("Model.joinGroup", move |t| {
            let c: Box<dyn Collective> = match o.backend.as_str() {
                "tcp" => Box::new(TcpCollective::connect(rank, world, &o.addr, port, timeout)?),
                _ => nccl(t.device(), rank, world, &o.addr, port)?,
            };
            t.set_collective(c)
        }))
    }

    /// Sum (default) or average `values` over the group (identity without one), f64.
    #[napi(catch_unwind, ts_return_type = "Promise<Float64Array>")]
    pub fn all_reduce(&self, values: Float64Array, op: Option<String>) -> Result<crate::Pending<Float64Array>> {
        let (op, values) = (reduce_op(op)?, values.to_vec());
        Ok(self.state.task("Model.allReduce", move |t| {
            let out = match t.collective() {
                Some(c) => distributed::all_reduce_values(c, &values, op, t.device())?,
                None => values,
            };
            Ok(out.into())
        }))
    }
}

/// NCCL on the model's device. The bootstrap root is rank 0's `addr:port` through `NCCL_COMM_ID`
/// (unless the launcher set it), so every rank derives the same unique id without a store.
#[cfg(feature = "nccl")]
fn nccl(
    device: &candle_core::Device,
    rank: usize,
    world: usize,
    addr: &str,
    port: u16,
) -> candle_core::Result<Box<dyn Collective>> {
    if std::env::var_os("NCCL_COMM_ID").is_none() {
        std::env::set_var("NCCL_COMM_ID", format!("{addr}:{port}"));
    }
    Ok(Box::new(vasomim_core::distributed::nccl::Nccl::join(device, rank, world)?))
}

#[cfg(not(feature = "nccl"))]
fn nccl(_: &candle_core::Device, _: usize, _: usize, _: &str, _: u16) -> candle_core::Result<Box<dyn Collective>> {
    candle_core::bail!("the NCCL backend is not in this build")
}
