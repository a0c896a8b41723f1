//! `appliance eval`: Pass@1 (mean over k runs ± SEM) and Pass@k of a policy
//! on a task set, as the method reports them; from new episodes, or from a
//! trajectory file (`--from`).

use super::rollout::{collect, RunArgs};
use crate::agent::eval::{render_table, summarize};
use crate::agent::trajectory::read_trajectories;
use crate::config::Config;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    /// Evaluate the trajectories in this file instead of running episodes.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "out")]
    pub from: Option<PathBuf>,
    /// Also keep the new trajectories here (appended; pairs already in it are reused).
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
    /// k of Pass@k (default: --samples).
    #[arg(long)]
    pub k: Option<usize>,
    /// Print the summary as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, a: Args) -> Result<()> {
    let trajs = match &a.from {
        Some(p) => {
            let r = read_trajectories(p)?;
            if let Some(l) = r.torn_line {
                eprintln!("warning: {}: line {l} was cut short by a crash; skipped", p.display());
            }
            r.items
        }
        None => {
            let (t, totals) = collect(config, &a.run, a.out.as_deref())?;
            if let Some(t) = totals {
                eprintln!("{}", t.line());
            }
            t
        }
    };
    if trajs.is_empty() {
        bail!("no trajectories to evaluate");
    }
    let k = a.k.unwrap_or(a.run.samples as usize).max(1);
    let s = summarize(&trajs, k);
    if a.json {
        eprint!("{}", render_table(&s));
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render_table(&s));
    }
    Ok(())
}
