//! `appliance bench [model|kernels|env|all]`: the benchmark mode. Prints a
//! table (or `--json`) with tokens/s, utilization and memory sampled during
//! each measurement, and MFU where a GPU's peak is known; `--compare FILE`
//! adds the ratio against an earlier JSON report.

use crate::bench::{self, Report};
use crate::device::cuda;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Model,
    Kernels,
    Env,
    All,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum, default_value = "all")]
    pub suite: Suite,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report here (atomically).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// An earlier JSON report to compare against.
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,
    /// Timed repeats after the warm-up.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

pub fn run(a: Args) -> Result<()> {
    let baseline: Option<Report> = match &a.compare {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}:{}:{}: not a bench report: {e}", p.display(), e.line(), e.column()))?)
        }
        None => None,
    };
    let mut rows = vec![];
    let want = |s: Suite| a.suite == s || a.suite == Suite::All;
    if want(Suite::Model) {
        rows.extend(bench::model::run(a.repeats)?);
    }
    if want(Suite::Kernels) {
        if cuda::available() {
            let mut dev = cuda::CudaDevice::new(0)?;
            rows.extend(bench::kernels::run_device(&mut dev, a.repeats)?);
        } else {
            rows.extend(bench::kernels::run_cpu(a.repeats)?);
        }
    }
    if want(Suite::Env) {
        if a.suite == Suite::Env {
            anyhow::bail!("the env suite needs the Docker environments layer, which is not built yet");
        }
        eprintln!("skipping the env suite: the Docker environments layer is not built yet");
    }
    let report = bench::report(rows);
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &a.out {
        crate::model::pretrained::write_atomic(out, json.as_bytes())?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", bench::render(&report, baseline.as_ref()));
    }
    Ok(())
}
