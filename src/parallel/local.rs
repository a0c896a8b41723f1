//! The in-process communicator: simulated ranks in one process exchange
//! buffers through shared slots and channels. Reductions sum in rank order,
//! so results are identical on every rank and every run.

use super::Communicator;
use crate::device::{Device, DeviceExt, DevicePtr};
use anyhow::{anyhow, bail, Result};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};

struct Shared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

pub struct LocalComm {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
    /// to[peer]: sender into peer's inbox from this rank.
    to: Vec<Sender<Vec<f32>>>,
    /// from[peer]: this rank's inbox from peer.
    from: Vec<Receiver<Vec<f32>>>,
}

/// A group of `n` connected ranks.
pub fn group(n: usize) -> Vec<LocalComm> {
    assert!(n > 0, "a group needs at least one rank");
    let shared = Arc::new(Shared { slots: Mutex::new(vec![vec![]; n]), barrier: Barrier::new(n) });
    // channels[src][dst]
    let mut senders: Vec<Vec<Option<Sender<Vec<f32>>>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<Option<Receiver<Vec<f32>>>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for src in 0..n {
        for dst in 0..n {
            let (tx, rx) = channel();
            senders[src][dst] = Some(tx);
            receivers[dst][src] = Some(rx);
        }
    }
    (0..n)
        .map(|rank| LocalComm {
            rank,
            world: n,
            shared: shared.clone(),
            to: senders[rank].iter_mut().map(|s| s.take().expect("built above")).collect(),
            from: receivers[rank].iter_mut().map(|r| r.take().expect("built above")).collect(),
        })
        .collect()
}

impl LocalComm {
    fn publish(&self, data: Vec<f32>) -> Result<()> {
        self.shared.slots.lock().map_err(|_| anyhow!("a rank panicked"))?[self.rank] = data;
        self.shared.barrier.wait();
        Ok(())
    }

    fn slots(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self.shared.slots.lock().map_err(|_| anyhow!("a rank panicked"))?.clone())
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize) -> Result<()> {
        self.publish(dev.download_f32(buf, count)?)?;
        let slots = self.slots()?;
        let mut sum = vec![0.0f32; count];
        for s in &slots {
            if s.len() != count {
                bail!("all_reduce: rank {} gave {} values, this rank {count}", self.rank, s.len());
            }
            sum.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        }
        // Everyone has read the slots before any rank reuses them.
        self.shared.barrier.wait();
        dev.write_f32(buf, &sum)
    }

    fn broadcast_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, root: usize) -> Result<()> {
        if root >= self.world {
            bail!("broadcast root {root} outside a group of {}", self.world);
        }
        let mine = if self.rank == root { dev.download_f32(buf, count)? } else { vec![] };
        self.publish(mine)?;
        let data = self.slots()?[root].clone();
        self.shared.barrier.wait();
        if data.len() != count {
            bail!("broadcast: root sent {} values, this rank expects {count}", data.len());
        }
        dev.write_f32(buf, &data)
    }

    fn all_gather_f32(&mut self, dev: &mut dyn Device, send: DevicePtr, recv: DevicePtr, count: usize) -> Result<()> {
        self.publish(dev.download_f32(send, count)?)?;
        let all: Vec<f32> = self.slots()?.concat();
        self.shared.barrier.wait();
        if all.len() != count * self.world {
            bail!("all_gather: ranks sent different counts");
        }
        dev.write_f32(recv, &all)
    }

    fn send_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, peer: usize) -> Result<()> {
        let data = dev.download_f32(buf, count)?;
        self.to.get(peer).ok_or_else(|| anyhow!("send to rank {peer} outside a group of {}", self.world))?.send(data).map_err(|_| anyhow!("rank {peer} is gone"))
    }

    fn recv_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, peer: usize) -> Result<()> {
        let data = self
            .from
            .get(peer)
            .ok_or_else(|| anyhow!("recv from rank {peer} outside a group of {}", self.world))?
            .recv()
            .map_err(|_| anyhow!("rank {peer} is gone"))?;
        if data.len() != count {
            bail!("recv: rank {peer} sent {} values, this rank expects {count}", data.len());
        }
        dev.write_f32(buf, &data)
    }
}
