//! The CPU test collective: ranks as processes on one machine (or a few), talking TCP to rank
//! 0, which hosts. A test double for machines without GPUs (the orchestration, sharding, resume
//! and failure handling are tested through it), not a product path: everything goes through
//! rank 0 and host memory.
//!
//! - [`TcpCollective::connect`]: rank 0 listens on the address, the others connect (retrying
//!   until `timeout`) and say who they are; ranks and world size are checked.
//! - The protocol: every call is a 16-byte header (call, dtype, element count) and the raw
//!   little-endian payload. Rank 0 reduces in rank order (so every rank gets bit-identical
//!   results) and sends the result back. A header that differs from rank 0's is an error
//!   (ranks out of step). When rank 0 loses a peer it tells the others which rank died before
//!   failing, so every rank reports the same cause.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use candle_core::{DType, Result, Tensor};

use super::{peer_lost, Collective, ReduceOp};

const MAGIC: u32 = 0x5653_4d4d; // "VSMM"
const CALL_SUM: u32 = 1;
const CALL_AVG: u32 = 2;
const CALL_BROADCAST: u32 = 3;
const CALL_BARRIER: u32 = 4;
/// Rank 0 → the others: rank `count` is gone (or [`OUT_OF_STEP`]), stop.
const CALL_ABORT: u32 = 0xdead;
/// The `count` of an abort when the ranks made different calls.
const OUT_OF_STEP: u64 = u32::MAX as u64;

/// A process group over TCP through rank 0 (see the module docs).
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: the streams of ranks 1..world in rank order; others: the stream to rank 0.
    streams: Vec<TcpStream>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    call: u32,
    dtype: u32,
    count: u64,
}

impl Header {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.call.to_le_bytes());
        b[4..8].copy_from_slice(&self.dtype.to_le_bytes());
        b[8..].copy_from_slice(&self.count.to_le_bytes());
        b
    }
    fn parse(b: &[u8; 16]) -> Self {
        let u = |r: std::ops::Range<usize>| u32::from_le_bytes(b[r].try_into().unwrap());
        Header { call: u(0..4), dtype: u(4..8), count: u64::from_le_bytes(b[8..].try_into().unwrap()) }
    }
}

fn call_name(call: u32) -> &'static str {
    match call {
        CALL_SUM | CALL_AVG => "all-reduce",
        CALL_BROADCAST => "broadcast",
        _ => "barrier",
    }
}

