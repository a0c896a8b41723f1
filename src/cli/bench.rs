//! `appliance bench`: benchmarks, one subcommand per suite (`env` for now).

use crate::env::{self, bench, image, sandbox};
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub suite: Suite,
}

#[derive(clap::Subcommand, Debug)]
pub enum Suite {
    /// Persistent session vs one docker exec per command; container start-to-ready.
    Env(EnvArgs),
}

#[derive(clap::Args, Debug)]
pub struct EnvArgs {
    /// Concurrent episodes, one measurement per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    pub concurrency: Vec<usize>,
    /// Short commands per episode and mode.
    #[arg(long, default_value_t = 200)]
    pub commands: usize,
    /// Container starts per level (for the percentiles).
    #[arg(long, default_value_t = 20)]
    pub starts: usize,
}

pub fn run(a: Args) -> Result<()> {
    match a.suite {
        Suite::Env(e) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async move {
                let d = env::connect().await?;
                sandbox::reap_expired(&d).await?;
                let img = image::ensure_base(&d).await?;
                let run_id = env::new_run_id("bench");
                sandbox::spawn_signal_reaper(d.clone(), run_id.clone());
                let o = bench::Options { concurrency: e.concurrency, commands: e.commands, starts: e.starts, image: img, run_id: run_id.clone() };
                let r = bench::run(&d, &o).await;
                let _ = sandbox::reap_run(&d, &run_id).await;
                print!("{}", bench::table(&r?));
                Ok(())
            })
        }
    }
}
