//! The CUDA device, on cudarc's dynamically loaded driver and cuBLAS.
//!
//! Design: one context per GPU, bound to the thread that owns the device
//! (one OS thread per GPU); one stream; every PTX module loaded once at
//! creation; memory as raw CUdeviceptr so the `Device` trait stays
//! untyped; kernel launches straight through cuLaunchKernel with explicit
//! stream order (cudarc's per-buffer event tracking is off, since this
//! layer orders work itself). cudarc's loaders panic when a library is
//! missing, so everything is guarded by `available()` first. Host copies
//! of a MiB or more go through a page-locked staging buffer in two halves,
//! so the DMA of one chunk overlaps the host memcpy of the next (pageable
//! copies ran below 1 GB/s for the trainer's weight sync).

use super::{Device, DevicePtr, Dtype, Gemm, KernelArg, LaunchConfig};
use crate::kernels::MODULES;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::Arc;

/// Dynamic shared memory a launch gets without raising the function's limit.
const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;

/// True when a CUDA driver is present and reports at least one GPU.
pub fn available() -> bool {
    device_count().map(|n| n > 0).unwrap_or(false)
}

/// Number of GPUs the driver reports (an error when there is no driver).
pub fn device_count() -> Result<usize> {
    // SAFETY: only probes whether the shared library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        bail!("no CUDA driver: libcuda could not be loaded (no NVIDIA GPU or driver on this machine)");
    }
    result::init().map_err(|e| anyhow!("CUDA driver init failed: {e:?}"))?;
    let n = CudaContext::device_count().map_err(|e| anyhow!("cuDeviceGetCount failed: {e:?}"))?;
    Ok(n.max(0) as usize)
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _modules: Vec<Arc<CudaModule>>,
    functions: HashMap<&'static str, CudaFunction>,
    /// Per function, the dynamic shared memory its max-dynamic-shared-size
    /// attribute has been raised to (only launches above 48 KiB need it).
    dynamic_shared_limit: HashMap<&'static str, u32>,
    allocations: HashSet<u64>,
    blas: Option<cudarc::cublas::CudaBlas>,
    name: String,
    /// Page-locked host memory for large copies, allocated at the first.
    staging: Option<Staging>,
}

/// Copies from this many bytes up go through the staging buffer.
const STAGED_FROM_BYTES: usize = 1 << 20;
/// Each half of the staging buffer.
const STAGING_HALF_BYTES: usize = 16 << 20;

/// Two halves of page-locked host memory (cuMemHostAlloc).
struct Staging {
    ptr: *mut u8,
}

// SAFETY: the buffer is owned by one CudaDevice and used only through it.
unsafe impl Send for Staging {}

impl Staging {
    fn half(&mut self, i: usize) -> &mut [u8] {
        // SAFETY: ptr holds 2 × STAGING_HALF_BYTES bytes for the device's life.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add((i % 2) * STAGING_HALF_BYTES), STAGING_HALF_BYTES) }
    }
}

