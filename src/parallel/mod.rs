//! Collectives between ranks (one rank per GPU, one OS thread per rank):
//! NCCL on GPUs, in-process channels between simulated ranks, behind one
//! `Communicator` trait, so multi-GPU code is tested with several simulated
//! GPUs in one process.
//!
//! Owns: all-reduce (sum), broadcast, all-gather and point-to-point
//! send/recv of f32 device buffers. Does not own what is communicated
//! (data parallelism and ring attention build on this).

pub mod local;
pub mod nccl;

use crate::device::{Device, DevicePtr};
use anyhow::Result;

pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// In place: every rank's `buf` becomes the element-wise sum over ranks.
    fn all_reduce_sum_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize) -> Result<()>;
    /// In place: every rank's `buf` becomes `root`'s.
    fn broadcast_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, root: usize) -> Result<()>;
    /// `recv` (world_size × count) gets every rank's `send` in rank order.
    fn all_gather_f32(&mut self, dev: &mut dyn Device, send: DevicePtr, recv: DevicePtr, count: usize) -> Result<()>;
    fn send_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, peer: usize) -> Result<()>;
    fn recv_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, peer: usize) -> Result<()>;
}

/// Run `f(rank, comm)` on one OS thread per rank and collect the results in
/// rank order. The threads own their communicators; a panic or error on
/// any rank is returned as an error naming it.
pub fn run_ranks<C, T, F>(comms: Vec<C>, f: F) -> Result<Vec<T>>
where
    C: Communicator + 'static,
    T: Send + 'static,
    F: Fn(usize, C) -> Result<T> + Send + Sync + 'static,
{
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(rank, c)| {
            let f = f.clone();
            std::thread::Builder::new().name(format!("rank-{rank}")).spawn(move || f(rank, c))
        })
        .collect::<std::io::Result<_>>()?;
    let mut out = Vec::with_capacity(handles.len());
    for (rank, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(r) => out.push(r.map_err(|e| e.context(format!("rank {rank}")))?),
            Err(_) => anyhow::bail!("rank {rank} panicked"),
        }
    }
    Ok(out)
}
