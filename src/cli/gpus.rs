//! `appliance gpus`: a snapshot of the node through NVML.
//! Exit codes: 0 with a snapshot; 3 when there is no NVIDIA driver.

use super::Exit;
use crate::monitor::gpu;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let nvml = gpu::open().map_err(|e| Exit::new(3, format!("{e}; this machine has no usable NVIDIA GPU")))?;
    let snap = gpu::snapshot(&nvml);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", gpu::render_table(&snap));
    }
    Ok(())
}
