//! Rollouts: many episodes in parallel, each written to the trajectory file
//! the moment it ends.
//!
//! Owns: building the task images once, running every (task, sample) pair
//! with a bounded number of episodes at once, retrying environment errors (a
//! failure of the sandbox is never scored), the progress bar with the live
//! pass rate, appending each trajectory (fsynced) as it completes, skipping
//! pairs an earlier, interrupted run already wrote, and the run's totals
//! (throughput and where the time went). Does not own one episode
//! (`episode`) or statistics over trajectories (`eval`).

use super::episode::{run_episode, EpisodeSpec, Scaffold};
use super::policy::{episode_seed, Policy};
use super::trajectory::{Exit, JsonlWriter, Trajectory};
use crate::env::image;
use crate::env::pool::Pool;
use crate::env::task::Task;
use anyhow::Result;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct RolloutOptions {
    /// Samples per task.
    pub samples: u32,
    pub seed: u64,
    pub env_retries: u32,
    pub progress: bool,
}

/// Totals of a rollout.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RolloutTotals {
    pub episodes: usize,
    pub scored: usize,
    pub solved: usize,
    pub env_errors: usize,
    pub policy_errors: usize,
    pub turns: usize,
    pub wall_s: f64,
    /// Summed over episodes (they overlap in time).
    pub generation_s: f64,
    pub env_s: f64,
    pub grading_s: f64,
}

impl RolloutTotals {
    pub fn add(&mut self, t: &Trajectory) {
        self.episodes += 1;
        self.scored += t.reward.is_some() as usize;
        self.solved += t.solved() as usize;
        self.env_errors += (t.exit == Exit::EnvironmentError || (t.reward.is_none() && t.grade.is_some())) as usize;
        self.policy_errors += (t.exit == Exit::PolicyError) as usize;
        self.turns += t.turns.len();
        self.generation_s += t.timing.generation_s;
        self.env_s += t.timing.env_s;
        self.grading_s += t.timing.grading_s;
    }

    pub fn episodes_per_minute(&self) -> f64 {
        self.episodes as f64 * 60.0 / self.wall_s.max(1e-9)
    }

    pub fn turns_per_second(&self) -> f64 {
        self.turns as f64 / self.wall_s.max(1e-9)
    }

    /// The shares of episode time spent generating, in the environment and grading.
    pub fn time_split(&self) -> (f64, f64, f64) {
        let all = (self.generation_s + self.env_s + self.grading_s).max(1e-12);
        (self.generation_s / all, self.env_s / all, self.grading_s / all)
    }

    pub fn line(&self) -> String {
        let (g, e, r) = self.time_split();
        format!(
            "{} episodes ({} solved of {} scored, {} environment errors, {} policy errors) in {:.1} s: {:.1} episodes/min, {:.2} turns/s; time: generation {:.0}%, environment {:.0}%, grading {:.0}%",
            self.episodes,
            self.solved,
            self.scored,
            self.env_errors,
            self.policy_errors,
            self.wall_s,
            self.episodes_per_minute(),
            self.turns_per_second(),
            g * 100.0,
            e * 100.0,
            r * 100.0
        )
    }
}

/// Build (or find) each task's image, in task order.
pub async fn prepare_images(pool: &Pool, tasks: &[Task], template: Option<&str>, progress: bool) -> Result<Vec<String>> {
    let bar = if progress { ProgressBar::new(tasks.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("images [{bar:30}] {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        bar.set_message(t.instance_id.clone());
        out.push(image::ensure_task_image(&pool.docker, t, template).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

fn failed_by_environment(t: &Trajectory) -> bool {
    t.exit == Exit::EnvironmentError || (t.grade.is_some() && t.reward.is_none())
}

/// Run every (task, sample) pair not in `done`; each trajectory is appended
/// to `out` as it ends. Returns the new trajectories sorted by task, then
/// sample.
#[allow(clippy::too_many_arguments)]
pub async fn rollout(
    pool: &Pool,
    sc: &Scaffold,
    policy: Arc<dyn Policy>,
    tasks: &[Task],
    images: &[String],
    opts: &RolloutOptions,
    concurrency: usize,
    mut out: Option<&mut JsonlWriter>,
    done: &HashSet<(String, u32)>,
) -> Result<(Vec<Trajectory>, RolloutTotals)> {
    let t0 = Instant::now();
    let mut jobs = vec![];
    for (i, t) in tasks.iter().enumerate() {
        for s in 0..opts.samples {
            if !done.contains(&(t.instance_id.clone(), s)) {
                jobs.push((i, s));
            }
        }
    }
    let bar = if opts.progress { ProgressBar::new(jobs.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("episodes [{bar:30}] {pos}/{len} {msg} ({elapsed})").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let mut totals = RolloutTotals::default();
    let runs = futures_util::stream::iter(jobs.into_iter().map(|(i, s)| {
        let policy = policy.clone();
        async move {
            let seed = episode_seed(opts.seed, i, s);
            let mut attempts = 0;
            loop {
                attempts += 1;
                let mut t = run_episode(pool, sc, policy.as_ref(), EpisodeSpec { task: &tasks[i], image: &images[i], sample: s, seed }).await;
                t.attempts = attempts;
                if failed_by_environment(&t) && attempts <= opts.env_retries {
                    tracing::warn!("{} sample {s}: environment error ({}); retrying", tasks[i].instance_id, t.exit_detail);
                    continue;
                }
                return (i, t);
            }
        }
    }))
    .buffer_unordered(concurrency.max(1));
    futures_util::pin_mut!(runs);
    let mut results: Vec<(usize, Trajectory)> = vec![];
    while let Some((i, t)) = runs.next().await {
        if let Some(w) = out.as_deref_mut() {
            w.append(&t)?;
        }
        totals.add(&t);
        bar.set_message(format!("pass rate {}/{} = {:.0}%", totals.solved, totals.scored, 100.0 * totals.solved as f64 / totals.scored.max(1) as f64));
        bar.inc(1);
        results.push((i, t));
    }
    bar.finish_and_clear();
    totals.wall_s = t0.elapsed().as_secs_f64();
    results.sort_by(|a, b| (a.0, a.1.sample).cmp(&(b.0, b.1.sample)));
    Ok((results.into_iter().map(|x| x.1).collect(), totals))
}
