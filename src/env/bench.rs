//! `appliance bench env`: short commands per second through the persistent
//! session against one `docker exec` per command, and container
//! start-to-ready p50/p99, each at several numbers of concurrent episodes.
//!
//! Owns: the benchmark plan and its table. Does not own: the mechanisms it
//! measures (`shell`, `sandbox`, `pool`).

use super::pool::{percentile, Pool};
use super::sandbox::{self, Spec};
use super::shell::Shell;
use anyhow::Result;
use bollard::Docker;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    /// Numbers of concurrent episodes to measure.
    pub concurrency: Vec<usize>,
    /// Short commands per episode and mode.
    pub commands: usize,
    /// Episode starts per concurrency level, for the latency percentiles.
    pub starts: usize,
    pub image: String,
    pub run_id: String,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub concurrency: usize,
    pub session_per_s: f64,
    pub exec_per_s: f64,
    pub ready_p50: f64,
    pub ready_p99: f64,
    pub starts: usize,
    pub cmd_p50_ms: f64,
}

/// Run the benchmark.
pub async fn run(docker: &Docker, o: &Options) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in &o.concurrency {
        let pool = Pool::new(docker.clone(), n, n);
        let spec = Spec::new(&o.image, &o.run_id);
        // start-to-ready: `starts` waves of n concurrent episodes
        let mut ready = Vec::new();
        let waves = o.starts.div_ceil(n).max(1);
        let mut last_wave = Vec::new();
        for w in 0..waves {
            let mut hs = Vec::new();
            for _ in 0..n {
                let pool = pool.clone();
                let spec = spec.clone();
                hs.push(tokio::spawn(async move { pool.episode(&spec, "HEAD").await }));
            }
            let mut eps = Vec::new();
            for h in hs {
                let e = h.await??;
                ready.push(e.ep.start_to_ready.as_secs_f64());
                eps.push(e);
            }
            if w + 1 == waves {
                last_wave = eps;
            } else {
                for e in eps {
                    e.close().await;
                }
            }
        }
        // commands through the session, all episodes at once
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let t0 = Instant::now();
        let mut hs = Vec::new();
        for mut e in last_wave {
            let m = o.commands;
            let b = barrier.clone();
            hs.push(tokio::spawn(async move {
                b.wait().await;
                let mut lat = Vec::new();
                for i in 0..m {
                    let r = e.ep.run(&format!("echo {i}"), Duration::from_secs(30)).await;
                    match r {
                        Ok(r) => lat.push(r.elapsed.as_secs_f64()),
                        Err(err) => return Err((err, e)),
                    }
                }
                Ok((e, lat))
            }));
        }
        let mut eps = Vec::new();
        let mut lat = Vec::new();
        for h in hs {
            match h.await? {
                Ok((e, l)) => {
                    eps.push(e);
                    lat.extend(l);
                }
                Err((err, e)) => {
                    e.close().await;
                    return Err(err);
                }
            }
        }
        let session_secs = t0.elapsed().as_secs_f64();
        // the same commands, one exec each
        let t1 = Instant::now();
        let mut hs = Vec::new();
        for e in &eps {
            let mut sh = Shell::exec_only(docker.clone(), &e.ep.container);
            let m = o.commands;
            hs.push(tokio::spawn(async move {
                for i in 0..m {
                    sh.run_exec(&format!("echo {i}"), Duration::from_secs(30)).await?;
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        let mut err = None;
        for h in hs {
            if let Err(e) = h.await? {
                err = Some(e);
            }
        }
        let exec_secs = t1.elapsed().as_secs_f64();
        for e in eps {
            e.close().await;
        }
        if let Some(e) = err {
            return Err(e);
        }
        let total = (n * o.commands) as f64;
        rows.push(Row {
            concurrency: n,
            session_per_s: total / session_secs,
            exec_per_s: total / exec_secs,
            ready_p50: percentile(&ready, 50.0),
            ready_p99: percentile(&ready, 99.0),
            starts: ready.len(),
            cmd_p50_ms: percentile(&lat, 50.0) * 1000.0,
        });
        let _ = sandbox::reap_run(docker, &o.run_id).await;
    }
    Ok(rows)
}

/// The benchmark's table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from("episodes  session cmd/s  exec cmd/s  speedup  session cmd p50  start-to-ready p50  p99  (starts)\n");
    for r in rows {
        s.push_str(&format!(
            "{:>8}  {:>13.1}  {:>10.1}  {:>6.1}×  {:>12.2} ms  {:>17.3} s  {:.3} s  ({})\n",
            r.concurrency,
            r.session_per_s,
            r.exec_per_s,
            r.session_per_s / r.exec_per_s,
            r.cmd_p50_ms,
            r.ready_p50,
            r.ready_p99,
            r.starts
        ));
    }
    s
}
