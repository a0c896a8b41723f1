//! One `Device` abstraction over two implementations: a CUDA GPU (through
//! cudarc's driver and cuBLAS bindings) and the simulated device (the PTX
//! interpreter in crates/ptx-sim, host memory, and the CPU GEMM).
//!
//! Owns: device memory as raw 64-bit pointers, copies, kernel launches by
//! function name (modules loaded once per device from `kernels::MODULES`),
//! the GEMM (cuBLAS `cublasGemmEx` on a GPU, the CPU gemm when simulated),
//! and synchronization. Does not own what the kernels compute
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

/// Element type of a GEMM operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// One GEMM: `C[m,n] = alpha·op(A)·op(B) + beta·C`, every matrix row-major
/// and contiguous, fp32 accumulation. `op(A)` is `[m,k]`: A is stored
/// `[m,k]`, or `[k,m]` when `trans_a`; `op(B)` is `[k,n]`: B is stored
/// `[k,n]`, or `[n,k]` when `trans_b` (the flags of `cpu::matmul::matmul`).
/// A and B share one type (bf16 or f32); C is f32, or bf16 (rounded to
/// nearest even) when A and B are bf16 — the combinations cuBLAS's
/// `CUBLAS_COMPUTE_32F` accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub ab_type: Dtype,
    pub c_type: Dtype,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// `C = A·B`, all f32, alpha 1, beta 0.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm { m, n, k, trans_a: false, trans_b: false, ab_type: Dtype::F32, c_type: Dtype::F32, alpha: 1.0, beta: 0.0 }
    }
    pub fn trans_a(mut self, t: bool) -> Self {
        self.trans_a = t;
        self
    }
    pub fn trans_b(mut self, t: bool) -> Self {
        self.trans_b = t;
        self
    }
    /// Operand types: A and B, then C.
    pub fn types(mut self, ab: Dtype, c: Dtype) -> Self {
        self.ab_type = ab;
        self.c_type = c;
        self
    }
    pub fn scale(mut self, alpha: f32, beta: f32) -> Self {
        self.alpha = alpha;
        self.beta = beta;
        self
    }

    /// Reject what no backend computes, before anything touches memory.
    pub fn validate(&self) -> Result<()> {
        if self.ab_type == Dtype::F32 && self.c_type == Dtype::Bf16 {
            anyhow::bail!("gemm {self:?}: f32 inputs with a bf16 output are not supported (cuBLAS's 32F compute needs bf16 inputs for a bf16 output)");
        }
        for (name, v) in [("m", self.m), ("n", self.n), ("k", self.k)] {
            if v > i32::MAX as usize {
                anyhow::bail!("gemm {self:?}: {name} = {v} does not fit cuBLAS's 32-bit dimensions");
            }
        }
        if !self.alpha.is_finite() || !self.beta.is_finite() {
            anyhow::bail!("gemm {self:?}: alpha and beta must be finite");
        }
        Ok(())
    }

    /// Elements of A, B and C.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.m * self.k, self.k * self.n, self.m * self.n)
    }

    /// Floating-point operations (2·m·n·k), for benchmarks.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

pub trait Device {
    /// What this device is, for reports ("NVIDIA H100 80GB HBM3", "simulated (PTX interpreter)").
    fn name(&self) -> String;
    fn alloc(&mut self, bytes: usize) -> Result<DevicePtr>;
    fn free(&mut self, ptr: DevicePtr) -> Result<()>;
    fn copy_h2d(&mut self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    fn copy_d2h(&mut self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    /// Copy `bytes` from `src` to `dst` on the device (ordered with launches).
    fn copy_d2d(&mut self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()>;
    /// Set `bytes` at `dst` to zero on the device (ordered with launches).
    fn memset_zero(&mut self, dst: DevicePtr, bytes: usize) -> Result<()>;
    fn launch(&mut self, function: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()>;
    /// `c = alpha·op(a)·op(b) + beta·c` as `g` describes (row-major, fp32
    /// accumulation): cuBLAS on a GPU, the CPU gemm on the simulated device.
    /// With `beta == 0`, `c` is not read (it may hold NaN), as in cuBLAS.
    fn gemm(&mut self, g: &Gemm, c: DevicePtr, a: DevicePtr, b: DevicePtr) -> Result<()>;
    /// `c[m,n] = a[m,k] · b[n,k]^T`, f32 row-major.
    fn gemm_f32_nt(&mut self, c: DevicePtr, a: DevicePtr, b: DevicePtr, m: usize, n: usize, k: usize) -> Result<()> {
        self.gemm(&Gemm::new(m, n, k).trans_b(true), c, a, b)
    }
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
        self.memset_zero(p, bytes)?;
        Ok(p)
    }
    fn download_f32(&mut self, src: DevicePtr, n: usize) -> Result<Vec<f32>> {
        let mut v = vec![0.0f32; n];
        self.read_f32(src, &mut v)?;
        Ok(v)
    }
    /// Fill `dst` from device memory at `src` (copied straight into `dst`'s
    /// bytes: no staging vector, no per-element pass).
    fn read_f32(&mut self, src: DevicePtr, dst: &mut [f32]) -> Result<()> {
        // SAFETY: f32 has no padding and every bit pattern is a valid f32;
        // the device's bytes are little-endian f32, as is this host (checked
        // at compile time below).
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, std::mem::size_of_val(dst)) };
        self.copy_d2h(src, bytes)
    }
    fn download_u16(&mut self, src: DevicePtr, n: usize) -> Result<Vec<u16>> {
        let mut b = vec![0u8; n * 2];
        self.copy_d2h(src, &mut b)?;
        Ok(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    }
}

impl<D: Device + ?Sized> DeviceExt for D {}

// Host and device buffers are exchanged as raw f32 bytes (`bytes_of`,
// `DeviceExt::read_f32`): little-endian on both sides.
const _: () = assert!(cfg!(target_endian = "little"), "the device layer copies f32 as little-endian bytes");

fn bytes_of(data: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }
}
