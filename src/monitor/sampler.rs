//! The monitor thread: samples every GPU through one long-lived NVML handle
//! (or, with no GPU, this process's CPU time and resident memory) at a fixed
//! interval, and keeps the samples for the caller to aggregate.
//!
//! The thread owns its NVML handle and stops when the `Sampler` is stopped
//! or dropped; sampling never blocks the measured work.

use super::metrics::DeviceSample;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Gpus,
    /// This process on the CPU: utilization = CPU time / (wall × cores).
    Process,
}

pub struct Sampler {
    pub source: Source,
    samples: Arc<Mutex<Vec<Vec<DeviceSample>>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// CPU time of this process in seconds (user + system), from /proc.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

/// Resident memory of this process in bytes.
pub fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

impl Sampler {
    /// Start sampling GPUs when NVML opens, else this process.
    pub fn start(interval: Duration) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let nvml = super::gpu::open().ok();
        let source = if nvml.as_ref().and_then(|n| n.device_count().ok()).unwrap_or(0) > 0 { Source::Gpus } else { Source::Process };
        let (s2, stop2) = (samples.clone(), stop.clone());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let handle = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let mut last = (Instant::now(), process_cpu_seconds().unwrap_or(0.0));
                while !stop2.load(Ordering::Relaxed) {
                    // Sleep in small steps so stop() returns promptly.
                    let until = Instant::now() + interval;
                    while Instant::now() < until && !stop2.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10).min(interval));
                    }
                    let row = match (&nvml, source) {
                        (Some(nvml), Source::Gpus) => super::gpu::snapshot(nvml)
                            .gpus
                            .iter()
                            .map(|g| DeviceSample {
                                device: g.index,
                                util_pct: g.sm_util_pct.unwrap_or(0) as f64,
                                memory_used_bytes: g.memory_used_bytes.unwrap_or(0),
                                power_w: g.power_w,
                                throttle_reasons: g.throttle_reasons.clone().unwrap_or_default(),
                                ecc_uncorrected: g.ecc_uncorrected_volatile.unwrap_or(0),
                            })
                            .collect(),
                        _ => {
                            let now = (Instant::now(), process_cpu_seconds().unwrap_or(0.0));
                            let wall = now.0.duration_since(last.0).as_secs_f64().max(1e-9);
                            let util = (100.0 * (now.1 - last.1) / (wall * cores)).clamp(0.0, 100.0);
                            last = now;
                            vec![DeviceSample { device: 0, util_pct: util, memory_used_bytes: process_rss_bytes().unwrap_or(0), ..Default::default() }]
                        }
                    };
                    if let Ok(mut s) = s2.lock() {
                        s.push(row);
                    }
                }
            })
            .ok();
        Sampler { source, samples, stop, handle }
    }

    /// Samples gathered so far.
    pub fn len(&self) -> usize {
        self.samples.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take the samples gathered so far (the window restarts).
    pub fn take(&self) -> Vec<Vec<DeviceSample>> {
        self.samples.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default()
    }

    /// Stop the thread and return the remaining samples.
    pub fn stop(mut self) -> Vec<Vec<DeviceSample>> {
        self.halt();
        self.take()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_sampling_sees_a_busy_thread() {
        let s = Sampler::start(Duration::from_millis(20));
        // Busy work until a few samples exist (bounded by iterations).
        let mut x = 0u64;
        for _ in 0..10_000 {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            if s.len() >= 3 {
                break;
            }
        }
        std::hint::black_box(x);
        let samples = s.stop();
        if super::super::gpu::open().is_err() {
            assert!(!samples.is_empty(), "the thread sampled");
            assert!(samples.iter().flatten().all(|d| d.memory_used_bytes > 0));
            assert!(samples.iter().flatten().any(|d| d.util_pct > 0.0), "{samples:?}");
        }
    }

    #[test]
    fn proc_readers_work_here() {
        assert!(process_cpu_seconds().is_some());
        assert!(process_rss_bytes().unwrap() > 0);
    }
}
