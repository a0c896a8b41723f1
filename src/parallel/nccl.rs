//! The NCCL communicator: one rank per GPU, each on the thread that owns
//! its `CudaDevice`, created from a unique id shared by the launcher
//! (`ncclCommInitRank`). Collectives run on the device's stream in order
//! with its kernels. NCCL is loaded through `device::nccl` (the
//! libnccl.so.2 shim) and every use is guarded by its presence.

use super::Communicator;
use crate::device::{Device, DevicePtr};
use anyhow::{anyhow, bail, Result};
use cudarc::nccl::{result, sys};

/// Whether NCCL can be loaded in this process.
pub fn available() -> bool {
    // SAFETY: probes whether the shared library loads.
    unsafe { sys::is_culib_present() }
}

/// A fresh unique id for a new group (call once, share with every rank).
pub fn unique_id() -> Result<sys::ncclUniqueId> {
    if !available() {
        bail!("NCCL is not available on this machine");
    }
    result::get_uniqueid().map_err(|e| anyhow!("ncclGetUniqueId: {e:?}"))
}

pub struct NcclComm {
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
}

// SAFETY: an NCCL communicator may move between threads as long as it is
// used by one at a time, which `&mut self` guarantees.
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// Join group `id` as `rank` of `world`, on the thread that owns `dev`
    /// (whose context must be current there).
    pub fn init(id: sys::ncclUniqueId, world: usize, rank: usize, dev: &mut dyn Device) -> Result<Self> {
        if !available() {
            bail!("NCCL is not available on this machine");
        }
        if dev.raw_stream().is_none() {
            bail!("NCCL needs a CUDA device; {} is not one", dev.name());
        }
        dev.synchronize()?; // binds the device's context to this thread
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: comm is a valid out-pointer; id came from ncclGetUniqueId.
        unsafe { result::comm_init_rank(&mut comm, world as i32, id, rank as i32) }.map_err(|e| anyhow!("ncclCommInitRank rank {rank}/{world}: {e:?}"))?;
        Ok(NcclComm { comm, rank, world })
    }

    fn stream(dev: &dyn Device) -> Result<sys::cudaStream_t> {
        dev.raw_stream().map(|s| s as sys::cudaStream_t).ok_or_else(|| anyhow!("NCCL needs a CUDA device"))
    }
}

const F32: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize) -> Result<()> {
        let s = Self::stream(dev)?;
        // SAFETY: buf is a device allocation of `count` f32 on this rank's GPU.
        unsafe { result::all_reduce(buf.0 as *const _, buf.0 as *mut _, count, F32, sys::ncclRedOp_t::ncclSum, self.comm, s) }
            .map(|_| ())
            .map_err(|e| anyhow!("ncclAllReduce: {e:?}"))
    }

    fn broadcast_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, root: usize) -> Result<()> {
        let s = Self::stream(dev)?;
        // SAFETY: as above.
        unsafe { result::broadcast(buf.0 as *const _, buf.0 as *mut _, count, F32, root as i32, self.comm, s) }
            .map(|_| ())
            .map_err(|e| anyhow!("ncclBroadcast: {e:?}"))
    }

    fn all_gather_f32(&mut self, dev: &mut dyn Device, send: DevicePtr, recv: DevicePtr, count: usize) -> Result<()> {
        let s = Self::stream(dev)?;
        // SAFETY: recv holds world × count f32.
        unsafe { result::all_gather(send.0 as *const _, recv.0 as *mut _, count, F32, self.comm, s) }
            .map(|_| ())
            .map_err(|e| anyhow!("ncclAllGather: {e:?}"))
    }

    fn send_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, peer: usize) -> Result<()> {
        let s = Self::stream(dev)?;
        // SAFETY: as above.
        unsafe { result::send(buf.0 as *const _, count, F32, peer as i32, self.comm, s) }.map(|_| ()).map_err(|e| anyhow!("ncclSend: {e:?}"))
    }

    fn recv_f32(&mut self, dev: &mut dyn Device, buf: DevicePtr, count: usize, peer: usize) -> Result<()> {
        let s = Self::stream(dev)?;
        // SAFETY: as above.
        unsafe { result::recv(buf.0 as *mut _, count, F32, peer as i32, self.comm, s) }.map(|_| ()).map_err(|e| anyhow!("ncclRecv: {e:?}"))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: comm came from ncclCommInitRank and is destroyed once.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
