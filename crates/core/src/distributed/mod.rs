//! Data-parallel training across processes (one per device): the collective interface, the
//! gradient bucketing on top of it, and the rendezvous read from the launcher's environment.
//!
//! - [`Collective`]: rank, world size, all-reduce (sum / average), broadcast and barrier on
//!   1-D tensors of any device. A peer that dies makes the next call fail with an error naming
//!   it ([`peer_lost`]). Implementations: [`tcp`] (processes on one machine over loopback TCP,
//!   a test double for machines without GPUs) and NCCL (the `nccl` feature of the CUDA build).
//! - [`plan_buckets`], [`all_reduce_grads`], [`broadcast_vars`], [`all_reduce_values`]: what a
//!   data-parallel step does with a collective, written once for every implementation:
//!   gradients in name order flattened into fixed buckets and summed, parameters broadcast
//!   from rank 0, loss terms and counters reduced for logging. A group of one rank takes the
//!   same path (the GPU check runs NCCL at world size 1 through it).
//! - [`Rendezvous`]: rank, world size, local rank and the master's address from torchrun's
//!   (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or Slurm's
//!   (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, the first host of `SLURM_JOB_NODELIST`)
//!   variables; [`first_host`] expands Slurm's bracket ranges (`node[01-04,07]` → `node01`).

#[cfg(feature = "nccl")]
pub mod nccl;
pub mod tcp;

use candle_core::{DType, Device, Result, Tensor, Var};

/// How an all-reduce combines the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size.
    Avg,
}

/// A process group of `world_size` ranks. Every rank must make the same calls in the same order
/// with tensors of the same shape and dtype (1-D, contiguous, f32 or f64); results live on the
/// device of the input. Calls block until every rank has made them; a rank that died (or an
/// implementation-defined timeout) makes them fail with an error naming the peer, never hang
/// forever.
pub trait Collective: Send {
    /// This process's rank in 0..world_size.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The implementation, for logs and errors (`tcp`, `nccl`).
    fn backend(&self) -> &'static str;
    /// The element-wise reduction of `t` over all ranks, the same on every rank.
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor>;
    /// Rank `root`'s `t` on every rank (`t` gives the shape and dtype elsewhere).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// The error of a collective call whose peer went away: one message naming the call, the peer
/// and what was seen, so the run stops with a clear cause instead of a stack of I/O errors.
pub fn peer_lost(backend: &str, op: &str, peer: usize, what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::msg(format!(
        "distributed ({backend}): rank {peer} is gone during {op} ({what}); stopping this rank too"
    ))
}

/// Gradient bucket size (bytes of f32): large enough that per-call latency does not matter,
/// small enough not to double the memory of ViT-B's 344 MB of gradients at once (DDP: 25 MB).
pub const BUCKET_BYTES: usize = 64 << 20;

/// Tensors grouped into buckets: indices into `names`, taken in name order (the order every
/// rank agrees on whatever the creation order), consecutive ones while the bucket's f32 size
/// stays within `bucket_bytes` (a larger tensor gets a bucket of its own).
pub fn plan_buckets(names: &[&str], numels: &[usize], bucket_bytes: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].cmp(names[b]));
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for i in order {
        let b = numels[i] * 4;
        match buckets.last_mut() {
            Some(last) if bytes + b <= bucket_bytes => {
                last.push(i);
                bytes += b;
            }
            _ => {
                buckets.push(vec![i]);
                bytes = b;
            }
        }
    }
    buckets
}

/// Apply `f` to `tensors` bucket by bucket: each bucket flattened to one f32 tensor on its
/// device, `f` applied, the result cut back into the tensors (shape and dtype restored). Public
/// for the GPU check, which times the gradient path at world size 1 (where
/// [`all_reduce_grads`] returns at once).
pub fn bucketed(
    names: &[&str],
    tensors: &mut [Tensor],
    bucket_bytes: usize,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    if names.len() != tensors.len() {
        candle_core::bail!("{} names for {} tensors", names.len(), tensors.len());
    }
    let numels: Vec<usize> = tensors.iter().map(|t| t.elem_count()).collect();
    for bucket in plan_buckets(names, &numels, bucket_bytes) {
        let flat =
            bucket.iter().map(|&i| tensors[i].flatten_all()?.to_dtype(DType::F32)).collect::<Result<Vec<_>>>()?;
        let reduced = f(&Tensor::cat(&flat, 0)?)?;
        let mut offset = 0;
        for &i in &bucket {
            let t = &tensors[i];
            tensors[i] = reduced.narrow(0, offset, numels[i])?.reshape(t.shape())?.to_dtype(t.dtype())?;
            offset += numels[i];
        }
    }
    Ok(())
}

