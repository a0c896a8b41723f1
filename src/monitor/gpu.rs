//! NVML snapshots: per-GPU identity, memory, utilization, thermals, power,
//! clocks, throttling, ECC, PCIe and NVLink, plus node-wide driver/CUDA
//! versions, the topology matrix and processes using each GPU.
//!
//! A metric the GPU does not support is `None` (shown as n/a), never an
//! error. Opening NVML on a machine with no NVIDIA driver is an error of its
//! own kind, `NoDriver`, so commands can exit with their documented code.

use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor, TopologyLevel};
use nvml_wrapper::Nvml;
use serde::Serialize;

/// NVML could not be opened: no NVIDIA driver (or no libnvidia-ml) here.
#[derive(Debug, thiserror::Error)]
#[error("no NVIDIA driver: NVML could not be initialized ({0})")]
pub struct NoDriver(pub String);

pub fn open() -> Result<Nvml, NoDriver> {
    Nvml::init().map_err(|e| NoDriver(e.to_string()))
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GpuSnapshot {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub bus_id: Option<String>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub sm_util_pct: Option<u32>,
    pub mem_util_pct: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    /// Active throttle reasons by name (empty when none).
    pub throttle_reasons: Option<Vec<String>>,
    pub ecc_uncorrected_volatile: Option<u64>,
    pub ecc_corrected_volatile: Option<u64>,
    pub pcie_gen: Option<u32>,
    pub pcie_width: Option<u32>,
    /// Active NVLink links and the bus id of each one's peer.
    pub nvlink_peers: Option<Vec<String>>,
    /// Processes with a compute context here: (pid, used bytes if known).
    pub processes: Option<Vec<(u32, Option<u64>)>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeSnapshot {
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuSnapshot>,
    /// topology[i][j]: how GPU i reaches GPU j (X, NV*, PIX, PXB, PHB, NODE, SYS).
    pub topology: Vec<Vec<String>>,
}

fn topo_name(t: TopologyLevel) -> &'static str {
    match t {
        TopologyLevel::Internal => "X",
        TopologyLevel::Single => "PIX",
        TopologyLevel::Multiple => "PXB",
        TopologyLevel::HostBridge => "PHB",
        TopologyLevel::Node => "NODE",
        TopologyLevel::System => "SYS",
    }
}

/// Take a snapshot of every GPU. Per-metric failures become `None`.
pub fn snapshot(nvml: &Nvml) -> NodeSnapshot {
    let count = nvml.device_count().unwrap_or(0);
    let mut node = NodeSnapshot {
        driver_version: nvml.sys_driver_version().ok(),
        cuda_driver_version: nvml.sys_cuda_driver_version().ok().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
        ..Default::default()
    };
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else {
            node.gpus.push(GpuSnapshot { index: i, ..Default::default() });
            continue;
        };
        let mem = d.memory_info().ok();
        let util = d.utilization_rates().ok();
        let nvlink_peers = {
            let mut peers = vec![];
            let mut any = false;
            for link in 0..18 {
                let l = d.link_wrapper_for(link);
                if let Ok(active) = l.is_active() {
                    any = true;
                    if active {
                        peers.push(l.remote_pci_info().map(|p| p.bus_id).unwrap_or_else(|_| "?".into()));
                    }
                }
            }
            any.then_some(peers)
        };
        node.gpus.push(GpuSnapshot {
            index: i,
            name: d.name().ok(),
            uuid: d.uuid().ok(),
            bus_id: d.pci_info().ok().map(|p| p.bus_id),
            memory_used_bytes: mem.as_ref().map(|m| m.used),
            memory_total_bytes: mem.as_ref().map(|m| m.total),
            sm_util_pct: util.as_ref().map(|u| u.gpu),
            mem_util_pct: util.as_ref().map(|u| u.memory),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
            power_limit_w: d.enforced_power_limit().ok().map(|mw| mw as f64 / 1000.0),
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
            throttle_reasons: d.current_throttle_reasons().ok().map(|r| {
                format!("{r:?}").trim_start_matches("ThrottleReasons(").trim_end_matches(')').split(" | ").filter(|s| !s.is_empty() && *s != "0x0" && *s != "NONE").map(str::to_string).collect()
            }),
            ecc_uncorrected_volatile: d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile).ok(),
            ecc_corrected_volatile: d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile).ok(),
            pcie_gen: d.current_pcie_link_gen().ok(),
            pcie_width: d.current_pcie_link_width().ok(),
            nvlink_peers,
            processes: d.running_compute_processes().ok().map(|ps| {
                ps.into_iter()
                    .map(|p| {
                        let used = match p.used_gpu_memory {
                            nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
                            _ => None,
                        };
                        (p.pid, used)
                    })
                    .collect()
            }),
        });
    }
    for i in 0..count {
        let mut row = vec![];
        for j in 0..count {
            if i == j {
                row.push("X".to_string());
                continue;
            }
            let level = match (nvml.device_by_index(i), nvml.device_by_index(j)) {
                (Ok(a), Ok(b)) => {
                    // NVLink beats the PCIe path when the two are linked.
                    let linked = node.gpus[i as usize]
                        .nvlink_peers
                        .as_ref()
                        .zip(node.gpus[j as usize].bus_id.as_ref())
                        .map(|(peers, bus)| peers.iter().filter(|p| p.eq_ignore_ascii_case(bus)).count())
                        .unwrap_or(0);
                    if linked > 0 {
                        format!("NV{linked}")
                    } else {
                        a.topology_common_ancestor(b).map(|t| topo_name(t).to_string()).unwrap_or_else(|_| "n/a".into())
                    }
                }
                _ => "n/a".into(),
            };
            row.push(level);
        }
        node.topology.push(row);
    }
    node
}

