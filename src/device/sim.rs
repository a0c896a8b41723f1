//! The simulated device: the very PTX the binary ships, executed by the
//! interpreter in crates/ptx-sim on host memory; the GEMM goes to the CPU
//! `gemm` in f32 (what cuBLAS does on a GPU), rounding a bf16 output to
//! nearest even.
//!
//! Design: one `ptx_sim::Memory` for the device's global memory and every
//! embedded module parsed once at creation; launches are looked up by
//! function name like on a GPU. Launches are synchronous, so
//! `synchronize` has nothing to wait for. Anything the interpreter does not
//! support fails loudly with the instruction it met.

use super::{Device, DeviceExt, DevicePtr, Dtype, Gemm, KernelArg, LaunchConfig};
use crate::kernels::MODULES;
use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;

pub struct SimDevice {
    mem: ptx_sim::Memory,
    modules: Vec<ptx_sim::Module>,
    /// function name → index into `modules`.
    functions: HashMap<&'static str, usize>,
    /// Interpreted instructions so far (for reports).
    pub instructions: u64,
}

impl SimDevice {
    pub fn new() -> Result<Self> {
        let mut modules = vec![];
        let mut functions = HashMap::new();
        for (i, m) in MODULES.iter().enumerate() {
            let parsed = ptx_sim::Module::parse(m.ptx).map_err(|e| anyhow!("ptx/{}.ptx: {e}", m.name))?;
            for &f in m.functions {
                functions.insert(f, i);
            }
            modules.push(parsed);
        }
        Ok(SimDevice { mem: ptx_sim::Memory::new(), modules, functions, instructions: 0 })
    }
}

impl Device for SimDevice {
    fn name(&self) -> String {
        "simulated (PTX interpreter)".into()
    }

    fn alloc(&mut self, bytes: usize) -> Result<DevicePtr> {
        Ok(DevicePtr(self.mem.alloc(bytes)))
    }

    fn free(&mut self, ptr: DevicePtr) -> Result<()> {
        self.mem.free(ptr.0).map_err(|e| anyhow!("{e}"))
    }

    fn copy_h2d(&mut self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.mem.write(dst.0, src).map_err(|e| anyhow!("copy to simulated device: {e}"))
    }

    fn copy_d2h(&mut self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.mem.read(src.0, dst).map_err(|e| anyhow!("copy from simulated device: {e}"))
    }

    fn copy_d2d(&mut self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        let mut tmp = vec![0u8; bytes];
        self.mem.read(src.0, &mut tmp).map_err(|e| anyhow!("device-to-device copy on the simulated device: {e}"))?;
        self.mem.write(dst.0, &tmp).map_err(|e| anyhow!("device-to-device copy on the simulated device: {e}"))
    }

    fn memset_zero(&mut self, dst: DevicePtr, bytes: usize) -> Result<()> {
        self.mem.write(dst.0, &vec![0u8; bytes]).map_err(|e| anyhow!("memset on the simulated device: {e}"))
    }

    fn launch(&mut self, function: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let &i = self.functions.get(function).ok_or_else(|| anyhow!("no kernel named {function} in the embedded PTX"))?;
        let args: Vec<ptx_sim::Arg> = args
            .iter()
            .map(|a| match *a {
                KernelArg::Ptr(p) => ptx_sim::Arg::Ptr(p.0),
                KernelArg::I32(v) => ptx_sim::Arg::I32(v),
                KernelArg::I64(v) => ptx_sim::Arg::I64(v),
                KernelArg::F32(v) => ptx_sim::Arg::F32(v),
            })
            .collect();
        let c = ptx_sim::LaunchConfig { grid: cfg.grid, block: cfg.block, dynamic_shared_bytes: cfg.shared_bytes };
        let stats = self.modules[i]
            .launch(&mut self.mem, function, c, &args)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("simulated launch of {function} {cfg:?}"))?;
        self.instructions += stats.instructions;
        Ok(())
    }

    fn gemm(&mut self, g: &Gemm, c: DevicePtr, a: DevicePtr, b: DevicePtr) -> Result<()> {
        g.validate()?;
        let (na, nb, nc) = g.sizes();
        if nc == 0 {
            return Ok(());
        }
        let read = |dev: &mut Self, p: DevicePtr, n: usize, t: Dtype| -> Result<Vec<f32>> {
            Ok(match t {
                Dtype::F32 => dev.download_f32(p, n)?,
                Dtype::Bf16 => dev.download_u16(p, n)?.into_iter().map(|b| half::bf16::from_bits(b).to_f32()).collect(),
            })
        };
        let av = read(self, a, na, g.ab_type).context("gemm: reading A")?;
        let bv = read(self, b, nb, g.ab_type).context("gemm: reading B")?;
        let mut cv = vec![0.0f32; nc];
        crate::backend::cpu::matmul::matmul(&mut cv, &av, &bv, g.m, g.k, g.n, g.trans_a, g.trans_b, false);
        // beta == 0: C is not read, so garbage (NaN) in it does not leak.
        let old = if g.beta != 0.0 { Some(read(self, c, nc, g.c_type).context("gemm: reading C")?) } else { None };
        for (i, v) in cv.iter_mut().enumerate() {
            *v = g.alpha * *v + old.as_ref().map_or(0.0, |o| g.beta * o[i]);
        }
        match g.c_type {
            Dtype::F32 => self.write_f32(c, &cv),
            Dtype::Bf16 => {
                let bytes: Vec<u8> = cv.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect();
                self.copy_h2d(c, &bytes)
            }
        }
    }

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
}