/// Sum gradients across ranks in place (each rank weighed its loss by its share of the batch):
/// `names[i]` names `grads[i]`; buckets of [`plan_buckets`], so every rank reduces the same
/// elements in the same calls.
pub fn all_reduce_grads(c: &dyn Collective, names: &[&str], grads: &mut [Tensor], bucket_bytes: usize) -> Result<()> {
    bucketed(names, grads, bucket_bytes, |t| c.all_reduce(t, ReduceOp::Sum))
}

/// Set every variable to rank 0's value (the start of a run: one model on every rank).
pub fn broadcast_vars(c: &dyn Collective, vars: &[(&str, &Var)], bucket_bytes: usize) -> Result<()> {
    let names: Vec<&str> = vars.iter().map(|(n, _)| *n).collect();
    let mut values: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().detach()).collect();
    bucketed(&names, &mut values, bucket_bytes, |t| c.broadcast(t, 0))?;
    for ((_, var), v) in vars.iter().zip(&values) {
        var.set(v)?;
    }
    Ok(())
}

/// Reduce a few host values (loss terms, counters) in f64 over `device` (where the collective
/// can move them: NCCL reduces device buffers only).
pub fn all_reduce_values(c: &dyn Collective, values: &[f64], op: ReduceOp, device: &Device) -> Result<Vec<f64>> {
    if values.is_empty() {
        return Ok(values.to_vec());
    }
    let t = Tensor::from_slice(values, values.len(), device)?;
    c.all_reduce(&t, op)?.to_vec1::<f64>()
}

/// Which launcher the rendezvous came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun / `torch.distributed.launch` (or our `--gpus`, which sets the same variables).
    Torchrun,
    Slurm,
}

/// Where this process stands in the group and how to reach rank 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    pub launcher: Launcher,
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this node: the device index (`cuda:<local_rank>`).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// `MASTER_PORT` when neither launcher gives one (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

impl Rendezvous {
    /// The port the collective's bootstrap listens on at `master_addr`. Under torchrun,
    /// `MASTER_PORT` is held by torchrun's own store, so the collective takes the next one.
    pub fn comm_port(&self) -> u16 {
        match self.launcher {
            Launcher::Torchrun => self.master_port.wrapping_add(1),
            Launcher::Slurm => self.master_port,
        }
    }

    /// The rendezvous from the process environment (see [`Rendezvous::from_vars`]).
    pub fn from_env() -> std::result::Result<Option<Rendezvous>, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The rendezvous from launcher variables (`get` looks one up): torchrun's `RANK` and
    /// `WORLD_SIZE` first, else Slurm's `SLURM_PROCID` and `SLURM_NTASKS`; `None` when neither
    /// is set (a single process). `MASTER_ADDR` / `MASTER_PORT` override Slurm's defaults (the
    /// first host of `SLURM_JOB_NODELIST`, port 29500). A bad value is an error naming it.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> std::result::Result<Option<Rendezvous>, String> {
        let num = |k: &str| -> std::result::Result<Option<usize>, String> {
            match get(k) {
                None => Ok(None),
                Some(v) => {
                    v.trim().parse::<usize>().map(Some).map_err(|_| format!("{k}={v:?} is not a non-negative integer"))
                }
            }
        };
        let port = |k: &str| -> std::result::Result<Option<u16>, String> {
            match get(k) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u16>() {
                    Ok(p) if p > 0 => Ok(Some(p)),
                    _ => Err(format!("{k}={v:?} is not a TCP port (1-65535)")),
                },
            }
        };
        let (launcher, rank, world, local, addr) = if let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?)
        {
            let addr = get("MASTER_ADDR").ok_or("RANK and WORLD_SIZE are set but MASTER_ADDR is not")?;
            (Launcher::Torchrun, rank, world, num("LOCAL_RANK")?.unwrap_or(0), addr)
        } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            let addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let list = get("SLURM_JOB_NODELIST")
                        .or_else(|| get("SLURM_NODELIST"))
                        .ok_or("SLURM_PROCID is set but neither SLURM_JOB_NODELIST nor MASTER_ADDR is")?;
                    first_host(&list).map_err(|e| format!("SLURM_JOB_NODELIST={list:?}: {e}"))?
                }
            };
            (Launcher::Slurm, rank, world, num("SLURM_LOCALID")?.unwrap_or(0), addr)
        } else {
            return Ok(None);
        };
        if world == 0 || rank >= world {
            return Err(format!("rank {rank} is not below the world size {world}"));
        }
        if addr.trim().is_empty() {
            return Err("MASTER_ADDR is empty".into());
        }
        let master_port = port("MASTER_PORT")?.unwrap_or(DEFAULT_MASTER_PORT);
        Ok(Some(Rendezvous { launcher, rank, world_size: world, local_rank: local, master_addr: addr, master_port }))
    }
}