/// "n/a" for a missing value.
pub fn na<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map(|x| x.to_string()).unwrap_or_else(|| "n/a".into())
}

/// A human table of a snapshot.
pub fn render_table(node: &NodeSnapshot) -> String {
    let mut s = String::new();
    s.push_str(&format!("driver {}  CUDA {}  GPUs {}\n", na(&node.driver_version), na(&node.cuda_driver_version), node.gpus.len()));
    s.push_str(&format!(
        "{:<3} {:<24} {:<14} {:>15} {:>5} {:>5} {:>5} {:>13} {:>11} {:<10} {:>7} {:>8} {:<}\n",
        "gpu", "name", "bus", "memory MiB", "sm%", "mem%", "°C", "power W", "clk MHz", "pcie", "ecc", "nvlink", "throttle / processes"
    ));
    for g in &node.gpus {
        let mib = |b: &Option<u64>| b.map(|v| (v >> 20).to_string()).unwrap_or_else(|| "n/a".into());
        let power = match (g.power_w, g.power_limit_w) {
            (Some(p), Some(l)) => format!("{p:.0}/{l:.0}"),
            (Some(p), None) => format!("{p:.0}/n/a"),
            _ => "n/a".into(),
        };
        let clocks = format!("{}/{}", na(&g.sm_clock_mhz), na(&g.mem_clock_mhz));
        let pcie = match (g.pcie_gen, g.pcie_width) {
            (Some(a), Some(b)) => format!("gen{a} x{b}"),
            _ => "n/a".into(),
        };
        let nvlink = g.nvlink_peers.as_ref().map(|p| format!("{} up", p.len())).unwrap_or_else(|| "n/a".into());
        let throttle = g.throttle_reasons.as_ref().map(|r| if r.is_empty() { "none".into() } else { r.join(",") }).unwrap_or_else(|| "n/a".into());
        let procs = g.processes.as_ref().map(|p| format!("{} procs", p.len())).unwrap_or_else(|| "n/a".into());
        s.push_str(&format!(
            "{:<3} {:<24} {:<14} {:>15} {:>5} {:>5} {:>5} {:>13} {:>11} {:<10} {:>7} {:>8} {} / {}\n",
            g.index,
            na(&g.name).chars().take(24).collect::<String>(),
            na(&g.bus_id).chars().take(14).collect::<String>(),
            format!("{}/{}", mib(&g.memory_used_bytes), mib(&g.memory_total_bytes)),
            na(&g.sm_util_pct),
            na(&g.mem_util_pct),
            na(&g.temperature_c),
            power,
            clocks,
            pcie,
            na(&g.ecc_uncorrected_volatile),
            nvlink,
            throttle,
            procs
        ));
    }
    if node.topology.len() > 1 {
        s.push_str("topology:\n");
        s.push_str(&format!("     {}\n", (0..node.topology.len()).map(|j| format!("{:>5}", format!("GPU{j}"))).collect::<String>()));
        for (i, row) in node.topology.iter().enumerate() {
            s.push_str(&format!("GPU{i:<2}{}\n", row.iter().map(|c| format!("{c:>5}")).collect::<String>()));
        }
    }
    let busy: Vec<String> = node
        .gpus
        .iter()
        .filter_map(|g| g.processes.as_ref().filter(|p| !p.is_empty()).map(|p| format!("GPU{}: {}", g.index, p.iter().map(|(pid, _)| pid.to_string()).collect::<Vec<_>>().join(","))))
        .collect();
    s.push_str(&format!("busy with other processes: {}\n", if busy.is_empty() { "none".to_string() } else { busy.join("; ") }));
    s
}
