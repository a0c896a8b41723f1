//! Benchmark mode: suites that measure throughput, with the hardware and
//! software they ran on, while the monitor samples utilization.
//!
//! Owns: the suites (`model`, `kernels`, `train`, `rollout`; `env` lives
//! with the environments), repetition (warm-up, then repeats; median and
//! spread), the report format (a table, and JSON with `tokens_per_s` on each
//! measured row) and the comparison against an earlier report. Speeds are
//! only ever reported, as numbers and as ratios against a baseline in the
//! same run: never asserted.

pub mod attention;
pub mod kernels;
pub mod model;
pub mod rollout;
pub mod sdpa;
pub mod train;

use crate::monitor::metrics::{aggregate, Stat};
use crate::monitor::sampler::{Sampler, Source};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// One measured row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub suite: String,
    pub name: String,
    /// The row's rate in its unit, median over repeats.
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub unit: String,
    /// Present on every row that processes tokens.
    pub tokens_per_s: Option<f64>,
    pub util_mean_pct: Option<f64>,
    pub util_peak_pct: Option<f64>,
    pub memory_peak_bytes: Option<u64>,
    /// Model FLOP utilization against the GPU's peak (None on the CPU).
    pub mfu: Option<f64>,
    pub repeats: usize,
}

impl Row {
    /// A row computed from other measurements (a ratio, a share, a
    /// percentile): one value, no utilization of its own.
    pub fn derived(suite: &str, name: String, v: f64, unit: &str, repeats: usize) -> Row {
        Row {
            suite: suite.into(),
            name,
            median: v,
            min: v,
            max: v,
            unit: unit.into(),
            tokens_per_s: None,
            util_mean_pct: None,
            util_peak_pct: None,
            memory_peak_bytes: None,
            mfu: None,
            repeats,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub appliance_version: String,
    pub hardware: serde_json::Value,
    pub software: serde_json::Value,
    pub rows: Vec<Row>,
}

/// Measure `f` (which returns how many units it processed) `repeats` times
/// after one warm-up, sampling utilization throughout.
/// `on_cpu`: the work runs on the CPU backend, so sample this process's
/// CPU time even when GPUs are present.
pub fn measure(suite: &str, name: &str, unit: &str, repeats: usize, tokens: bool, on_cpu: bool, mut f: impl FnMut() -> Result<f64>) -> Result<Row> {
    f().with_context(|| format!("{suite}/{name}: warm-up"))?;
    let sampler = if on_cpu { Sampler::start_process(Duration::from_millis(50)) } else { Sampler::start(Duration::from_millis(50)) };
    let mut rates = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let units = f().with_context(|| format!("{suite}/{name}"))?;
        rates.push(units / t.elapsed().as_secs_f64().max(1e-12));
    }
    let source = sampler.source;
    let agg = aggregate(&sampler.stop());
    let (lo, hi) = rates.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &r| (a.min(r), b.max(r)));
    let median = median(&mut rates);
    let util: Option<Stat> = (agg.node_util.samples > 0).then_some(agg.node_util);
    Ok(Row {
        suite: suite.into(),
        name: name.into(),
        median,
        min: lo,
        max: hi,
        unit: unit.into(),
        tokens_per_s: tokens.then_some(median),
        util_mean_pct: util.map(|u| u.mean),
        util_peak_pct: util.map(|u| u.peak),
        memory_peak_bytes: (agg.node_memory_peak_bytes > 0).then_some(agg.node_memory_peak_bytes).filter(|_| source == Source::Gpus || util.is_some()),
        mfu: None,
        repeats: rates.len(),
    })
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The machine: CPU model, cores, memory, GPUs (through NVML when present).
pub fn hardware() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string());
    let mem_kb: Option<u64> = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()));
    let gpus = crate::monitor::gpu::open().ok().map(|n| crate::monitor::gpu::snapshot(&n));
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_bytes": mem_kb.map(|k| k * 1024),
        "gpus": gpus,
    })
}

pub fn software() -> serde_json::Value {
    serde_json::json!({
        "appliance": env!("CARGO_PKG_VERSION"),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "rayon_threads": rayon::current_num_threads(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

pub fn report(rows: Vec<Row>) -> Report {
    Report { appliance_version: env!("CARGO_PKG_VERSION").into(), hardware: hardware(), software: software(), rows }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".into())
}

/// The table; with `baseline`, a ratio column against its matching rows.
pub fn render(r: &Report, baseline: Option<&Report>) -> String {
    let mut s = format!(
        "{:<8} {:<44} {:>12} {:>23} {:<10} {:>9} {:>10} {:>8}{}\n",
        "suite", "name", "median", "min..max", "unit", "util %", "mem MiB", "MFU",
        if baseline.is_some() { "  vs baseline" } else { "" }
    );
    for row in &r.rows {
        let ratio = baseline.map(|b| {
            b.rows
                .iter()
                .find(|x| x.suite == row.suite && x.name == row.name && x.unit == row.unit)
                .map(|x| format!("  {:.2}x", row.median / x.median))
                .unwrap_or_else(|| "  (new)".into())
        });
        s.push_str(&format!(
            "{:<8} {:<44} {:>12.1} {:>23} {:<10} {:>9} {:>10} {:>8}{}\n",
            row.suite,
            row.name,
            row.median,
            format!("{:.1}..{:.1}", row.min, row.max),
            row.unit,
            match (row.util_mean_pct, row.util_peak_pct) {
                (Some(m), Some(p)) => format!("{m:.0}/{p:.0}"),
                _ => "n/a".into(),
            },
            fmt_opt(row.memory_peak_bytes.map(|b| b as f64), |b| format!("{:.0}", b / 1048576.0)),
            fmt_opt(row.mfu, |m| format!("{:.1}%", m * 100.0)),
            ratio.unwrap_or_default()
        ));
    }
    s
}