/// The first host of a Slurm node list: `node[01-04,07],gpu5` → `node01`, `a[3-4]-b[09-10]` →
/// `a3-b09`, `host` → `host`. Bracket ranges keep their zero padding.
pub fn first_host(list: &str) -> std::result::Result<String, String> {
    let list = list.trim();
    // The first top-level entry: commas inside brackets belong to the ranges.
    let mut depth = 0i32;
    let end = list
        .char_indices()
        .find(|&(_, ch)| {
            match ch {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            ch == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let entry = &list[..end];
    let mut host = String::new();
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..].find(']').ok_or("unbalanced '['")? + open;
        let first = rest[open + 1..close].split(',').next().unwrap_or("");
        let start = first.split('-').next().unwrap_or("").trim();
        if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad range [{}]", &rest[open + 1..close]));
        }
        host.push_str(start);
        rest = &rest[close + 1..];
    }
    if rest.contains(']') {
        return Err("unbalanced ']'".into());
    }
    host.push_str(rest);
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rdv(vars: &[(&str, &str)]) -> std::result::Result<Option<Rendezvous>, String> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Rendezvous::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn slurm_first_host() {
        assert_eq!(first_host("node[01-04,07]").unwrap(), "node01");
        assert_eq!(first_host("node[07,01-04]").unwrap(), "node07");
        assert_eq!(first_host("gpu5,node[1-2]").unwrap(), "gpu5");
        assert_eq!(first_host("node[1-2],gpu5").unwrap(), "node1");
        assert_eq!(first_host("rack[3-4]-n[009-010]").unwrap(), "rack3-n009");
        assert_eq!(first_host(" single ").unwrap(), "single");
        assert!(first_host("node[01-04").unwrap_err().contains("unbalanced"));
        assert!(first_host("node[a-b]").unwrap_err().contains("bad range"));
        assert!(first_host("").is_err());
    }

    #[test]
    fn torchrun_variables() {
        let r = rdv(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(r.launcher, Launcher::Torchrun);
        assert_eq!((r.rank, r.world_size, r.local_rank), (3, 8, 3));
        assert_eq!((r.master_addr.as_str(), r.master_port, r.comm_port()), ("10.0.0.1", 29400, 29401));
    }

    #[test]
    fn slurm_variables_and_precedence() {
        let s = [
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gn[12-13]"),
        ];
        let r = rdv(&s).unwrap().unwrap();
        assert_eq!(r.launcher, Launcher::Slurm);
        assert_eq!((r.rank, r.world_size, r.local_rank), (5, 16, 1));
        assert_eq!((r.master_addr.as_str(), r.comm_port()), ("gn12", DEFAULT_MASTER_PORT));
        // MASTER_ADDR / MASTER_PORT override Slurm's defaults.
        let mut o = s.to_vec();
        o.extend([("MASTER_ADDR", "head"), ("MASTER_PORT", "1234")]);
        let r = rdv(&o).unwrap().unwrap();
        assert_eq!((r.master_addr.as_str(), r.comm_port()), ("head", 1234));
        // torchrun's variables win over Slurm's (torchrun started inside an allocation).
        o.extend([("RANK", "0"), ("WORLD_SIZE", "2")]);
        assert_eq!(rdv(&o).unwrap().unwrap().launcher, Launcher::Torchrun);
    }

    #[test]
    fn no_launcher_and_bad_values() {
        assert_eq!(rdv(&[]).unwrap(), None);
        assert_eq!(rdv(&[("RANK", "0")]).unwrap(), None);
        let e = rdv(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).unwrap_err();
        assert!(e.contains("rank 2 is not below the world size 2"), "{e}");
        let e = rdv(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("RANK=\"x\""), "{e}");
        let e = rdv(&[("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("MASTER_ADDR"), "{e}");
        let e = rdv(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")]).unwrap_err();
        assert!(e.contains("MASTER_PORT"), "{e}");
        let e = rdv(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).unwrap_err();
        assert!(e.contains("SLURM_JOB_NODELIST"), "{e}");
    }

    #[test]
    fn buckets_follow_names_and_size() {
        let names = ["b", "a", "c", "d"];
        // 4 bytes per element; bucket of 40 bytes = 10 floats.
        let b = plan_buckets(&names, &[4, 6, 20, 3], 40);
        assert_eq!(b, vec![vec![1, 0], vec![2], vec![3]]);
        assert_eq!(plan_buckets(&[], &[], 40), Vec::<Vec<usize>>::new());
    }
}