impl CudaDevice {
    /// Open GPU `ordinal` and load every kernel module.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            bail!("GPU {ordinal} requested, but the driver reports {count}");
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("creating a context on GPU {ordinal}: {e:?}"))?;
        // SAFETY: this layer orders all work on one stream explicitly.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let name = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        let mut modules = vec![];
        let mut functions = HashMap::new();
        for m in MODULES {
            let module = ctx
                .load_module(Ptx::from_src(m.ptx))
                .map_err(|e| anyhow!("loading PTX module {} on {name}: {e:?}", m.name))?;
            for &f in m.functions {
                let func = module.load_function(f).map_err(|e| anyhow!("kernel {f} in {}: {e:?}", m.name))?;
                functions.insert(f, func);
            }
            modules.push(module);
        }
        // cuBLAS is optional: kernels work without it; gemm then errors.
        // SAFETY: probe only.
        let blas = if unsafe { cudarc::cublas::sys::is_culib_present() } {
            cudarc::cublas::CudaBlas::new(stream.clone()).ok()
        } else {
            None
        };
        Ok(CudaDevice { ctx, stream, _modules: modules, functions, dynamic_shared_limit: HashMap::new(), allocations: HashSet::new(), blas, name, staging: None })
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))
    }

    /// The staging buffer, allocated at the first large copy.
    fn staging(&mut self) -> Result<&mut Staging> {
        if self.staging.is_none() {
            // SAFETY: the context is bound (callers bind first); freed in Drop.
            let p = unsafe { result::malloc_host(2 * STAGING_HALF_BYTES, 0) }.map_err(|e| anyhow!("cuMemHostAlloc({} bytes): {e:?}", 2 * STAGING_HALF_BYTES))?;
            self.staging = Some(Staging { ptr: p as *mut u8 });
        }
        Ok(self.staging.as_mut().expect("allocated above"))
    }

    /// Device to host through the staging halves: the DMA of chunk k + 1
    /// runs while chunk k is copied out of page-locked memory.
    fn copy_d2h_staged(&mut self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let stream = self.stream.cu_stream();
        let chunks: Vec<(usize, usize)> = (0..dst.len()).step_by(STAGING_HALF_BYTES).map(|s| (s, STAGING_HALF_BYTES.min(dst.len() - s))).collect();
        let staging = self.staging()?;
        let issue = |staging: &mut Staging, k: usize| -> Result<()> {
            let (s, len) = chunks[k];
            // SAFETY: the half is page-locked and not read until the stream
            // is synchronized; the source range is device memory the caller sized.
            unsafe { result::memcpy_dtoh_async(&mut staging.half(k)[..len], src.0 + s as u64, stream) }.map_err(|e| anyhow!("copy from device: {e:?}"))
        };
        issue(staging, 0)?;
        for k in 0..chunks.len() {
            // SAFETY: a raw stream of this bound context.
            unsafe { result::stream::synchronize(stream) }.map_err(|e| anyhow!("copy from device: {e:?}"))?;
            if k + 1 < chunks.len() {
                issue(staging, k + 1)?;
            }
            let (s, len) = chunks[k];
            dst[s..s + len].copy_from_slice(&staging.half(k)[..len]);
        }
        Ok(())
    }

    /// Host to device through the staging halves: chunk k + 1 is copied in
    /// while chunk k's DMA runs.
    fn copy_h2d_staged(&mut self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        let stream = self.stream.cu_stream();
        let staging = self.staging()?;
        for (k, s) in (0..src.len()).step_by(STAGING_HALF_BYTES).enumerate() {
            let len = STAGING_HALF_BYTES.min(src.len() - s);
            // This half's last DMA (chunk k − 2) finished at the previous
            // iteration's synchronize.
            staging.half(k)[..len].copy_from_slice(&src[s..s + len]);
            // SAFETY: a raw stream of this bound context.
            unsafe { result::stream::synchronize(stream) }.map_err(|e| anyhow!("copy to device: {e:?}"))?;
            // SAFETY: the half stays untouched until its DMA is synchronized.
            unsafe { result::memcpy_htod_async(dst.0 + s as u64, &staging.half(k)[..len], stream) }.map_err(|e| anyhow!("copy to device: {e:?}"))?;
        }
        // SAFETY: as above.
        unsafe { result::stream::synchronize(stream) }.map_err(|e| anyhow!("copy to device: {e:?}"))
    }
}

/// Reads GPU `ordinal`'s free memory as the driver reports it
/// (device-wide: every context's allocations count). It holds the primary
/// context, so the context's own memory is spent before the first reading.
pub struct MemoryProbe {
    ctx: Arc<CudaContext>,
    ordinal: usize,
}

