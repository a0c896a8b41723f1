//! `appliance env`: build the base image, list tasks, validate tasks.

use crate::env::{self, image, pool::Pool, sandbox, suite, task, validate};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Build the base image (Python 3, git, pytest) with debootstrap, unless it exists.
    BuildBase,
    /// List tasks (the built-in suite without --tasks).
    List(TaskArgs),
    /// Check that the empty patch fails and the gold patch passes, N times per task.
    Validate(ValidateArgs),
}

#[derive(clap::Args, Debug)]
pub struct TaskArgs {
    /// SWE-bench style tasks: JSONL or a JSON array (default: the built-in suite).
    #[arg(long, value_name = "FILE")]
    pub tasks: Option<PathBuf>,
    /// Keep the valid entries of a task file and report the others.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Image name template for tasks without one, e.g. `registry/sweb.eval.x86_64.{instance_id_docker}`.
    #[arg(long, value_name = "TEMPLATE")]
    pub image_template: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub tasks: TaskArgs,
    /// Times each patch is graded (catches flaky tests).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Gradings at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Per-grading test timeout in seconds.
    #[arg(long, default_value_t = 300)]
    pub test_timeout: u64,
    /// Where to write the valid tasks (JSONL).
    #[arg(long, value_name = "FILE", default_value = "validated-tasks.jsonl")]
    pub out: PathBuf,
}

/// The tasks of `a`: a file, or the built-in suite.
pub(super) fn load_tasks(a: &TaskArgs) -> Result<Vec<task::Task>> {
    match &a.tasks {
        None => suite::tasks(),
        Some(p) => {
            let l = task::load(p, &task::LoadOptions { skip_invalid: a.skip_invalid })?;
            for s in &l.skipped {
                eprintln!("skipped: {s}");
            }
            Ok(l.tasks)
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        match a.command {
            Cmd::List(t) => {
                for t in load_tasks(&t)? {
                    println!("{}\t{}\tF2P={} P2P={}", t.instance_id, t.repo, t.fail_to_pass.len(), t.pass_to_pass.len());
                }
                Ok(())
            }
            Cmd::BuildBase => {
                let d = env::connect().await?;
                let tag = image::ensure_base(&d).await?;
                println!("{tag}");
                Ok(())
            }
            Cmd::Validate(v) => {
                let tasks = load_tasks(&v.tasks)?;
                let d = env::connect().await?;
                let reaped = sandbox::reap_expired(&d).await?;
                if reaped > 0 {
                    eprintln!("removed {reaped} expired containers");
                }
                let run_id = env::new_run_id("validate");
                sandbox::spawn_signal_reaper(d.clone(), run_id.clone());
                let pool = Pool::new(d.clone(), v.concurrency, 2);
                let r = validate::validate(&pool, &tasks, v.runs, v.tasks.image_template.as_deref(), &run_id, Duration::from_secs(v.test_timeout)).await;
                let _ = sandbox::reap_run(&d, &run_id).await;
                let rows = r?;
                print!("{}", validate::table(&rows));
                let clean: Vec<task::Task> = tasks.iter().filter(|t| rows.iter().any(|r| r.instance_id == t.instance_id && r.valid())).cloned().collect();
                task::write_jsonl(&v.out, &clean)?;
                println!("wrote {} valid tasks to {}", clean.len(), v.out.display());
                if clean.len() != tasks.len() {
                    bail!("{} of {} tasks are not valid", tasks.len() - clean.len(), tasks.len());
                }
                Ok(())
            }
        }
    })
}
