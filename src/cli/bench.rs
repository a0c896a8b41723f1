//! `appliance bench [model|kernels|train|env|rollout|all]`: the benchmark mode. Prints a
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
    /// Training tokens/s (forward + backward + AdamW) for the tiny model and a ~100M config, CPU backend; with a GPU, also the GPU model backend's step and Qwen2.5-0.5B shapes.
    Train,
    Env,
    /// Episodes of the tiny model on the built-in suite (Docker): episodes/min, turns/s, time split.
    Rollout,
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
    /// Timed repeats after the warm-up (the train suite's 100M shape takes at most 3).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// env and rollout suites: numbers of concurrent episodes, one measurement each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    pub episodes: Vec<usize>,
}

/// The env suite (Docker): persistent session vs one exec per command, and
/// container start-to-ready, at each number of concurrent episodes.
fn env_rows(episodes: &[usize]) -> Result<Vec<bench::Row>> {
    use crate::env::{self, bench as eb, image, sandbox};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let measured = rt.block_on(async {
        let d = env::connect().await?;
        sandbox::reap_expired(&d).await?;
        let img = image::ensure_base(&d).await?;
        let run_id = env::new_run_id("bench");
        sandbox::spawn_signal_reaper(d.clone(), run_id.clone());
        let o = eb::Options { concurrency: episodes.to_vec(), commands: 200, starts: 20, image: img, run_id: run_id.clone() };
        let r = eb::run(&d, &o).await;
        let _ = sandbox::reap_run(&d, &run_id).await;
        r
    })?;
    eprint!("{}", eb::table(&measured));
    let row = |name: String, v: f64, unit: &str, repeats: usize| bench::Row::derived("env", name, v, unit, repeats);
    let mut rows = Vec::new();
    for m in &measured {
        let n = m.concurrency;
        rows.push(row(format!("session, short commands, {n} episodes"), m.session_per_s, "cmd/s", 1));
        rows.push(row(format!("exec per command, short commands, {n} episodes"), m.exec_per_s, "cmd/s", 1));
        rows.push(row(format!("session/exec speedup, {n} episodes"), m.session_per_s / m.exec_per_s, "x", 1));
        rows.push(row(format!("start-to-ready p50, {n} episodes"), m.ready_p50 * 1000.0, "ms", m.starts));
        rows.push(row(format!("start-to-ready p99, {n} episodes"), m.ready_p99 * 1000.0, "ms", m.starts));
    }
    Ok(rows)
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
    if want(Suite::Train) {
        for s in bench::train::shapes().into_iter().chain(if cuda::available() { bench::train::gpu_shapes() } else { vec![] }) {
            eprintln!("{}", bench::train::describe(&s));
        }
        rows.extend(bench::train::run(a.repeats)?);
    }
    if want(Suite::Env) {
        match env_rows(&a.episodes) {
            Ok(r) => rows.extend(r),
            Err(e) if a.suite != Suite::Env => eprintln!("skipping the env suite: {e:#}"),
            Err(e) => return Err(e),
        }
    }
    if want(Suite::Rollout) {
        match bench::rollout::run(&a.episodes) {
            Ok((r, _)) => rows.extend(r),
            Err(e) if a.suite != Suite::Rollout => eprintln!("skipping the rollout suite: {e:#}"),
            Err(e) => return Err(e),
        }
    }
    let report = bench::report(rows);
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &a.out {
        crate::files::write_atomic(out, json.as_bytes())?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", bench::render(&report, baseline.as_ref()));
    }
    Ok(())
}