impl MemoryProbe {
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("opening GPU {ordinal}: {e:?}"))?;
        Ok(MemoryProbe { ctx, ordinal })
    }

    /// Free and total bytes.
    pub fn free_total(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| anyhow!("cuMemGetInfo on GPU {}: {e:?}", self.ordinal))
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&mut self, bytes: usize) -> Result<DevicePtr> {
        self.bind()?;
        // SAFETY: the context is bound; the pointer is tracked and freed in Drop.
        let p = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| anyhow!("cuMemAlloc({bytes}): {e:?}"))?;
        self.allocations.insert(p);
        Ok(DevicePtr(p))
    }

    fn free(&mut self, ptr: DevicePtr) -> Result<()> {
        if !self.allocations.remove(&ptr.0) {
            bail!("free of {:#x}, which is not an allocation of this device", ptr.0);
        }
        self.bind()?;
        self.stream.synchronize().map_err(|e| anyhow!("{e:?}"))?;
        // SAFETY: ptr came from malloc_sync and the stream is idle.
        unsafe { result::free_sync(ptr.0) }.map_err(|e| anyhow!("cuMemFree: {e:?}"))
    }

    fn copy_h2d(&mut self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(|e| anyhow!("{e:?}"))?;
        if src.len() >= STAGED_FROM_BYTES {
            return self.copy_h2d_staged(dst, src);
        }
        // SAFETY: synchronous copy into device memory the caller sized.
        unsafe { result::memcpy_htod_sync(dst.0, src) }.map_err(|e| anyhow!("copy to device: {e:?}"))
    }

    fn copy_d2h(&mut self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(|e| anyhow!("{e:?}"))?;
        if dst.len() >= STAGED_FROM_BYTES {
            return self.copy_d2h_staged(src, dst);
        }
        // SAFETY: synchronous copy after the stream drained.
        unsafe { result::memcpy_dtoh_sync(dst, src.0) }.map_err(|e| anyhow!("copy from device: {e:?}"))
    }

    fn copy_d2d(&mut self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges are device memory the caller sized; the copy is
        // ordered on this device's stream with the launches around it.
        unsafe { result::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream()) }.map_err(|e| anyhow!("device-to-device copy of {bytes} bytes: {e:?}"))
    }

    fn memset_zero(&mut self, dst: DevicePtr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: as copy_d2d.
        unsafe { result::memset_d8_async(dst.0, 0, bytes, self.stream.cu_stream()) }.map_err(|e| anyhow!("memset of {bytes} bytes: {e:?}"))
    }

    fn launch(&mut self, function: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        self.bind()?;
        let (&name, f) = self.functions.get_key_value(function).ok_or_else(|| anyhow!("no kernel named {function} in the embedded PTX"))?;
        // Above 48 KiB, dynamic shared memory must be opted into per function
        // (cuFuncSetAttribute), once per function and size reached.
        if cfg.shared_bytes > DEFAULT_DYNAMIC_SHARED && self.dynamic_shared_limit.get(name).is_none_or(|&b| b < cfg.shared_bytes) {
            let bytes = i32::try_from(cfg.shared_bytes).map_err(|_| anyhow!("launching {function}: {} bytes of shared memory", cfg.shared_bytes))?;
            f.set_attribute(sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)
                .map_err(|e| anyhow!("allowing {function} {bytes} bytes of dynamic shared memory on {}: {e:?}", self.name))?;
            self.dynamic_shared_limit.insert(name, cfg.shared_bytes);
        }
        // Each parameter's bytes live in `storage`; cuLaunchKernel reads them
        // through `params` during the call.
        let mut storage: Vec<[u8; 8]> = args
            .iter()
            .map(|a| {
                let mut b = [0u8; 8];
                match *a {
                    KernelArg::Ptr(p) => b.copy_from_slice(&p.0.to_le_bytes()),
                    KernelArg::I64(v) => b.copy_from_slice(&v.to_le_bytes()),
                    KernelArg::I32(v) => b[..4].copy_from_slice(&v.to_le_bytes()),
                    KernelArg::F32(v) => b[..4].copy_from_slice(&v.to_le_bytes()),
                }
                b
            })
            .collect();
        let mut params: Vec<*mut c_void> = storage.iter_mut().map(|b| b.as_mut_ptr() as *mut c_void).collect();
        // SAFETY: the argument list matches the kernel's signature (the
        // launchers in backend::gpu are the only callers) and outlives the call.
        unsafe { result::launch_kernel(f.cu_function(), cfg.grid, cfg.block, cfg.shared_bytes, self.stream.cu_stream(), &mut params) }
            .map_err(|e| anyhow!("launching {function} {cfg:?}: {e:?}"))
            .context("kernel launch")
    }

    fn gemm(&mut self, g: &Gemm, c: DevicePtr, a: DevicePtr, b: DevicePtr) -> Result<()> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t as Op, cudaDataType};
        g.validate()?;
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        self.bind()?;
        let blas = self.blas.as_ref().ok_or_else(|| anyhow!("cuBLAS is not available on this machine"))?;
        let ty = |t: Dtype| match t {
            Dtype::F32 => cudaDataType::CUDA_R_32F,
            Dtype::Bf16 => cudaDataType::CUDA_R_16BF,
        };
        let op = |t: bool| if t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N };
        // cuBLAS is column-major: a row-major [r, c] buffer is the column-
        // major [c, r] matrix, its transpose. So row-major C = op(A)·op(B)
        // is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS's "A" is our B and its
        // "B" our A, each with its own transpose flag, and (m, n) swapped.
        // Leading dimensions are the stored row lengths.
        let ldb_ours = if g.trans_b { g.k } else { g.n };
        let lda_ours = if g.trans_a { g.m } else { g.k };
        let (alpha, beta) = (g.alpha, g.beta);
        // SAFETY: the pointers are device allocations holding the stated
        // shapes (the callers' contract); alpha and beta are host f32, which
        // the default host pointer mode and the 32F compute type expect.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                op(g.trans_b),
                op(g.trans_a),
                g.n as i32,
                g.m as i32,
                g.k as i32,
                &alpha as *const f32 as *const c_void,
                b.0 as *const c_void,
                ty(g.ab_type),
                ldb_ours.max(1) as i32,
                a.0 as *const c_void,
                ty(g.ab_type),
                lda_ours.max(1) as i32,
                &beta as *const f32 as *const c_void,
                c.0 as *mut c_void,
                ty(g.c_type),
                g.n as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow!("cublasGemmEx {g:?}: {e:?}"))
    }

    fn synchronize(&mut self) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(|e| anyhow!("stream synchronize: {e:?}"))
    }

    fn raw_stream(&self) -> Option<u64> {
        Some(self.stream.cu_stream() as u64)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            let _ = self.stream.synchronize();
            for p in self.allocations.drain() {
                // SAFETY: every tracked pointer came from malloc_sync.
                let _ = unsafe { result::free_sync(p) };
            }
            if let Some(s) = self.staging.take() {
                // SAFETY: from malloc_host; the stream is idle.
                let _ = unsafe { result::free_host(s.ptr as *mut std::ffi::c_void) };
            }
        }
    }
}
