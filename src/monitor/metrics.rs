//! Aggregating sampled metrics, and the warnings the monitor raises.
//!
//! Pure functions over samples, so they are unit-tested by hand: mean and
//! peak per series, node-wide averages across GPUs, and warnings for thermal
//! or power throttling, ECC errors, and low utilization while the job is in
//! a GPU phase.

use serde::Serialize;

/// One sample of one device (a GPU, or the process on the CPU).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceSample {
    pub device: u32,
    pub util_pct: f64,
    pub memory_used_bytes: u64,
    pub power_w: Option<f64>,
    pub throttle_reasons: Vec<String>,
    pub ecc_uncorrected: u64,
}

/// Mean and peak of a series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub peak: f64,
    pub samples: usize,
}

pub fn stat(values: &[f64]) -> Stat {
    if values.is_empty() {
        return Stat::default();
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let peak = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Stat { mean, peak, samples: values.len() }
}

/// Per-device and node-wide aggregates over a window of samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Aggregate {
    pub per_device_util: Vec<(u32, Stat)>,
    pub per_device_memory_bytes: Vec<(u32, Stat)>,
    /// Node-wide: the mean over devices of each device's mean; the peak of
    /// the per-sample node average.
    pub node_util: Stat,
    pub node_memory_peak_bytes: u64,
    pub node_power_w: Option<Stat>,
}

/// `samples[t]` holds every device's sample at time t.
pub fn aggregate(samples: &[Vec<DeviceSample>]) -> Aggregate {
    let mut devices: Vec<u32> = samples.iter().flatten().map(|s| s.device).collect();
    devices.sort_unstable();
    devices.dedup();
    let series = |d: u32, f: &dyn Fn(&DeviceSample) -> f64| -> Vec<f64> {
        samples.iter().flatten().filter(|s| s.device == d).map(f).collect()
    };
    let per_device_util: Vec<(u32, Stat)> = devices.iter().map(|&d| (d, stat(&series(d, &|s| s.util_pct)))).collect();
    let per_device_memory_bytes: Vec<(u32, Stat)> = devices.iter().map(|&d| (d, stat(&series(d, &|s| s.memory_used_bytes as f64)))).collect();
    let node_means: Vec<f64> = samples
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| t.iter().map(|s| s.util_pct).sum::<f64>() / t.len() as f64)
        .collect();
    let node_util = Stat {
        mean: if per_device_util.is_empty() { 0.0 } else { per_device_util.iter().map(|(_, s)| s.mean).sum::<f64>() / per_device_util.len() as f64 },
        peak: node_means.iter().cloned().fold(0.0, f64::max),
        samples: node_means.len(),
    };
    let node_memory_peak_bytes = samples.iter().map(|t| t.iter().map(|s| s.memory_used_bytes).sum::<u64>()).max().unwrap_or(0);
    let power: Vec<f64> = samples
        .iter()
        .filter(|t| !t.is_empty() && t.iter().all(|s| s.power_w.is_some()))
        .map(|t| t.iter().filter_map(|s| s.power_w).sum())
        .collect();
    Aggregate {
        per_device_util,
        per_device_memory_bytes,
        node_util,
        node_memory_peak_bytes,
        node_power_w: (!power.is_empty()).then(|| stat(&power)),
    }
}

