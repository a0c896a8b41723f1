//! `appliance report`: one self-contained HTML page (inline SVG plots) from
//! a run directory that `appliance train` wrote, while it runs or after.
//!
//! Owns: the arguments, warnings on stderr, and writing the page atomically.
//! Reading the run and drawing belong to `crate::report`.

use crate::files::write_atomic;
use crate::report;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory (metrics.jsonl, summary.json, config.toml).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
    /// Where to write the page (default: RUN_DIR/report.html).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let run = report::load(&a.run_dir)?;
    for w in &run.warnings {
        eprintln!("warning: {w}");
    }
    let html = report::render(&run).with_context(|| format!("rendering the report of {}", a.run_dir.display()))?;
    let out = a.out.unwrap_or_else(|| a.run_dir.join("report.html"));
    write_atomic(&out, html.as_bytes())?;
    println!("{}", out.display());
    Ok(())
}
