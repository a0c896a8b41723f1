//! The rollout suite: end-to-end episode throughput of the embedded tiny
//! model on the built-in tasks in real containers, at several numbers of
//! parallel episodes, with the share of episode time spent generating, in
//! the environment and grading. The first concurrency is the baseline of
//! the speedup rows (same process, same run).

use super::Row;
use crate::agent::episode::Scaffold;
use crate::agent::policy::LocalPolicy;
use crate::agent::rollout::{prepare_images, rollout, RolloutOptions, RolloutTotals};
use crate::agent::scaffold::ScaffoldConfig;
use crate::engine::service::EngineService;
use crate::engine::SamplingParams;
use crate::env::grade::GradeOptions;
use crate::env::pool::Pool;
use crate::env::{self, sandbox, suite};
use crate::model::chat::ChatTemplate;
use crate::model::pretrained;
use anyhow::Result;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Turns per episode and tokens per reply in the benchmark.
pub const MAX_TURNS: u32 = 4;
pub const MAX_REPLY_TOKENS: usize = 48;

fn row(name: String, v: f64, unit: &str, episodes: usize) -> Row {
    Row { suite: "rollout".into(), name, median: v, min: v, max: v, unit: unit.into(), tokens_per_s: None, util_mean_pct: None, util_peak_pct: None, memory_peak_bytes: None, mfu: None, repeats: episodes }
}

/// One rollout of the built-in suite per entry of `concurrency`.
pub fn run(concurrency: &[usize]) -> Result<(Vec<Row>, Vec<(usize, RolloutTotals)>)> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let measured = rt.block_on(async {
        let d = env::connect().await?;
        sandbox::reap_expired(&d).await?;
        let run_id = env::new_run_id("bench-rollout");
        sandbox::spawn_signal_reaper(d.clone(), run_id.clone());
        let _guard = sandbox::RunGuard { run_id: run_id.clone() };
        let tasks = suite::tasks()?;
        let pool = Pool::new(d.clone(), concurrency.iter().copied().max().unwrap_or(1), 2);
        let images = prepare_images(&pool, &tasks, None, false).await?;
        let p = pretrained::load(None, 0)?;
        let cfg = ScaffoldConfig { max_turns: MAX_TURNS, max_reply_tokens: MAX_REPLY_TOKENS, max_context_tokens: p.model.cfg.max_position_embeddings, ..Default::default() };
        let sc = Scaffold::new(cfg, ChatTemplate::new(p.tokenizer.clone())?, GradeOptions { run_id: run_id.clone(), test_timeout: Duration::from_secs(120) })?;
        let mut out = vec![];
        for &n in concurrency {
            let engine = EngineService::start(p.model.clone(), "tiny", 256, n.max(1))?;
            let policy = Arc::new(LocalPolicy { engine, tokenizer: p.tokenizer.clone(), params: SamplingParams::default() });
            let opts = RolloutOptions { samples: 1, seed: 0, env_retries: 1, progress: false };
            let (_, totals) = rollout(&pool, &sc, policy, &tasks, &images, &opts, n, None, &HashSet::new()).await?;
            eprintln!("rollout, {n} parallel: {}", totals.line());
            out.push((n, totals));
        }
        let _ = sandbox::reap_run(&d, &run_id).await;
        anyhow::Ok(out)
    })?;
    let mut rows = vec![];
    let base = measured.first().map(|(_, t)| t.episodes_per_minute()).unwrap_or(f64::NAN);
    for (n, t) in &measured {
        let (g, e, r) = t.time_split();
        rows.push(row(format!("tiny model, built-in suite, {n} parallel: episodes"), t.episodes_per_minute(), "episodes/min", t.episodes));
        rows.push(row(format!("tiny model, built-in suite, {n} parallel: turns"), t.turns_per_second(), "turns/s", t.episodes));
        rows.push(row(format!("  {n} parallel: share of episode time generating"), g * 100.0, "%", t.episodes));
        rows.push(row(format!("  {n} parallel: share in the environment"), e * 100.0, "%", t.episodes));
        rows.push(row(format!("  {n} parallel: share grading"), r * 100.0, "%", t.episodes));
        rows.push(row(format!("  {n} parallel vs {} parallel", measured[0].0), t.episodes_per_minute() / base, "x", t.episodes));
    }
    Ok((rows, measured))
}
