//! A pool that runs up to N episodes (or gradings) at once, with a smaller
//! bound on concurrent container starts so the daemon is never flooded,
//! and records start-to-ready and per-command latency.
//!
//! Owns: admission (semaphores) and latency statistics. Does not own: what
//! an episode does (`episode`) or grading (`grade`).

use super::episode::Episode;
use super::grade::{self, GradeOptions, Report};
use super::sandbox::Spec;
use super::task::Task;
use anyhow::Result;
use bollard::Docker;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Latency samples in seconds.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub start_to_ready: Vec<f64>,
    pub cmd_latency: Vec<f64>,
}

/// The p-th percentile (0..=100) by nearest rank; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

#[derive(Clone)]
pub struct Pool {
    pub docker: Docker,
    episodes: Arc<Semaphore>,
    starts: Arc<Semaphore>,
    pub metrics: Arc<Mutex<Metrics>>,
}

/// An episode holding a pool slot; `close` returns the slot and records latency.
pub struct PooledEpisode {
    pub ep: Episode,
    _slot: OwnedSemaphorePermit,
    metrics: Arc<Mutex<Metrics>>,
}

impl PooledEpisode {
    pub async fn close(self) {
        if let Ok(mut m) = self.metrics.lock() {
            m.start_to_ready.push(self.ep.start_to_ready.as_secs_f64());
            m.cmd_latency.extend(self.ep.cmd_latencies.iter().map(|d| d.as_secs_f64()));
        }
        self.ep.close().await;
    }
}

impl Pool {
    /// Up to `max_episodes` at once; at most `max_starts` container starts in flight.
    pub fn new(docker: Docker, max_episodes: usize, max_starts: usize) -> Self {
        Pool { docker, episodes: Arc::new(Semaphore::new(max_episodes.max(1))), starts: Arc::new(Semaphore::new(max_starts.max(1))), metrics: Arc::new(Mutex::new(Metrics::default())) }
    }

    /// Wait for a slot, then start an episode.
    pub async fn episode(&self, spec: &Spec, base_commit: &str) -> Result<PooledEpisode> {
        let slot = self.episodes.clone().acquire_owned().await?;
        let ep = {
            let _start = self.starts.acquire().await?;
            Episode::start(&self.docker, spec, base_commit).await?
        };
        Ok(PooledEpisode { ep, _slot: slot, metrics: self.metrics.clone() })
    }

    /// Wait for a slot, then grade a patch in a fresh container.
    pub async fn grade(&self, task: &Task, image: &str, patch: &str, opts: &GradeOptions) -> Report {
        let _slot = self.episodes.clone().acquire_owned().await;
        grade::grade(&self.docker, task, image, patch, opts).await
    }

    pub fn snapshot(&self) -> Metrics {
        self.metrics.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Seconds as a short string for tables.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(super::percentile(&v, 50.0), 50.0);
        assert_eq!(super::percentile(&v, 99.0), 99.0);
        assert_eq!(super::percentile(&[3.0], 99.0), 3.0);
        assert!(super::percentile(&[], 50.0).is_nan());
    }
}
