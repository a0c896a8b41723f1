//! The metrics stream: one JSON object per line in RUN/metrics.jsonl
//! (appended and flushed per record, so a crash loses at most the line being
//! written), and the one-line live summary shown under the progress bar.

use super::metrics::{Aggregate, DeviceSample};
use super::sampler::Source;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsStream {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsStream {
    /// Open (create or append to) `run_dir/metrics.jsonl`.
    pub fn open(run_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
        let path = run_dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsStream { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record (a JSON object) as a line.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }
}

/// The device part of a metrics record for a window of samples.
pub fn device_record(agg: &Aggregate, source: Source) -> serde_json::Value {
    serde_json::json!({
        "source": match source { Source::Gpus => "gpus", Source::Process => "cpu" },
        "util_mean_pct": agg.node_util.mean,
        "util_peak_pct": agg.node_util.peak,
        "memory_peak_bytes": agg.node_memory_peak_bytes,
        "power_mean_w": agg.node_power_w.map(|p| p.mean),
        "per_device_util_mean_pct": agg.per_device_util.iter().map(|(_, s)| s.mean).collect::<Vec<_>>(),
    })
}

/// "gpu 87% (peak 99%) · 61.2 GiB · 2.9 kW" or "cpu 93% · rss 212 MiB".
pub fn live_summary(latest: &[DeviceSample], source: Source) -> String {
    if latest.is_empty() {
        return String::new();
    }
    let util = latest.iter().map(|s| s.util_pct).sum::<f64>() / latest.len() as f64;
    let mem: u64 = latest.iter().map(|s| s.memory_used_bytes).sum();
    match source {
        Source::Gpus => {
            let peak = latest.iter().map(|s| s.util_pct).fold(0.0, f64::max);
            let power: f64 = latest.iter().filter_map(|s| s.power_w).sum();
            format!("gpu {util:.0}% (max {peak:.0}%) · {:.1} GiB · {:.2} kW", mem as f64 / (1u64 << 30) as f64, power / 1000.0)
        }
        Source::Process => format!("cpu {util:.0}% · rss {} MiB", mem >> 20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = MetricsStream::open(dir.path()).unwrap();
        s.write(&serde_json::json!({"step": 0, "loss": 1.5})).unwrap();
        s.write(&serde_json::json!({"step": 1, "loss": 1.25})).unwrap();
        drop(s);
        let mut s = MetricsStream::open(dir.path()).unwrap();
        s.write(&serde_json::json!({"step": 2})).unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["loss"], 1.25);
    }

    #[test]
    fn summaries_by_hand() {
        let s = |d, u, m, p| DeviceSample { device: d, util_pct: u, memory_used_bytes: m, power_w: p, ..Default::default() };
        let gpus = [s(0, 80.0, 1 << 30, Some(700.0)), s(1, 100.0, 3 << 30, Some(500.0))];
        assert_eq!(live_summary(&gpus, Source::Gpus), "gpu 90% (max 100%) · 4.0 GiB · 1.20 kW");
        assert_eq!(live_summary(&[s(0, 93.4, 212 << 20, None)], Source::Process), "cpu 93% · rss 212 MiB");
        assert_eq!(live_summary(&[], Source::Process), "");
    }
}
