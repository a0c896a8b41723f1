//! `appliance train` (also what `appliance` with no command runs): the whole
//! pipeline — warm start, rejection fine-tuning, DAPO — with the held-out
//! pass rate before and after each phase. With the embedded default it runs
//! on the CPU with the tiny model and generated micro tasks in real
//! containers, in minutes.

use crate::config::Config;
use crate::pipeline::{self, TrainOptions};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// The run directory to create (default: runs/train-<unix time>).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its last checkpoint, with its own config.toml.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// No progress bars or per-phase lines (the summary is still printed).
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(config: &Config, config_given: bool, a: Args) -> Result<()> {
    if a.resume.is_some() && config_given {
        bail!("--resume continues a run with the config.toml in its directory; leave out --config");
    }
    let (run_dir, resume) = match (a.resume, a.out) {
        (Some(d), _) => (d, true),
        (None, Some(d)) => (d, false),
        (None, None) => {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            (PathBuf::from("runs").join(format!("train-{secs}")), false)
        }
    };
    if !a.quiet {
        eprintln!("appliance train: run directory {}", run_dir.display());
    }
    let summary = pipeline::train(config.clone(), &TrainOptions { run_dir: run_dir.clone(), resume, progress: !a.quiet })?;
    println!("held-out pass rate (mean over tasks ± SEM):");
    let order = ["initial", "warm_start", "rft", "dapo"];
    for p in order {
        if let Some(r) = summary.get(p) {
            println!("  {p:<11} {:.3} ± {:.3}  ({} of {} episodes solved)", r.pass_rate, r.sem, r.solved, r.episodes);
        }
    }
    println!("run directory: {} (summary.json, metrics.jsonl; `appliance report {}` draws the curves)", run_dir.display(), run_dir.display());
    Ok(())
}
