//! `appliance selftest`: every kernel against its CPU reference on the GPUs
//! present, or on the simulated device with `--sim`, then the GPU model
//! backend's whole training step against the CPU backend's (`model_step`). Prints a table (or
//! JSON) of pass/fail, max error and time; exits non-zero if any fails.
//! Exit codes: 0 all passed, 1 a kernel failed or an error, 3 no GPU (and
//! no `--sim`).

use super::Exit;
use crate::backend::gpu::checks::{run_each, KernelCheck};
use crate::device::cuda;
use crate::device::Device;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run on the simulated device (the PTX interpreter) instead of GPUs.
    #[arg(long)]
    pub sim: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Only kernels whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Small shapes only (the default on the simulated device).
    #[arg(long)]
    pub quick: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut devices: Vec<Box<dyn Device>> = vec![];
    if a.sim {
        devices.push(Box::new(crate::device::sim::SimDevice::new()?));
    } else {
        let count = match cuda::device_count() {
            Ok(n) if n > 0 => n,
            Ok(_) => return Err(Exit::new(3, "no GPU: the CUDA driver reports no devices; run `appliance selftest --sim` to test the kernels on the simulated device").into()),
            Err(e) => return Err(Exit::new(3, format!("no GPU: {e:#}; run `appliance selftest --sim` to test the kernels on the simulated device")).into()),
        };
        // Collectives need NCCL; report whether it loads (through the
        // libnccl.so.2 shim when that is all the system has).
        match crate::device::nccl::ensure_loadable() {
            // SAFETY: probes whether cudarc can load the library.
            Ok(Some(p)) if unsafe { cudarc::nccl::sys::is_culib_present() } => eprintln!("NCCL: loads ({})", p.display()),
            Ok(Some(p)) => eprintln!("NCCL: found {} but it does not load", p.display()),
            Ok(None) => eprintln!("NCCL: not found (multi-GPU collectives unavailable)"),
            Err(e) => eprintln!("NCCL: {e:#}"),
        }
        for i in 0..count {
            devices.push(Box::new(cuda::CudaDevice::new(i)?));
        }
    }
    let quick = a.quick || a.sim;
    // The table streams: each row is printed as its case finishes.
    if !a.json {
        println!("{:<26} {:<24} {:<36} {:>6} {:>10} {:>9} {:>9}", "device", "kernel", "shape", "result", "max_err", "tol", "ms");
    }
    let mut all: Vec<(String, KernelCheck)> = vec![];
    for (i, dev) in devices.iter_mut().enumerate() {
        let name = format!("{i}: {}", dev.name());
        let print = |c: &KernelCheck| {
            if !a.json {
                print_row(&name, c);
            }
        };
        for c in run_each(dev.as_mut(), quick, a.filter.as_deref(), print) {
            all.push((name.clone(), c));
        }
        // The whole training step of the GPU model backend, on a fresh
        // device each (it owns its device).
        if a.filter.as_deref().is_none_or(|f| "model_step".contains(f)) {
            let mut open = || -> Result<Box<dyn Device + Send>> {
                Ok(if a.sim { Box::new(crate::device::sim::SimDevice::new()?) } else { Box::new(cuda::CudaDevice::new(i)?) })
            };
            for c in crate::model::qwen2_gpu::step_checks(&mut open, quick, print) {
                all.push((name.clone(), c));
            }
        }
    }
    let failed = all.iter().filter(|(_, c)| !c.passed).count();
    if a.json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|(d, c)| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                v["device"] = serde_json::Value::String(d.clone());
                if !c.max_err.is_finite() {
                    v["max_err"] = serde_json::Value::Null;
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "checks": rows, "failed": failed }))?);
    } else {
        println!("{} checks, {} failed", all.len(), failed);
    }
    if failed > 0 {
        return Err(Exit::new(1, format!("{failed} kernel checks failed")).into());
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn print_row(device: &str, c: &KernelCheck) {
    println!(
        "{:<26} {:<24} {:<36} {:>6} {:>10.2e} {:>9.1e} {:>9.2}",
        truncate(device, 26),
        c.kernel,
        c.shape,
        if c.passed { "pass" } else { "FAIL" },
        c.max_err,
        c.tolerance,
        c.seconds * 1e3
    );
    if let Some(e) = &c.error {
        println!("    error: {e}");
    }
}