/// A tensor's values as f64 or f32 little-endian bytes, with the dtype code.
fn payload(t: &Tensor) -> Result<(u32, Vec<u8>)> {
    if t.rank() != 1 {
        candle_core::bail!("collective calls take 1-D tensors, got shape {:?}", t.dims());
    }
    Ok(match t.dtype() {
        DType::F32 => (0, t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::F64 => (1, t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        d => candle_core::bail!("collective calls take f32 or f64 tensors, got {d:?}"),
    })
}

fn tensor_of(dtype: u32, bytes: &[u8], like: &Tensor) -> Result<Tensor> {
    let (n, dev) = (like.elem_count(), like.device());
    if dtype == 0 {
        let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        Tensor::from_vec(v, n, dev)
    } else {
        let v: Vec<f64> = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
        Tensor::from_vec(v, n, dev)
    }
}

/// `acc += other`, element-wise, in the payload's dtype (what a device all-reduce would do).
fn add_into(dtype: u32, acc: &mut [u8], other: &[u8]) {
    if dtype == 0 {
        for (a, b) in acc.chunks_exact_mut(4).zip(other.chunks_exact(4)) {
            let s = f32::from_le_bytes(a[..].try_into().unwrap()) + f32::from_le_bytes(b.try_into().unwrap());
            a.copy_from_slice(&s.to_le_bytes());
        }
    } else {
        for (a, b) in acc.chunks_exact_mut(8).zip(other.chunks_exact(8)) {
            let s = f64::from_le_bytes(a[..].try_into().unwrap()) + f64::from_le_bytes(b.try_into().unwrap());
            a.copy_from_slice(&s.to_le_bytes());
        }
    }
}

fn scale(dtype: u32, acc: &mut [u8], k: f64) {
    if dtype == 0 {
        for a in acc.chunks_exact_mut(4) {
            let v = f32::from_le_bytes(a[..].try_into().unwrap()) / k as f32;
            a.copy_from_slice(&v.to_le_bytes());
        }
    } else {
        for a in acc.chunks_exact_mut(8) {
            let v = f64::from_le_bytes(a[..].try_into().unwrap()) / k;
            a.copy_from_slice(&v.to_le_bytes());
        }
    }
}

fn io_err(what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::msg(format!("distributed (tcp): {what}"))
}

impl TcpCollective {
    /// Join a group of `world` ranks whose rank 0 hosts at `addr:port`: rank 0 binds there and
    /// waits for the others, the others connect, retrying until `timeout` (rank 0 may start
    /// later). Calls then fail when a peer is silent for `timeout`.
    pub fn connect(rank: usize, world: usize, addr: &str, port: u16, timeout: Duration) -> Result<Self> {
        if world == 0 || rank >= world {
            candle_core::bail!("rank {rank} is not below the world size {world}");
        }
        if rank == 0 {
            let l = TcpListener::bind((addr, port))
                .map_err(|e| io_err(format!("rank 0 cannot listen on {addr}:{port}: {e}")))?;
            return Self::host(l, world, timeout);
        }
        let deadline = Instant::now() + timeout;
        let stream = loop {
            let tried = (addr, port)
                .to_socket_addrs()
                .map_err(|e| io_err(format!("{addr}:{port}: {e}")))?
                .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok());
            match tried {
                Some(s) => break s,
                None if Instant::now() >= deadline => {
                    return Err(io_err(format!(
                        "rank {rank} could not reach rank 0 at {addr}:{port} within {} s",
                        timeout.as_secs()
                    )))
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Self::configure(&stream, timeout)?;
        let mut hello = [0u8; 16];
        hello[..4].copy_from_slice(&MAGIC.to_le_bytes());
        hello[4..8].copy_from_slice(&(rank as u32).to_le_bytes());
        hello[8..16].copy_from_slice(&(world as u64).to_le_bytes());
        (&stream).write_all(&hello).map_err(|e| peer_lost("tcp", "connect", 0, e))?;
        let mut ack = [0u8; 16];
        (&stream).read_exact(&mut ack).map_err(|e| peer_lost("tcp", "connect", 0, e))?;
        let h = Header::parse(&ack);
        if h.call == CALL_ABORT {
            return Err(io_err(format!("rank 0 refused rank {rank}: world size or rank clash ({})", h.count)));
        }
        Ok(TcpCollective { rank, world, streams: vec![stream] })
    }

    /// Rank 0 on an already bound listener: accept ranks 1..world (within `timeout`).
    pub fn host(listener: TcpListener, world: usize, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        listener.set_nonblocking(true).map_err(io_err)?;
        let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        while slots.iter().any(|s| s.is_none()) {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(io_err)?;
                    Self::configure(&s, timeout)?;
                    let mut hello = [0u8; 16];
                    if (&s).read_exact(&mut hello).is_err() {
                        continue;
                    }
                    let magic = u32::from_le_bytes(hello[..4].try_into().unwrap());
                    let r = u32::from_le_bytes(hello[4..8].try_into().unwrap()) as usize;
                    let w = u64::from_le_bytes(hello[8..].try_into().unwrap()) as usize;
                    let ok = magic == MAGIC && w == world && (1..world).contains(&r) && slots[r - 1].is_none();
                    if !ok {
                        let refuse = Header { call: CALL_ABORT, dtype: 0, count: w as u64 };
                        let _ = (&s).write_all(&refuse.bytes());
                        if magic == MAGIC {
                            return Err(io_err(format!(
                                "rank {r} joined with world size {w}; rank 0 has {world} (or the rank came twice)"
                            )));
                        }
                        continue;
                    }
                    slots[r - 1] = Some(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<String> = slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        return Err(io_err(format!(
                            "rank(s) {} did not join within {} s",
                            missing.join(", "),
                            timeout.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        let streams: Vec<TcpStream> = slots.into_iter().map(|s| s.expect("every slot filled")).collect();
        let ack = Header { call: CALL_BARRIER, dtype: 0, count: 0 }.bytes();
        for (i, s) in streams.iter().enumerate() {
            (&*s).write_all(&ack).map_err(|e| peer_lost("tcp", "connect", i + 1, e))?;
        }
        Ok(TcpCollective { rank: 0, world, streams })
    }

    fn configure(s: &TcpStream, timeout: Duration) -> Result<()> {
        s.set_nodelay(true).map_err(io_err)?;
        s.set_read_timeout(Some(timeout)).map_err(io_err)?;
        s.set_write_timeout(Some(timeout)).map_err(io_err)
    }

    /// Rank 0: tell every other peer that `dead` is gone (best effort) and return the error.
    fn abort(&self, op: &str, dead: usize, what: impl std::fmt::Display) -> candle_core::Error {
        let h = Header { call: CALL_ABORT, dtype: 0, count: dead as u64 }.bytes();
        for (i, s) in self.streams.iter().enumerate() {
            if i + 1 != dead {
                let _ = (&*s).write_all(&h);
            }
        }
        peer_lost("tcp", op, dead, what)
    }

    /// Read a header and payload from `peer`'s stream (`peer`: the rank at its other end).
    fn recv(&self, s: &TcpStream, peer: usize, want: Header) -> std::result::Result<Vec<u8>, String> {
        let mut hb = [0u8; 16];
        (&*s).read_exact(&mut hb).map_err(describe)?;
        let h = Header::parse(&hb);
        if h.call == CALL_ABORT {
            return Err(format!("abort:{}", h.count));
        }
        if h != want {
            return Err(format!(
                "ranks out of step: expected {} of {} values, rank {peer} sent {} of {}",
                call_name(want.call),
                want.count,
                call_name(h.call),
                h.count
            ));
        }
        let mut data = vec![0u8; h.count as usize * if h.dtype == 0 { 4 } else { 8 }];
        (&*s).read_exact(&mut data).map_err(describe)?;
        Ok(data)
    }

    /// One call: every rank sends `data` to rank 0 (the root's broadcast payload only from
    /// the root), rank 0 combines with `combine` and sends the result back.
    fn exchange(&self, h: Header, mut data: Vec<u8>, root: Option<usize>, avg: bool) -> Result<Vec<u8>> {
        let op = call_name(h.call);
        let sends = |r: usize| root.is_none_or(|root| root == r);
        if self.rank == 0 {
            for (i, s) in self.streams.iter().enumerate() {
                let r = i + 1;
                let got = if sends(r) {
                    self.recv(s, r, h)
                } else {
                    self.recv(s, r, Header { count: 0, ..h }).map(|_| Vec::new())
                };
                let got = match got {
                    Ok(g) => g,
                    Err(e) if e.starts_with("ranks out of step") => {
                        let _ = self.abort(op, OUT_OF_STEP as usize, "");
                        return Err(io_err(e));
                    }
                    Err(e) => return Err(self.abort(op, r, e)),
                };
                match root {
                    Some(root) if root == r => data = got,
                    Some(_) => {}
                    None => add_into(h.dtype, &mut data, &got),
                }
            }
            if avg {
                scale(h.dtype, &mut data, self.world as f64);
            }
            let mut msg = h.bytes().to_vec();
            msg.extend_from_slice(&data);
            for (i, s) in self.streams.iter().enumerate() {
                (&*s).write_all(&msg).map_err(|e| self.abort(op, i + 1, describe(e)))?;
            }
            Ok(data)
        } else {
            let s = &self.streams[0];
            let mut msg = if sends(self.rank) { h } else { Header { count: 0, ..h } }.bytes().to_vec();
            if sends(self.rank) {
                msg.extend_from_slice(&data);
            }
            (&*s).write_all(&msg).map_err(|e| peer_lost("tcp", op, 0, describe(e)))?;
            self.recv(s, 0, h).map_err(|e| match e.strip_prefix("abort:").map(|d| d.parse::<u64>()) {
                Some(Ok(OUT_OF_STEP)) => io_err(format!("rank 0 found the ranks out of step during {op}; stopping")),
                Some(dead) => peer_lost("tcp", op, dead.unwrap_or(0) as usize, "reported by rank 0"),
                None => peer_lost("tcp", op, 0, e),
            })
        }
    }
}

/// An I/O error as the cause of a lost peer: EOF and resets mean the process is gone.
fn describe(e: std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => "its connection closed".into(),
        WouldBlock | TimedOut => "no message within the timeout".into(),
        _ => e.to_string(),
    }
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let (dtype, data) = payload(t)?;
        let call = if op == ReduceOp::Avg { CALL_AVG } else { CALL_SUM };
        let h = Header { call, dtype, count: t.elem_count() as u64 };
        let out = self.exchange(h, data, None, op == ReduceOp::Avg)?;
        tensor_of(dtype, &out, t)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world {
            candle_core::bail!("broadcast root {root} is not below the world size {}", self.world);
        }
        let (dtype, data) = payload(t)?;
        let h = Header { call: CALL_BROADCAST, dtype, count: t.elem_count() as u64 };
        let out = self.exchange(h, data, Some(root), false)?;
        tensor_of(dtype, &out, t)
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(Header { call: CALL_BARRIER, dtype: 0, count: 0 }, Vec::new(), None, false).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::{all_reduce_grads, BUCKET_BYTES};
    use candle_core::Device;

    /// `world` ranks on threads, each running `f(collective)`; results in rank order.
    fn group<T: Send + 'static>(world: usize, f: impl Fn(TcpCollective) -> T + Send + Sync + 'static) -> Vec<T> {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let f = std::sync::Arc::new(f);
        let t = Duration::from_secs(10);
        let mut hs = Vec::new();
        let f0 = f.clone();
        hs.push(std::thread::spawn(move || f0(TcpCollective::host(l, world, t).unwrap())));
        for r in 1..world {
            let f = f.clone();
            hs.push(std::thread::spawn(move || f(TcpCollective::connect(r, world, "127.0.0.1", port, t).unwrap())));
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn reduce_broadcast_barrier() {
        let out = group(3, |c| {
            let r = c.rank() as f32;
            let t = Tensor::new(&[r, 10.0 * r + 1.0], &Device::Cpu).unwrap();
            let sum = c.all_reduce(&t, ReduceOp::Sum).unwrap().to_vec1::<f32>().unwrap();
            let avg = c.all_reduce(&t, ReduceOp::Avg).unwrap().to_vec1::<f32>().unwrap();
            let t64 = Tensor::new(&[r as f64 + 0.5], &Device::Cpu).unwrap();
            let b = c.broadcast(&t64, 2).unwrap().to_vec1::<f64>().unwrap();
            c.barrier().unwrap();
            (sum, avg, b)
        });
        for (sum, avg, b) in out {
            assert_eq!(sum, vec![3.0, 33.0]);
            assert_eq!(avg, vec![1.0, 11.0]);
            assert_eq!(b, vec![2.5]);
        }
    }

    #[test]
    fn gradients_summed_in_buckets() {
        let out = group(2, |c| {
            let r = c.rank() as f32 + 1.0;
            let dev = Device::Cpu;
            let mut g = vec![
                (Tensor::ones((2, 3), DType::F32, &dev).unwrap() * r as f64).unwrap(),
                Tensor::new(&[r, 2.0 * r], &dev).unwrap(),
            ];
            // A bucket of 16 bytes: each tensor gets its own call.
            all_reduce_grads(&c, &["w", "b"], &mut g, 16).unwrap();
            let mut h = g.clone();
            all_reduce_grads(&c, &["w", "b"], &mut h, BUCKET_BYTES).unwrap();
            (g, h)
        });
        for (g, h) in out {
            assert_eq!(g[0].dims(), &[2, 3]);
            assert_eq!(g[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![3.0; 6]);
            assert_eq!(g[1].to_vec1::<f32>().unwrap(), vec![3.0, 6.0]);
            assert_eq!(h[1].to_vec1::<f32>().unwrap(), vec![6.0, 12.0]);
        }
    }

    #[test]
    fn a_dead_peer_is_named() {
        let out = group(3, |c| {
            let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
            c.all_reduce(&t, ReduceOp::Sum).unwrap();
            if c.rank() == 2 {
                return String::from("died");
            }
            let e = c.all_reduce(&t, ReduceOp::Sum).unwrap_err().to_string();
            assert!(e.contains("rank 2 is gone during all-reduce"), "rank {}: {e}", c.rank());
            e
        });
        assert_eq!(out[2], "died");
    }

    #[test]
    fn ranks_out_of_step_fail() {
        group(2, |c| {
            let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
            let e = if c.rank() == 0 { c.all_reduce(&t, ReduceOp::Sum) } else { c.broadcast(&t, 0) };
            let e = e.unwrap_err().to_string();
            assert!(e.contains("out of step"), "rank {}: {e}", c.rank());
        });
    }
}
