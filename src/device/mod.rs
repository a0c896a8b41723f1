//! One `Device` abstraction over two implementations: a CUDA GPU (through
//! cudarc's driver and cuBLAS bindings) and the simulated device (the PTX
//! interpreter in crates/ptx-sim, host memory, and the CPU GEMM).
//!
//! Owns: device memory as raw 64-bit pointers, copies, kernel launches by
//! function name (modules loaded once per device from `kernels::MODULES`),
//! the f32 GEMM, and synchronization. Does not own what the kernels compute
//! (see `backend::gpu`) or collectives (the parallel layer, later).
//! Every use of CUDA is guarded: on a machine without a driver, `cuda::
//! available()` is false and nothing panics.

pub mod cuda;
pub mod nccl;
pub mod sim;


use anyhow::Result;

/// A device address (CUdeviceptr on a GPU, an interpreter address in sim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    pub fn offset(self, bytes: usize) -> DevicePtr {
        DevicePtr(self.0 + bytes as u64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// `blocks` one-dimensional blocks of `threads`.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchConfig { grid: (blocks.max(1), 1, 1), block: (threads, 1, 1), shared_bytes: 0 }
    }
}

/// A kernel parameter, matching the kernel's C signature exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    Ptr(DevicePtr),
    I32(i32),
    I64(i64),
    F32(f32),
}

pub trait Device {
    /// What this device is, for reports ("NVIDIA H100 80GB HBM3", "simulated (PTX interpreter)").
    fn name(&self) -> String;
    fn alloc(&mut self, bytes: usize) -> Result<DevicePtr>;
    fn free(&mut self, ptr: DevicePtr) -> Result<()>;
    fn copy_h2d(&mut self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    fn copy_d2h(&mut self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    fn launch(&mut self, function: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()>;
    /// `c[m,n] = a[m,k] · b[n,k]^T`, f32 row-major (cuBLAS on a GPU, the
    /// CPU gemm on the simulated device).
    fn gemm_f32_nt(&mut self, c: DevicePtr, a: DevicePtr, b: DevicePtr, m: usize, n: usize, k: usize) -> Result<()>;
    fn synchronize(&mut self) -> Result<()>;
    /// The CUstream work is ordered on (NCCL joins it); None when simulated.
    fn raw_stream(&self) -> Option<u64> {
        None
    }
}

/// Helpers on top of the raw trait, for typed host data.
pub trait DeviceExt: Device {
    fn upload_f32(&mut self, data: &[f32]) -> Result<DevicePtr> {
        let p = self.alloc(data.len() * 4)?;
        self.write_f32(p, data)?;
        Ok(p)
    }
    /// Overwrite device memory at `dst` with `data`.
    fn write_f32(&mut self, dst: DevicePtr, data: &[f32]) -> Result<()> {
        self.copy_h2d(dst, bytes_of(data))
    }
    fn upload_u32(&mut self, data: &[u32]) -> Result<DevicePtr> {
        let p = self.alloc(data.len() * 4)?;
        let b: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.copy_h2d(p, &b)?;
        Ok(p)
    }
    fn upload_u16(&mut self, data: &[u16]) -> Result<DevicePtr> {
        let p = self.alloc(data.len() * 2)?;
        let b: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.copy_h2d(p, &b)?;
        Ok(p)
    }
    fn zeros(&mut self, bytes: usize) -> Result<DevicePtr> {
        let p = self.alloc(bytes)?;
        self.copy_h2d(p, &vec![0u8; bytes])?;
        Ok(p)
    }
    fn download_f32(&mut self, src: DevicePtr, n: usize) -> Result<Vec<f32>> {
        let mut b = vec![0u8; n * 4];
        self.copy_d2h(src, &mut b)?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
    fn download_u16(&mut self, src: DevicePtr, n: usize) -> Result<Vec<u16>> {
        let mut b = vec![0u8; n * 2];
        self.copy_d2h(src, &mut b)?;
        Ok(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    }
}

impl<D: Device + ?Sized> DeviceExt for D {}

fn bytes_of(data: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }
}