/// Warnings over a window: throttling (thermal or power), new ECC errors,
/// and utilization below `low_util_pct` on average while `gpu_phase`.
pub fn warnings(samples: &[Vec<DeviceSample>], gpu_phase: bool, low_util_pct: f64) -> Vec<String> {
    let mut w = vec![];
    let agg = aggregate(samples);
    let mut devices: Vec<u32> = samples.iter().flatten().map(|s| s.device).collect();
    devices.sort_unstable();
    devices.dedup();
    for d in devices {
        let mine: Vec<&DeviceSample> = samples.iter().flatten().filter(|s| s.device == d).collect();
        let mut reasons: Vec<&str> = mine
            .iter()
            .flat_map(|s| s.throttle_reasons.iter())
            .map(String::as_str)
            .filter(|r| {
                let r = r.to_ascii_uppercase();
                r.contains("THERMAL") || r.contains("POWER")
            })
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        if !reasons.is_empty() {
            w.push(format!("GPU {d} throttled: {}", reasons.join(", ")));
        }
        let first = mine.first().map(|s| s.ecc_uncorrected).unwrap_or(0);
        let last = mine.last().map(|s| s.ecc_uncorrected).unwrap_or(0);
        if last > 0 {
            w.push(format!("GPU {d} has {last} uncorrected ECC errors ({} new in this window)", last.saturating_sub(first)));
        }
        if gpu_phase {
            if let Some((_, st)) = agg.per_device_util.iter().find(|(x, _)| *x == d) {
                if st.samples >= 3 && st.mean < low_util_pct {
                    w.push(format!("GPU {d} utilization is low in a GPU phase: mean {:.0}% over {} samples", st.mean, st.samples));
                }
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(device: u32, util: f64, mem: u64, power: Option<f64>) -> DeviceSample {
        DeviceSample { device, util_pct: util, memory_used_bytes: mem, power_w: power, ..Default::default() }
    }

    #[test]
    fn aggregates_by_hand() {
        // Two GPUs, three samples.
        let samples = vec![
            vec![s(0, 90.0, 10, Some(300.0)), s(1, 50.0, 20, Some(200.0))],
            vec![s(0, 100.0, 30, Some(400.0)), s(1, 70.0, 20, Some(250.0))],
            vec![s(0, 80.0, 20, Some(350.0)), s(1, 60.0, 40, Some(150.0))],
        ];
        let a = aggregate(&samples);
        assert_eq!(a.per_device_util[0], (0, Stat { mean: 90.0, peak: 100.0, samples: 3 }));
        assert_eq!(a.per_device_util[1], (1, Stat { mean: 60.0, peak: 70.0, samples: 3 }));
        // Node mean = mean of device means = 75; node averages per sample:
        // 70, 85, 70 → peak 85.
        assert_eq!(a.node_util, Stat { mean: 75.0, peak: 85.0, samples: 3 });
        // Node memory per sample: 30, 50, 60.
        assert_eq!(a.node_memory_peak_bytes, 60);
        // Node power per sample: 500, 650, 500.
        assert_eq!(a.node_power_w, Some(Stat { mean: 550.0, peak: 650.0, samples: 3 }));
        assert_eq!(a.per_device_memory_bytes[1].1.peak, 40.0);
    }

    #[test]
    fn warns_on_throttling_ecc_and_low_utilization_only_in_gpu_phases() {
        let mut hot = s(0, 5.0, 0, None);
        hot.throttle_reasons = vec!["HW_THERMAL_SLOWDOWN".into(), "GPU_IDLE".into()];
        let mut ecc = s(1, 95.0, 0, None);
        ecc.ecc_uncorrected = 2;
        let samples = vec![vec![hot.clone(), s(1, 95.0, 0, None)], vec![s(0, 5.0, 0, None), ecc.clone()], vec![s(0, 5.0, 0, None), ecc]];
        let w = warnings(&samples, true, 20.0);
        assert!(w.iter().any(|x| x.contains("GPU 0 throttled: HW_THERMAL_SLOWDOWN")), "{w:?}");
        assert!(w.iter().any(|x| x.contains("GPU 1 has 2 uncorrected ECC errors (2 new")), "{w:?}");
        assert!(w.iter().any(|x| x.contains("GPU 0 utilization is low")), "{w:?}");
        assert!(!w.iter().any(|x| x.contains("GPU 1 utilization")), "{w:?}");
        // Outside a GPU phase, low utilization is expected.
        let w = warnings(&samples, false, 20.0);
        assert!(!w.iter().any(|x| x.contains("utilization")), "{w:?}");
    }

    #[test]
    fn empty_windows_are_zero_not_nan() {
        let a = aggregate(&[]);
        assert_eq!(a.node_util, Stat::default());
        assert!(warnings(&[], true, 50.0).is_empty());
    }
}
